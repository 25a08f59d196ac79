"""Model cards and pushes of saved st_instruct forecasters to the Hugging Face Hub.

A saved forecaster is one directory: the PEFT adapter, the ST encoder / projector / head weights
(safetensors), the tokenizer with its special tokens, the recipe and a model card. ``write_model_card``
writes the card; ``push_to_hub`` uploads the directory as it is, after checking that it is complete. A push
only reads the directory: whatever fails (no token, rejected token, no network), nothing there changes.

The endpoint is ``endpoint=`` if given, else ``$HF_ENDPOINT`` read at call time, else huggingface_hub's
default. ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT``; reading
the variable again here means a value set later (by a test, or a notebook) is honoured.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from st_instruct.evaluation.metrics import METRICS
from st_instruct.evaluation.report import format_results_table

# Glob patterns that must each match a file at the top of a saved forecaster directory.
REQUIRED_FILES: tuple[str, ...] = ("README.md", "st_forecaster_config.json", "*.safetensors")
CARD_TAGS = ["time-series-forecasting", "spatio-temporal", "st_instruct"]
LOAD_SNIPPET = """```python
from huggingface_hub import snapshot_download
from st_instruct.models.saving import load_forecaster

model, tokenizer = load_forecaster(snapshot_download("USER/{name}"))  # or the local directory
predictions = model.predict(batch)  # [B, P, N, C] in original units; batch from STDataCollator
```"""


class HubError(OSError):
    """A push that could not be made (incomplete directory, no or rejected token, no network); says what to do."""


def write_model_card(directory: str | Path, *, base_model: str, datasets: list[str], metrics: dict[str, Any] | None,
                     recipe: dict[str, Any] | None, description: str = "") -> Path:
    """Write ``directory/README.md``: YAML front matter for the Hub, then what the model is, how to load it,
    its training recipe and its metrics table.

    ``metrics`` follows the results-JSON schema of ``st_instruct.evaluation.report`` (``{"results": {MODEL:
    {"MAE", "RMSE", "MAPE", "WAPE", ...}}, "dataset": ..., ...}``); a metric that is ``None`` or NaN prints
    as "n/a". ``recipe`` is the training recipe as a mapping (the parsed recipe YAML).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"library_name": "st_instruct", "base_model": base_model, "datasets": list(datasets),
            "tags": CARD_TAGS, "pipeline_tag": "time-series-forecasting"}
    body = [f"# {directory.name}", "",
            f"A spatio-temporal forecaster built with st_instruct on the language model "
            f"`{base_model}`, trained on {', '.join(f'`{d}`' for d in datasets) or 'no named dataset'}. An ST "
            "encoder and projector put the history into the LLM at the `<st_his>` tokens, and a regression head "
            "reads the hidden states at the `<st_pre>` tokens: a forecast is one forward pass, no text generation.",
            ""]
    if description:
        body += [description.strip(), ""]
    if recipe and recipe.get("image_kind", "none") != "none":
        from st_instruct.data.render import describe_images

        body += ["## What the image shows", "", describe_images(recipe["image_kind"], recipe.get("image_size"),
                                                                recipe.get("image_panels", 4),
                                                                recipe.get("image_channel", 0)), ""]
    body += ["## How to load", "", LOAD_SNIPPET.format(name=directory.name), "", "## Training recipe", ""]
    if recipe:
        body += ["```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "",
                 "Reproduce with `accelerate launch scripts/sft.py recipe.yaml`.", ""]
    else:
        body += ["(not recorded)", ""]
    body += ["## Metrics", "", *_metrics_section(metrics), ""]
    path = directory / "README.md"
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body))
    return path


def _metrics_section(report: dict[str, Any] | None) -> list[str]:
    if not report or not report.get("results"):
        return ["(not evaluated yet)"]
    # format_results_table wants every metric as a float (NaN prints as n/a)
    results = {model: {**r, **{m: _nan_if_none(r.get(m)) for m in METRICS}} for model, r in report["results"].items()}
    lines = []
    if "dataset" in report:
        steps = (f", history {report['history']} -> horizon {report['horizon']} steps"
                 if "history" in report and "horizon" in report else "")
        lines += [f"Test split of `{report['dataset']}`{steps}; lower is better; n/a: nothing observed.", ""]
    return [*lines, format_results_table(results)]


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


# what a training output folder holds besides the model: checkpoints (optimizer states, several times the
# adapter's size) and TensorBoard event files stay local
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**"]


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` as a Path if it holds every ``REQUIRED_FILES`` pattern; else ``HubError`` naming the gaps."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory}: no such directory; pass the output directory of a trained forecaster")
    missing = [pattern for pattern in REQUIRED_FILES if not any(p.is_file() for p in directory.glob(pattern))]
    if missing:
        raise HubError(f"{directory} is not a complete st_instruct model: missing {', '.join(missing)} "
                       f"(expected {', '.join(REQUIRED_FILES)}); nothing was uploaded")
    return directory


def push_to_hub(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Upload the saved forecaster in ``directory`` to the Hub model repo ``repo_id``; return the commit URL.

    The repo is created if needed; ``checkpoint-N`` folders and TensorBoard ``runs/`` are not uploaded
    (:data:`PUSH_IGNORE`). The token is ``token``, else ``$HF_TOKEN``, else the one saved by
    ``hf auth login``. Files unchanged since the last push are not committed again. Raises ``HubError``
    (incomplete directory, no token, token rejected, Hub unreachable); the directory is only ever read.
    """
    from huggingface_hub import HfApi, constants, get_token

    directory = check_model_dir(directory)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    unchanged = f"nothing was uploaded and {directory} is unchanged"
    if not token:
        raise HubError(f"no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`; {unchanged}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=directory, ignore_patterns=PUSH_IGNORE,
                                 commit_message=commit_message or f"Upload st_instruct forecaster {directory.name}")
    except Exception as err:
        hub_error = _hub_error(err, endpoint, repo_id, f"{directory} is unchanged")
        if hub_error is None:
            raise
        raise hub_error from err
    return str(info.commit_url)


def _hub_error(err: Exception, endpoint: str, repo_id: str, unchanged: str) -> HubError | None:
    """A ``HubError`` for a failure the user can act on (network, offline mode, token, refusal); else None."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

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
