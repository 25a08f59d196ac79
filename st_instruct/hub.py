"""Pushes of saved st_instruct forecasters to the Hugging Face Hub.

A saved forecaster is one directory (:mod:`st_instruct.model_dir`). ``push_to_hub`` uploads it as it is, after
checking that it is complete and that no symlink leads out of it; only the card's usage snippet gets the repo id
written in (:data:`~st_instruct.models.card.REPO_PLACEHOLDER`). A push only reads the directory: whatever fails (no
token, rejected token, no network), nothing there changes. ``push_to_hub: true`` in a recipe pushes through the same
function once the final folder is complete (:mod:`st_instruct.train`), so both push the same files.

An attribute adapter (PromptST's prompt tuning: ``format: attribute`` in ``st_backbone.json``) holds only its own
weights and names its base forecaster; where that is a local folder, a download could not find it, so the push needs
the base's Hub repo id (``base_repo``, ``st-instruct push --base-repo``; the base pushed first) and the uploaded
``st_backbone.json`` names that repo id instead. The local file is not changed.

The endpoint is ``endpoint=`` if given, else ``$HF_ENDPOINT`` read at call time, else huggingface_hub's
default. ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT``; reading
the variable again here means a value set later (by a test, or a notebook) is honoured.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

from st_instruct.model_dir import BACKBONE_FILE, LOCK_FILE, read_folder_json
from st_instruct.models.card import REPO_PLACEHOLDER

# Glob patterns that must each match a file at the top of a saved forecaster directory (of every format: an attribute
# adapter's weights are its st_modules.safetensors alone)
REQUIRED_FILES: tuple[str, ...] = ("README.md", "st_forecaster_config.json", "*.safetensors")


class HubError(OSError):
    """A push that could not be made (incomplete directory, no or rejected token, no network); says what to do."""


# what a training output folder holds besides the model: checkpoints (optimizer states, several times the
# adapter's size), TensorBoard event files and the evaluation lock stay local
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", LOCK_FILE]


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` as a Path if it holds every ``REQUIRED_FILES`` pattern and no symlink that leaves it
    (:func:`_check_symlinks`); else ``HubError`` naming the gaps or the link."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory}: no such directory; pass the output directory of a trained forecaster")
    missing = [pattern for pattern in REQUIRED_FILES if not any(p.is_file() for p in directory.glob(pattern))]
    if missing:
        raise HubError(f"{directory} is not a complete st_instruct model: missing {', '.join(missing)} "
                       f"(expected {', '.join(REQUIRED_FILES)}); nothing was uploaded")
    _check_symlinks(directory)
    return directory


def _check_symlinks(directory: Path) -> None:
    """Refuse a symlink anywhere in ``directory`` that resolves outside it, loops or leads nowhere: a push uploads
    what a file link points to, so a link out of the folder would publish a file from elsewhere on this machine.
    Links that stay inside are allowed: a file link uploads its target's bytes under its own name, and a folder
    link is not descended into (``rglob`` does not follow it), so its files are pushed once, from where they are."""
    root = directory.resolve()
    for link in sorted(p for p in directory.rglob("*") if p.is_symlink()):
        try:
            target = Path(os.path.realpath(link, strict=True))
        except OSError as err:
            problem = ("is a symlink loop" if err.errno == errno.ELOOP else
                       f"is a symlink to {os.readlink(link)}, which does not exist")
            raise HubError(f"{link} {problem}; remove it or replace it by the file it should be; nothing was "
                           "uploaded") from err
        if not target.is_relative_to(root):
            raise HubError(f"{link} is a symlink to {target}, outside the model folder {directory}: a push uploads "
                           "only the folder's own files; replace the link by a copy of its target (cp -L) or remove "
                           "it; nothing was uploaded")


def push_to_hub(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                endpoint: str | None = None, commit_message: str | None = None, base_repo: str | None = None) -> str:
    """Upload the saved forecaster in ``directory`` to the Hub model repo ``repo_id``; return the commit URL.

    The repo is created if needed (``repo_id`` without a namespace goes to the token's user); ``checkpoint-N``
    folders and TensorBoard ``runs/`` are not uploaded (:data:`PUSH_IGNORE`), and the card's usage snippet gets
    ``repo_id`` in place of :data:`REPO_PLACEHOLDER`. The token is ``token``, else ``$HF_TOKEN``, else the one saved
    by ``hf auth login``. Files unchanged since the last push are not committed again. An attribute adapter of a
    local base needs ``base_repo``, the base's Hub repo id (module docstring), which must exist there. Raises
    ``HubError`` (incomplete directory, no token, token rejected, Hub unreachable, an attribute adapter's base not on
    the Hub); the directory is only ever read.
    """
    directory = check_model_dir(directory)
    backbone_record = _backbone_record(directory, base_repo)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    unchanged = f"nothing was uploaded and {directory} is unchanged"
    if not token:
        raise HubError(f"no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`; {unchanged}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        if base_repo is not None and backbone_record is not None and not api.repo_exists(base_repo):
            raise HubError(f"--base-repo {base_repo} (base_repo) is not a repo on {endpoint}: push the base "
                           f"forecaster there first (`st-instruct push BASE_DIR --repo-id {base_repo}`); {unchanged}")
        api.create_repo(repo_id, private=private, exist_ok=True)
        files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
        operations = []
        for name in filter_repo_objects(files, ignore_patterns=PUSH_IGNORE):
            content: Any = directory / name
            if name == "README.md":
                content = content.read_text().replace(REPO_PLACEHOLDER, repo_id).encode()
            elif name == BACKBONE_FILE and backbone_record is not None:
                content = backbone_record
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
        info = api.create_commit(repo_id=repo_id, operations=operations,
                                 commit_message=commit_message or f"Upload st_instruct forecaster {directory.name}")
    except Exception as err:
        hub_error = _hub_error(err, endpoint, repo_id, f"{directory} is unchanged")
        if hub_error is None:
            raise
        raise hub_error from err
    return str(info.commit_url)


def _backbone_record(directory: Path, base_repo: str | None) -> bytes | None:
    """The ``st_backbone.json`` to upload in place of the folder's, or ``None`` to upload it as it is: an attribute
    adapter's naming ``base_repo``. ``HubError`` for an attribute adapter of a local base without ``base_repo``, and
    for ``base_repo`` given to anything else or not of the form USER/NAME."""
    record = read_folder_json(directory, BACKBONE_FILE)
    base = record.get("base_forecaster") if isinstance(record, dict) and record.get("format") == "attribute" else None
    if base is None:
        if base_repo is not None:
            raise HubError(f"--base-repo (base_repo) names the base of an attribute adapter, but {directory} is not "
                           "one (its st_backbone.json has no format: attribute); drop it; nothing was uploaded")
        return None
    if base_repo is None:
        if Path(base).expanduser().exists() or base.count("/") != 1 or base.startswith((".", "/", "~")):
            raise HubError(f"{directory} is an attribute adapter of the local base forecaster {base}, which a "
                           "download cannot find: push the base first (`st-instruct push BASE_DIR --repo-id "
                           "USER/BASE`) and pass its repo id with --base-repo USER/BASE (base_repo=); nothing was "
                           "uploaded")
        return None  # it names its base's Hub repo id already
    if base_repo.count("/") != 1 or base_repo.startswith((".", "/", "~")):
        raise HubError(f"--base-repo {base_repo!r} (base_repo) must be the base forecaster's Hub repo id, USER/NAME; "
                       "nothing was uploaded")
    return (json.dumps({**record, "base_forecaster": base_repo}, indent=2) + "\n").encode()


def _hub_error(err: Exception, endpoint: str, repo_id: str, unchanged: str) -> HubError | None:
    """A ``HubError`` for a failure the user can act on (network, offline mode, token, refusal); else None."""
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:  # the upload may wrap the failure of one of its threads
        seen.add(id(cause))
        if isinstance(cause, OfflineModeIsEnabled):
            return HubError(f"cannot reach {endpoint}: offline mode is on (HF_HUB_OFFLINE=1); unset it to push; "
                            f"{unchanged}")
        if isinstance(cause, httpx2.TransportError):
            return HubError(f"cannot reach the Hub at {endpoint} ({type(cause).__name__}: {cause}); check the "
                            f"network or HF_ENDPOINT and push again; {unchanged}")
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            if status in (401, 403):
                return HubError(f"the Hub at {endpoint} rejected the token ({status}) for {repo_id}: use a token "
                                f"with write access to that namespace; {unchanged}")
            return HubError(f"the Hub at {endpoint} refused the push to {repo_id} ({status}): {cause}; {unchanged}")
        cause = cause.__cause__ or cause.__context__
    return None
