"""The files st_instruct ships -- recipes and prompt templates -- where they are, and which templates may be named.

Recipes (``recipes/NAME.yaml``) and templates (``prompts/<name>.v<N>.jinja``) stay at the repository's top level
and are installed inside the package as ``st_instruct/recipes`` and ``st_instruct/prompts``; :func:`shipped_dir`
finds them in either place. A template is named by ``name`` (its highest version), ``name@N`` or a path
(:func:`resolve_template`); a recipe *file* may only name templates in :func:`trusted_template_dirs` (the shipped
folder and ``$ST_INSTRUCT_PROMPTS``), so a shared recipe cannot make this machine render a file of its choosing.
Rendering is :mod:`st_instruct.samples.prompts`' part.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PROMPTS_ENV = "ST_INSTRUCT_PROMPTS"
TEMPLATE_NAME_RE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)\.v(?P<version>\d+)\.jinja$")


class TemplateError(ValueError):
    """A prompt template cannot be found, loaded or rendered; the message names the template file."""


def shipped_dir(name: str) -> Path:
    """The folder of the shipped files ``name`` (``"recipes"`` or ``"prompts"``): ``st_instruct/NAME`` inside an
    installed wheel (pyproject.toml maps the top-level folders there), else ``NAME/`` at the repository root (a clone,
    or an editable install of one). Every lookup of a shipped recipe or template goes through here."""
    package = Path(__file__).resolve().parent  # st_instruct/
    installed = package / name
    return installed if installed.is_dir() else package.parent / name


def shipped_recipes() -> dict[str, Path]:
    """``{name: path}`` of the shipped recipes (``recipes/NAME.yaml``), by name."""
    return {path.stem: path for path in sorted(shipped_dir("recipes").glob("*.yaml"))}


def package_prompts_dir() -> Path:
    """``prompts/``, the shipped templates: inside the installed package, else at the repository root
    (:func:`shipped_dir`)."""
    return shipped_dir("prompts")


def prompts_dir() -> Path:
    """``$ST_INSTRUCT_PROMPTS`` if set, else ``prompts/`` at the repository root."""
    if os.environ.get(PROMPTS_ENV):
        return Path(os.environ[PROMPTS_ENV]).expanduser()
    return package_prompts_dir()


def trusted_template_dirs() -> list[Path]:
    """The folders whose templates a recipe file may name: the package's ``prompts/`` and ``$ST_INSTRUCT_PROMPTS``
    (the user's explicit template folder), resolved."""
    dirs = [package_prompts_dir()]
    if os.environ.get(PROMPTS_ENV):
        dirs.append(Path(os.environ[PROMPTS_ENV]).expanduser().resolve())
    return dirs


def is_trusted_template(path: str | os.PathLike) -> bool:
    """Whether ``path`` (symlinks resolved) lies in one of :func:`trusted_template_dirs`."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(root) for root in trusted_template_dirs())


def names_a_path(spec: str | os.PathLike) -> bool:
    """Whether a ``template`` value is a file path (``.jinja`` or a separator) rather than ``name`` / ``name@N``."""
    text = os.fspath(spec)
    return text.endswith(".jinja") or os.sep in text or "/" in text


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def available_templates(directory: str | os.PathLike | None = None) -> dict[str, list[int]]:
    """``{name: [versions, ascending]}`` of the ``<name>.v<N>.jinja`` files in ``directory`` (default prompts_dir)."""
    root = Path(directory) if directory is not None else prompts_dir()
    found: dict[str, list[int]] = {}
    if root.is_dir():
        for path in root.iterdir():
            match = TEMPLATE_NAME_RE.match(path.name)
            if match and path.is_file():
                found.setdefault(match["name"], []).append(int(match["version"]))
    return {name: sorted(versions) for name, versions in sorted(found.items())}


def _available_text(root: Path) -> str:
    found = available_templates(root)
    if not found:
        return f"no templates (<name>.v<N>.jinja) in {root}"
    return f"available in {root}: " + ", ".join(f"{n} (versions {', '.join(map(str, v))})" for n, v in found.items())


def resolve_template(spec: str | os.PathLike, directory: str | os.PathLike | None = None) -> Path:
    """Template file of ``spec``: ``"name"`` (highest version), ``"name@N"`` (version N) or a ``.jinja`` path."""
    text = os.fspath(spec)
    if names_a_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise TemplateError(f"prompt template file {path} does not exist")
        return path
    root = Path(directory) if directory is not None else prompts_dir()
    name, _, version = text.partition("@")
    versions = available_templates(root).get(name)
    if not versions:
        raise TemplateError(f"unknown prompt template {name!r}; {_available_text(root)}")
    if not version:
        return root / f"{name}.v{versions[-1]}.jinja"
    try:
        number = int(version.removeprefix("v"))
    except ValueError as err:
        raise TemplateError(f"prompt template {text!r}: the version after '@' must be a number, e.g. "
                            f"'{name}@{versions[-1]}'") from err
    if number not in versions:
        raise TemplateError(f"prompt template {name!r} has no version {number}; {_available_text(root)}")
    return root / f"{name}.v{number}.jinja"
