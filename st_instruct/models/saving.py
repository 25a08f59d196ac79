"""Save a trained :class:`STForecaster` as one directory, load it back, and restore a checkpoint in place.

A saved forecaster (the trainer's checkpoints and the final output directory alike) holds:

- ``st_backbone.json``: where the backbone came from (``model_name_or_path``, ``num_layers``, ``load_in_4bit``,
  ``random_init_seed``: :class:`BackboneSource`), what training changed in it (``base_num_layers``: the base's
  decoder layer count before ``num_layers`` truncated it; ``added_tokens``: the ST special tokens and their ids) and
  how its weights are stored (``format``). Folders written before the two records lack them (read as ``None``);
- the backbone's weights, by ``format``: ``"adapter"`` -- a PEFT adapter (``adapter_config.json``,
  ``adapter_model.safetensors``) for the base backbone; ``"full"`` -- the whole transformers model
  (``config.json``, ``model*.safetensors``); ``"base"`` -- nothing, the backbone was frozen, so it is the base
  backbone itself (a randomly initialised one, for the random-LLM control, rebuilt from ``random_init_seed``);
  ``"none"`` -- no backbone at all (the no-LLM control; ``model_name_or_path`` then names the backbone whose
  tokenizer and width it took); ``"attribute"`` -- an attribute adapter (freeze plan ``prompt``, PromptST): no
  backbone weights and, in ``st_modules.safetensors``, only what prompt tuning trained (the soft prompt and the
  head's output layer, :data:`~st_instruct.models.soft_prompts.PROMPT_TUNED_MODULES`); ``base_forecaster`` names
  the trained forecaster it was tuned on (a folder, read relative to the current directory when relative, or a Hub
  repo id), whose backbone the other fields describe. Loading it loads the base (:func:`load_forecaster`; a Hub
  repo id downloaded as :func:`download_model` downloads), adds the soft prompt, and loads the adapter's weights
  over the base's: several adapters share one base folder;
- ``st_modules.safetensors`` + ``st_forecaster_config.json`` (:func:`save_st_modules`): encoder, projector, head
  (an attribute adapter's: its own weights only, and the whole configuration);
- the tokenizer with the ST special tokens.

An LLM4HRS imputer (:mod:`st_instruct.models.llm4hrs`, ``architecture: llm4hrs``) is saved in the same files, in
format ``"base"`` (``"none"`` for its no-LLM control) and without a tokenizer: ``st_modules.safetensors`` holds what
its freeze plan trains (its own layers, the backbone's norms and position tables) and ``st_forecaster_config.json``
its :class:`~st_instruct.models.llm4hrs.LLM4HRSConfig`, marked ``"architecture": "llm4hrs"``
(:func:`~st_instruct.models.llm4hrs.saved_architecture`); :func:`load_forecaster` rebuilds the base backbone and the
tokenizer (with the ST tokens, for the samples evaluation tokenises) and returns the imputer.

For ``"adapter"`` and ``"base"`` the base backbone is rebuilt as training built it -- :func:`get_backbone`, then
:func:`add_st_tokens` with the base tokenizer, whose new embedding rows are deterministic (the mean of the others) --
so adapters stay small (no copy of a resized embedding table) and reload to identical predictions.

``adapter_config.json`` is PEFT's, with three keys rewritten so that tools reading it alone never build another
model: ``base_model_name_or_path`` is the base's Hub id (:func:`~st_instruct.models.backbones.hub_model_id`; a local
folder stays as given, never the model cache path), ``task_type`` is ``null`` and ``auto_mapping`` names the class
of :mod:`st_instruct.models.hub_backbone` that rebuilds the backbone or refuses, naming what training changed
(``auto_mapping["task_type"]`` keeps the task type training used, ``"CAUSAL_LM"`` for LoRA, which
:func:`load_forecaster` restores). ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` is then refused by PEFT (the
class's module is not in its import allowlist); with ``import_allowlist=["st_instruct"]`` it gives the same
backbone as :func:`load_forecaster` when the layers were not truncated (and no other change makes the base's name
insufficient), else the refusal.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from peft import PeftConfig, PeftModel, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from st_instruct.model_dir import (
    ADAPTER_FILES,
    BACKBONE_FILE,
    COPY_AGAIN,
    ST_CONFIG_FILE,
    ST_MODULES_FILE,
    TOKENIZER_FILES,
    read_json_file,
)
from st_instruct.models.backbones import BackboneSource, base_num_layers, build_base_backbone, hub_model_id
from st_instruct.models.forecaster import (
    STForecaster,
    STForecasterConfig,
    apply_memories,
    apply_soft_prompt,
    build_st_forecaster,
    check_size,
    check_st_weights,
    load_st_modules,
    save_st_modules,
    st_state_dict,
)
from st_instruct.models.hub_backbone import auto_class
from st_instruct.models.llm4hrs import (
    ARCHITECTURE,
    LLM4HRSConfig,
    LLM4HRSImputer,
    build_llm4hrs_imputer,
    load_llm4hrs_weights,
    save_llm4hrs,
    saved_architecture,
)
from st_instruct.models.patching import decoder_layers, unwrap
from st_instruct.models.soft_prompts import PROMPT_TUNED_MODULES
from st_instruct.samples.st_tokens import ST_TOKENS, st_token_ids

FORMATS = ("adapter", "full", "base", "none", "attribute")


def is_peft_model(module: torch.nn.Module) -> bool:
    return unwrap(module) is not module


def backbone_format(model: STForecaster) -> str:
    """``"adapter"`` for a PEFT-wrapped backbone, ``"base"`` when no backbone parameter trains, else ``"full"``;
    ``"none"`` without a backbone (the no-LLM control).

    Raises for a PEFT-wrapped backbone whose base weights also train: its adapter would not hold them.
    """
    if model.backbone is None:
        return "none"
    # ST modules inside the backbone (MRFFN memories, a VLM's vision tower and projector) are saved with the ST
    # modules, so they never make a backbone "full"
    st = {id(p) for module in model.st_modules().values() for p in module.parameters()}
    if is_peft_model(model.backbone):
        adapter = {id(p) for module in model.backbone.modules() if isinstance(module, BaseTunerLayer)
                   for name in module.adapter_layer_names for p in getattr(module, name).parameters()}
        base = [name for name, p in model.backbone.named_parameters()
                if p.requires_grad and id(p) not in adapter and id(p) not in st]
        if base:
            raise ValueError(f"the PEFT-wrapped backbone also trains base weights ({base[:3]}...), which its adapter "
                             "does not save; train them through PEFT (modules_to_save) or without an adapter")
        return "adapter"
    return "full" if any(p.requires_grad for p in model.backbone.parameters() if id(p) not in st) else "base"


def save_forecaster(model: STForecaster | LLM4HRSImputer, directory: str | Path, source: BackboneSource,
                    tokenizer: Any = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``; not an imputer's) to ``directory`` in the layout of the module docstring;
    returns it.

    ``state_dict`` is the whole forecaster's state (keys ``backbone.*``, ``st_encoder.*``, ...) when the live
    parameters are not the full ones (DeepSpeed ZeRO-3 gathers them into it); by default the model's own.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, LLM4HRSImputer):
        return _save_imputer(model, directory, source, tokenizer, state_dict)
    kind = "attribute" if source.base_forecaster else backbone_format(model)
    backbone_state = None
    if state_dict is not None:
        backbone_state = {key[len("backbone."):]: value for key, value in state_dict.items()
                          if key.startswith("backbone.")}
    source = _with_records(source, model, tokenizer)
    if kind == "adapter":
        model.backbone.save_pretrained(directory, state_dict=backbone_state, save_embedding_layers=False)
        _rewrite_adapter_config(directory / ADAPTER_FILES[0], source, model)
    elif kind == "full":
        unwrap(model.backbone).save_pretrained(directory, state_dict=backbone_state)
    if kind == "attribute":  # the adapter's own weights; the base's stay in the base folder
        save_file(attribute_state_dict(model, state_dict), str(directory / ST_MODULES_FILE), metadata={"format": "pt"})
        model.st_config.save(directory)
    elif state_dict is None:
        save_st_modules(model, directory)
    else:
        save_file(st_state_dict(model, state_dict), str(directory / ST_MODULES_FILE), metadata={"format": "pt"})
        model.st_config.save(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    record = {key: value for key, value in asdict(source).items()
              if key != "base_forecaster" or value is not None}  # only an attribute adapter has a base
    (directory / BACKBONE_FILE).write_text(json.dumps({**record, "format": kind}, indent=2) + "\n")
    return directory


def _save_imputer(model: LLM4HRSImputer, directory: Path, source: BackboneSource, tokenizer: Any,
                  state_dict: dict[str, torch.Tensor] | None) -> Path:
    """An LLM4HRS imputer in the layout of the module docstring: its trained weights and config, and
    ``st_backbone.json`` (format ``"base"``, ``"none"`` without a backbone); the tokenizer is the base's and is not
    saved (``tokenizer`` only fills the record of the ST tokens)."""
    save_llm4hrs(model, directory, state_dict)
    record = asdict(_with_records(source, model, tokenizer))
    record.pop("base_forecaster")
    kind = "none" if model.backbone is None else "base"
    (directory / BACKBONE_FILE).write_text(json.dumps({**record, "format": kind}, indent=2) + "\n")
    return directory


def attribute_state_dict(model: STForecaster, state_dict: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
    """What an attribute adapter saves of ``model``: the weights of :data:`~st_instruct.models.soft_prompts.
    PROMPT_TUNED_MODULES` (``st_soft_prompt.*``, ``regression_head.out.*``), on the CPU, from the live modules or
    picked out of the whole forecaster's ``state_dict`` (:func:`~st_instruct.models.forecaster.st_state_dict`).
    ``ValueError`` for a model without a soft prompt."""
    if model.st_soft_prompt is None:
        raise ValueError("an attribute adapter holds a soft prompt, but this forecaster has none; train it with "
                         "freeze_plan: prompt (soft_prompt_tokens > 0)")
    prefixes = tuple(f"{name}." for name in PROMPT_TUNED_MODULES)
    return {key: value for key, value in st_state_dict(model, state_dict).items() if key.startswith(prefixes)}


def _with_records(source: BackboneSource, model: STForecaster, tokenizer: Any) -> BackboneSource:
    """``source`` with ``base_num_layers`` (``None`` without a backbone) and ``added_tokens`` (``None`` without a
    tokenizer) filled in."""
    layers = None
    if model.backbone is not None:  # untruncated: the live count, no config to read
        layers = len(decoder_layers(model.backbone)) if source.num_layers is None else \
            base_num_layers(source.model_name_or_path)
    tokens = None
    if tokenizer is not None:
        ids = st_token_ids(tokenizer)
        tokens = dict(zip(ST_TOKENS, (ids.start, ids.his, ids.pre, ids.end), strict=True))
    return replace(source, base_num_layers=layers, added_tokens=tokens)


def _rewrite_adapter_config(path: Path, source: BackboneSource, model: STForecaster) -> None:
    """Point the ``adapter_config.json`` PEFT just wrote at the base's Hub id and at the
    :mod:`~st_instruct.models.hub_backbone` class that rebuilds the backbone or refuses (module docstring); every
    other key stays as PEFT wrote it."""
    inside = {id(module) for module in model.backbone.modules()}
    st_modules_inside = any(id(module) in inside for module in model.st_modules().values())
    cls = auto_class(source, st_modules_inside)
    config = read_json_file(path)
    trained_task = config.get("task_type")
    config.update(base_model_name_or_path=hub_model_id(source.model_name_or_path), task_type=None,
                  auto_mapping={"base_model_class": cls.__name__, "parent_library": cls.__module__,
                                "task_type": trained_task})
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def read_backbone_source(directory: str | Path) -> tuple[BackboneSource, str]:
    """``(source, format)`` from ``st_backbone.json``; ``FileNotFoundError`` naming every missing file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; pass a forecaster saved by st_instruct (a training "
                                "output directory or one of its checkpoint-N folders)")
    missing = [name for name in (BACKBONE_FILE, ST_CONFIG_FILE, ST_MODULES_FILE) if not (directory / name).is_file()]
    meta = read_json_file(directory / BACKBONE_FILE) if BACKBONE_FILE not in missing else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{directory / BACKBONE_FILE} must hold a JSON object, found {type(meta).__name__}")
    kind = meta.pop("format", None)
    if kind == "adapter":
        missing += [name for name in ADAPTER_FILES if not (directory / name).is_file()]
    elif kind == "full" and not list(directory.glob("model*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete saved forecaster: missing {', '.join(missing)} "
                                "(was the copy interrupted, or is this another kind of directory?)")
    if kind not in FORMATS:
        raise ValueError(f"{directory / BACKBONE_FILE}: format must be one of {FORMATS}, found {kind!r}")
    if (kind == "attribute") != bool(meta.get("base_forecaster")):
        raise ValueError(f"{directory / BACKBONE_FILE}: format {kind!r} with base_forecaster "
                         f"{meta.get('base_forecaster')!r}: an attribute adapter, and only one, names its base "
                         f"forecaster (a folder or a Hub repo id); it was edited or damaged; {COPY_AGAIN}")
    weights = [ST_MODULES_FILE, *([ADAPTER_FILES[1]] if kind == "adapter" else [])]
    weights += sorted(p.name for p in directory.glob("model*.safetensors")) if kind == "full" else []
    for name in weights:
        check_safetensors(directory / name)
    return _backbone_source(directory / BACKBONE_FILE, meta), kind


def _backbone_source(path: Path, meta: dict[str, Any]) -> BackboneSource:
    """The :class:`BackboneSource` that ``meta`` (``st_backbone.json`` at ``path``, without ``format``) records; a
    ValueError naming the file and the key for anything this version did not write: unknown keys, a type, or a size
    out of :data:`~st_instruct.models.forecaster.SIZE_BOUNDS` (checked before any backbone is built)."""
    unknown = sorted(set(meta) - {f.name for f in fields(BackboneSource)})
    name = meta.get("model_name_or_path")
    if unknown or not (isinstance(name, str) and name):
        raise ValueError(f"{path} must hold model_name_or_path (and num_layers, load_in_4bit, format), found keys "
                         f"{sorted(meta)} with model_name_or_path {name!r}; it was not written by this version of "
                         "st_instruct")
    tokens = meta.get("added_tokens")
    try:
        if tokens is not None and not (isinstance(tokens, dict) and all(isinstance(k, str) for k in tokens)):
            raise ValueError(f"added_tokens must map token strings to integer ids, found {tokens!r}")
        if not isinstance(meta.get("base_forecaster") or "", str):
            raise ValueError(f"base_forecaster must be a folder or a Hub repo id, found {meta['base_forecaster']!r}")
        if not isinstance(meta.get("load_in_4bit", False), bool):
            raise ValueError(f"load_in_4bit must be true or false, found {meta['load_in_4bit']!r}")
        for key in ("num_layers", "base_num_layers", "random_init_seed"):
            check_size(key, meta.get(key), nullable=True)
        for token, token_id in (tokens or {}).items():
            check_size(f"added_tokens[{token!r}]", token_id, "token_id")
    except ValueError as err:
        raise ValueError(f"{path}: {err}: it was edited or damaged; {COPY_AGAIN}") from err
    return BackboneSource(**meta)


def check_safetensors(path: Path) -> None:
    """Raise a ValueError naming ``path`` when it is not a complete safetensors file (header and data readable)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); copy the model folder again (completely) or "
                         "re-train") from err


def load_forecaster(directory: str | Path, *, token: str | None = None,
                    cache_dir: str | Path | None = None) -> tuple[STForecaster | LLM4HRSImputer, Any]:
    """``(model in eval mode, tokenizer)`` from a directory written by :func:`save_forecaster`. Its files are checked
    against each other (:func:`read_backbone_source`, :meth:`STForecasterConfig.load`, :func:`check_st_weights`, the
    tokenizer's files) before anything is built, so an edited or incomplete folder is one error naming the file.
    An attribute adapter loads its base first (module docstring): a base named by Hub repo id is downloaded with
    ``token`` into ``cache_dir`` (:func:`download_model`). An LLM4HRS folder gives the imputer and the base's
    tokenizer (:func:`_load_imputer`)."""
    directory = Path(directory)
    source, kind = read_backbone_source(directory)
    if saved_architecture(directory) == ARCHITECTURE:
        return _load_imputer(directory, source, kind)
    config = STForecasterConfig.load(directory)
    if kind == "attribute":
        return _load_attribute_adapter(directory, source, config, token, cache_dir)
    check_st_weights(directory, config)
    tokenizer = _saved_tokenizer(directory)
    if kind == "none":  # the no-LLM control: the tokenizer only tokenises its prompts, the model reads the arrays
        return load_st_modules(build_st_forecaster(None, config), directory).eval(), tokenizer
    backbone, base_tokenizer = build_base_backbone(source)
    if base_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the tokenizer saved in {directory} differs from the one of its base backbone "
                         f"{source.model_name_or_path!r}; was the base model changed since training?")
    apply_memories(backbone, config.memory)  # before the adapter: its LoRA names include the wrapped MLPs
    if kind == "adapter":
        backbone = PeftModel.from_pretrained(backbone, directory, config=_trained_adapter_config(directory))
    elif kind == "full":
        _load_full_backbone(backbone, directory)
    return load_st_modules(build_st_forecaster(backbone, config), directory).eval(), tokenizer


def _load_imputer(directory: Path, source: BackboneSource, kind: str) -> tuple[LLM4HRSImputer, Any]:
    """``(imputer in eval mode, tokenizer)`` of an LLM4HRS folder (module docstring): the base backbone and its
    tokenizer rebuilt as training built them, the imputer of the saved config on it, its trained weights loaded."""
    config = LLM4HRSConfig.load(directory)
    if kind != ("none" if config.control == "no_llm" else "base"):
        raise ValueError(f"{directory / BACKBONE_FILE}: format {kind!r} does not fit the LLM4HRS imputer of "
                         f"{ST_CONFIG_FILE} (control {config.control!r}); the folder was edited or damaged; "
                         f"{COPY_AGAIN}")
    backbone, tokenizer = build_base_backbone(source)
    return load_llm4hrs_weights(build_llm4hrs_imputer(backbone, config), directory).eval(), tokenizer


def load_model_config(directory: str | Path) -> STForecasterConfig | LLM4HRSConfig:
    """The configuration of the model saved in ``directory``, whatever its architecture: a forecaster's
    :class:`~st_instruct.models.forecaster.STForecasterConfig` or an imputer's
    :class:`~st_instruct.models.llm4hrs.LLM4HRSConfig`; both give ``horizon`` and ``channels`` without
    building the model."""
    if saved_architecture(directory) == ARCHITECTURE:
        return LLM4HRSConfig.load(directory)
    return STForecasterConfig.load(directory)


def _saved_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in a forecaster folder; ``FileNotFoundError`` naming its missing files."""
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if missing:  # transformers would answer "install sentencepiece or tiktoken", which is not the problem
        raise FileNotFoundError(f"{directory} lacks its tokenizer's {' and '.join(missing)} (a saved forecaster "
                                f"holds {' and '.join(TOKENIZER_FILES)}); copy the model folder again (completely)")
    return AutoTokenizer.from_pretrained(directory)


def _load_attribute_adapter(directory: Path, source: BackboneSource, config: STForecasterConfig,
                            token: str | None, cache_dir: str | Path | None) -> tuple[STForecaster, Any]:
    """An attribute adapter (module docstring): its base loaded, its soft prompt added, its weights loaded over the
    base's; its configuration must be the base's plus the soft prompt, its tokenizer the base's."""
    tokenizer = _saved_tokenizer(directory)
    model, base_tokenizer, base = load_base_forecaster(source.base_forecaster, config.soft_prompt, token=token,
                                                       cache_dir=cache_dir, adapter=directory)
    values, base_values = asdict(config), asdict(model.st_config)
    differ = [key for key in values if values[key] != base_values[key]]
    if differ:
        raise ValueError(f"the attribute adapter in {directory} was not tuned on the forecaster in {base} (their "
                         f"{ST_CONFIG_FILE} differ in {', '.join(differ)}); point base_forecaster in its "
                         f"{BACKBONE_FILE} at the folder it was tuned on")
    if base_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the tokenizer saved in {directory} differs from the one of its base forecaster {base}; "
                         "was the base changed since the adapter was tuned?")
    load_attribute_weights(model, directory)
    return model.eval(), tokenizer


def load_base_forecaster(base: str | Path, soft_prompt: Any, *, token: str | None = None,
                         cache_dir: str | Path | None = None, adapter: Path | None = None
                         ) -> tuple[STForecaster, Any, Path]:
    """``(model, tokenizer, folder)``: the trained forecaster ``base`` (a folder, or a Hub repo id downloaded by
    :func:`download_model`) with a fresh soft prompt of ``soft_prompt`` (a
    :class:`~st_instruct.configs.SoftPromptConfig`; :func:`~st_instruct.models.forecaster.apply_soft_prompt`, drawn
    from torch's global generator) and every other weight the base's: where prompt tuning starts and what an
    attribute adapter (``adapter``, for the messages) loads onto. An attribute adapter as the base is refused."""
    folder = Path(base).expanduser()
    named = f"the base forecaster {base} of the attribute adapter in {adapter}" if adapter is not None else \
        f"the base forecaster {base}"
    if not folder.is_dir():
        try:
            folder = download_model(str(base), token=token, cache_dir=cache_dir)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{named}: {err}; keep the base folder where {BACKBONE_FILE} names it "
                                    "(base_forecaster; a relative path is read from the current directory), or "
                                    "name its Hub repo id there") from err
    _, kind = read_backbone_source(folder)
    if kind == "attribute":
        raise ValueError(f"{named} is itself an attribute adapter; tune (and load) attribute adapters on the "
                         "forecaster it names as its base_forecaster")
    model, tokenizer = load_forecaster(folder)
    return apply_soft_prompt(model, soft_prompt), tokenizer, folder


def load_attribute_weights(model: STForecaster, directory: str | Path) -> STForecaster:
    """Copy the attribute adapter's weights saved in ``directory`` (:func:`attribute_state_dict`) into ``model``,
    in place; a ValueError naming the file when they are not exactly the tensors ``model`` has there. Returns
    ``model``."""
    path = Path(directory) / ST_MODULES_FILE
    try:
        state = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); {COPY_AGAIN}") from err
    expected = attribute_state_dict(model)
    wrong = sorted(set(state) ^ set(expected)) + sorted(
        key for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    if wrong:
        raise ValueError(f"{path} does not hold the attribute adapter's weights this model has (soft prompt and "
                         f"head output layer): {wrong[:5]} differ; {COPY_AGAIN}")
    with torch.no_grad():
        for key, value in state.items():
            model.get_parameter(key).copy_(value)
    return model


def download_model(repo_id: str, revision: str | None = None, token: str | None = None,
                   cache_dir: str | Path | None = None) -> Path:
    """The Hub repo ``repo_id`` (USER/NAME) downloaded through ``huggingface_hub`` into its cache (from
    ``$HF_ENDPOINT`` read at call time; ``HF_HUB_OFFLINE=1`` uses the cached copy and never the network); returns
    its folder. ``FileNotFoundError`` saying why not (not a repo id, not cached while offline, refused)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{repo_id}: no such folder, and not a Hub repo id (USER/NAME)")
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                      endpoint=os.environ.get("HF_ENDPOINT") or None))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"{repo_id}: no such folder, and the Hub repo is not in the local cache while the "
                                f"Hub cannot be reached or HF_HUB_OFFLINE is set ({err})") from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"{repo_id}: no such folder, and the Hub refused it ({err})") from err


def _trained_adapter_config(directory: Path) -> Any:
    """The adapter's PEFT config with the task type training used (kept in ``auto_mapping["task_type"]``, module
    docstring; folders written before keep it in ``task_type``), so the backbone is wrapped in the PEFT class it
    trained in (``PeftModelForCausalLM`` for LoRA, not a plain ``PeftModel``)."""
    config = PeftConfig.from_pretrained(str(directory))
    if isinstance(config.auto_mapping, dict) and "task_type" in config.auto_mapping:
        config.task_type = config.auto_mapping["task_type"]
    return config


def load_forecaster_weights(model: STForecaster | LLM4HRSImputer, directory: str | Path
                            ) -> STForecaster | LLM4HRSImputer:
    """Copy the weights saved in ``directory`` into ``model`` in place (resuming from a checkpoint); the model must
    have the same structure (same freeze plan, same ST config; an imputer: the same
    :class:`~st_instruct.models.llm4hrs.LLM4HRSConfig`). Returns ``model``."""
    directory = Path(directory)
    _, kind = read_backbone_source(directory)
    if isinstance(model, LLM4HRSImputer):
        return load_llm4hrs_weights(model, directory)
    if kind == "attribute":  # prompt tuning's checkpoint: the base's weights never changed
        return load_attribute_weights(model, directory)
    if kind != backbone_format(model):
        raise ValueError(f"{directory} holds a {kind!r} backbone but the model to restore has a "
                         f"{backbone_format(model)!r} one; resume with the recipe (freeze_plan) it was trained with")
    if kind == "adapter":
        result = set_peft_model_state_dict(model.backbone, load_file(str(directory / ADAPTER_FILES[1])))
        if result.unexpected_keys:
            raise ValueError(f"{directory / ADAPTER_FILES[1]} holds weights this model's adapter lacks: "
                             f"{result.unexpected_keys[:5]}")
    elif kind == "full":
        _load_full_backbone(unwrap(model.backbone), directory)
    return load_st_modules(model, directory)


def _load_full_backbone(backbone: torch.nn.Module, directory: Path) -> None:
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("model*.safetensors")):
        state.update(load_file(str(path)))
    result = backbone.load_state_dict(state, strict=False)
    loaded = {t.data_ptr() for name, t in backbone.state_dict().items() if name in state}
    params = backbone.state_dict()
    untied = [name for name in result.missing_keys if params[name].data_ptr() not in loaded]  # tied: not saved
    if untied or result.unexpected_keys:
        raise ValueError(f"the backbone saved in {directory} does not fit the model: missing {untied[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
