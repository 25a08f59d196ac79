"""mkdocs hook: the page ``recipes-reference.md``, generated at build time from the recipe dataclasses.

Every key a recipe (or a flag) may set is a field of a dataclass in ``st_instruct.configs``; its help text is the
field's ``metadata["help"]``. This hook reads those dataclasses when the site is built and writes one table per
dataclass (key, type, default, help), so the reference cannot drift from the code. Nothing is written into the
source tree: the page is added to the build in memory (``File.generated``).

It is generic on purpose: it walks ``dataclasses.fields`` of whatever ``st_instruct.configs.train_dataclasses()``
and ``st_instruct.configs.PRETRAIN_DATACLASSES`` hold, and recurses into fields whose type is itself a dataclass
(nested configs), so splitting or nesting the configs needs no change here. Dataclasses defined outside
``st_instruct`` (TRL's ``SFTConfig``, transformers' ``TrainingArguments``) are named, not listed.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import json
import logging
import re
import sys
import typing
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# a logger under "mkdocs": its warnings fail `mkdocs build --strict`
log = logging.getLogger("mkdocs.hooks.recipe_reference")

PAGE = "recipes-reference.md"
SFT_CONFIG_DOCS = "https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig"
TRAINING_ARGUMENTS_DOCS = "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"


def _import_configs() -> Any:
    """``st_instruct.configs`` of this checkout (the repository root first on ``sys.path``)."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    import st_instruct.configs as configs

    return configs


def _schemas(configs: Any) -> list[tuple[str, str, tuple[type, ...]]]:
    """``(title, what parses it, dataclass types)`` for every recipe schema the package declares."""
    schemas = []
    if hasattr(configs, "train_dataclasses"):
        schemas.append(("Training recipe", "`st-instruct train`, `st-instruct demo`, `st-instruct build-data`, "
                        "`python -m st_instruct.train`, `scripts/sft.py`", tuple(configs.train_dataclasses())))
    if hasattr(configs, "PRETRAIN_DATACLASSES"):
        schemas.append(("Pretraining recipe", "`st-instruct pretrain`, `scripts/pretrain.py`",
                        tuple(configs.PRETRAIN_DATACLASSES)))
    if not schemas:
        raise RuntimeError("st_instruct.configs declares neither train_dataclasses() nor PRETRAIN_DATACLASSES: "
                           "docs/hooks/recipe_reference.py must be told where the recipe schema now lives")
    return schemas


def _is_ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "st_instruct"


def _resolved_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type (annotations may be strings under ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # e.g. one annotation names a type imported only for type checking: resolve field by field
        pass
    namespace = dict(vars(sys.modules[cls.__module__])) if cls.__module__ in sys.modules else {}
    resolved = {}
    for field in dataclasses.fields(cls):
        try:
            # what typing.get_type_hints does, one annotation at a time
            resolved[field.name] = eval(field.type, namespace) if isinstance(field.type, str) else field.type
        except Exception:
            continue
    return resolved


def _nested_dataclasses(tp: Any) -> list[type]:
    """Dataclass types inside ``tp`` (itself, or inside ``X | None``, ``list[X]``, ``dict[str, X]`` ...)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    found: list[type] = []
    for arg in typing.get_args(tp):
        for cls in _nested_dataclasses(arg):
            if cls not in found:
                found.append(cls)
    return found


def _type_text(field: dataclasses.Field, resolved: Any) -> str:
    if isinstance(field.type, str):
        return field.type
    if resolved is not None:
        text = getattr(resolved, "__name__", None) if isinstance(resolved, type) else None
        return text or str(resolved).replace("typing.", "")
    return str(field.type)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        try:
            value = field.default_factory()
        except Exception:
            return "(computed)"
        if dataclasses.is_dataclass(value):
            return f"{type(value).__name__}()"
    else:
        return "(required)"
    try:  # as it would be written in the YAML
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _code(text: str) -> str:
    """Inline code that is safe in a table cell (a ``|`` would end the cell)."""
    return "<code>" + html.escape(text, quote=False).replace("|", "&#124;") + "</code>"


def _prose(text: str) -> str:
    """A help text or docstring as table-safe Markdown: ``code`` spans kept, rST roles and pipes neutralised."""
    text = re.sub(r":(?:class|func|data|mod|meth|attr):`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: treat everything as prose
        parts = [text.replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(_code(part))
        else:
            out.append(html.escape(part, quote=False).replace("|", "&#124;").replace("*", r"\*")
                       .replace("\n", " "))
    return "".join(out)


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes when there is no docstring
        return ""
    return "\n\n".join(_prose(paragraph) for paragraph in doc.split("\n\n"))


def _field_rows(cls: type, prefix: str, nested: list[tuple[type, str]]) -> list[str]:
    resolved = _resolved_types(cls)
    rows = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        tp = resolved.get(field.name)
        inner = [c for c in _nested_dataclasses(tp) if _is_ours(c)] if tp is not None else []
        help_text = field.metadata.get("help", "") if field.metadata else ""
        if inner:
            names = ", ".join(f"[`{c.__name__}`](#{c.__name__.lower()})" for c in inner)
            lead = _prose(help_text.rstrip(".")) + ". " if help_text else ""
            help_text = f"{lead}Its keys: {names}."
            nested.extend((c, f"{cls.__name__}.{field.name}") for c in inner)
        elif help_text:
            help_text = _prose(help_text)
        else:
            log.warning(f"recipe key {field.name!r} of {cls.__module__}.{cls.__qualname__} has no help text: give "
                        'its field metadata={"help": "..."} (docs/recipes-reference.md is generated from it)')
            help_text = "(no help text)"
        rows.append(f"| {_code(prefix + field.name)} | {_code(_type_text(field, tp))} | "
                    f"{_code(_default_text(field))} | {help_text} |")
    return rows


def _class_section(cls: type, held_in: str | None, seen: set[type]) -> list[str]:
    if cls in seen:
        return []
    seen.add(cls)
    lines = [f"### {cls.__name__}", ""]
    where = f"`{cls.__module__}.{cls.__qualname__}`"
    lines.append(f"Defined in {where}" + (f"; held in the field `{held_in}`." if held_in else "."))
    lines.append("")
    doc = _doc(cls)
    if doc:
        lines += [doc, ""]
    nested: list[tuple[type, str]] = []
    lines += ["| key | type | default | what it sets |", "|---|---|---|---|"]
    lines += _field_rows(cls, "", nested)
    lines.append("")
    for inner, field_path in nested:
        lines += _class_section(inner, field_path, seen)
    return lines


def render_reference() -> str:
    """The Markdown of the reference page."""
    configs = _import_configs()
    schemas = _schemas(configs)
    lines = [
        "# Recipe reference",
        "",
        "This page is generated when the site is built (`docs/hooks/recipe_reference.py`) from the dataclasses a "
        "recipe is parsed into: every key, its type, its default and its help text as written in the code. It is "
        "not kept in the repository, so it cannot drift from the code. How recipes are read (precedence, unknown "
        "keys, launching) is on [Recipes](recipes.md).",
        "",
        "A key is written in the recipe YAML (`key: value`) or given as a flag (`--key value`); a flag wins over "
        "the YAML, the YAML over the default.",
        "",
    ]
    foreign: list[type] = []
    for title, parsed_by, types in schemas:
        ours = [c for c in types if _is_ours(c)]
        others = [c for c in types if not _is_ours(c)]
        foreign += [c for c in others if c not in foreign]
        names = ", ".join(f"`{c.__name__}`" for c in types)
        lines += [f"## {title}", "", f"Parsed by {parsed_by}: one flat YAML read into {names}.", ""]
        if ours:
            lines += ["Its keys: " + ", ".join(f"[`{c.__name__}`](#{c.__name__.lower()})" for c in ours) +
                      " (under [Keys](#keys), each dataclass once).", ""]
        for other in others:
            lines += [f"Every key of `{other.__module__.split('.')[0]}`'s `{other.__name__}` is accepted too "
                      f"(see [Library keys](#library-keys)).", ""]
    lines += ["## Keys", ""]
    seen: set[type] = set()
    for _, _, types in schemas:
        for cls in types:
            if _is_ours(cls):
                lines += _class_section(cls, None, seen)
    lines += [
        "## Library keys",
        "",
        "A training recipe is also parsed into TRL's `SFTConfig`, which extends transformers' `TrainingArguments`: "
        "every `SFTConfig` / `TrainingArguments` key (`output_dir`, `learning_rate`, `max_steps`, "
        "`per_device_train_batch_size`, `seed`, `push_to_hub`, ...) is accepted in a recipe and as a flag, with "
        f"the meaning its library gives it: see [SFTConfig]({SFT_CONFIG_DOCS}) and "
        f"[TrainingArguments]({TRAINING_ARGUMENTS_DOCS}). Field names are unique across all the dataclasses of "
        "a schema, so a flat YAML says which one a key sets.",
        "",
    ]
    if foreign:
        lines += ["Library dataclasses in these schemas: " +
                  ", ".join(f"`{c.__module__}.{c.__qualname__}`" for c in foreign) + ".", ""]
    return "\n".join(lines)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated page to the build (in memory; a file of that name in docs/ would be replaced)."""
    existing = files.get_file_from_path(PAGE)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, PAGE, content=render_reference()))
    return files
