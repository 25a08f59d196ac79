"""A few training steps of the ST-VLM forecaster on each tiny vision-language family (LLaVA, Qwen2-VL, Idefics3,
built from config and saved as a backbone folder a recipe names), through the real recipe -> trainer -> save ->
load path; the adaptive fine-tuning choices of the vision tower (frozen / lora / full)."""

import numpy as np
import pytest
import torch
from test_trainer import SMOKE
from tiny import build_test_tokenizer, build_tiny_vlm

from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.models.patching import vision_projector, vision_tower
from st_instruct.models.saving import load_forecaster
from st_instruct.training.run import build_forecaster, build_trainer

VLM_FLAGS = ["--granularity", "graph", "--template", "forecast_graph", "--image_kind", "map", "--image_size", "32",
             "--st_fusion", "true", "--st_fusion_heads", "2", "--max_steps", "3", "--save_strategy", "no",
             "--report_to", "none", "--learning_rate", "0.01", "--per_device_train_batch_size", "2"]


def save_tiny_vlm(family, folder):
    """A tiny VLM of ``family`` with its processor and tokenizer (no ST tokens yet) in ``folder``."""
    model, processor = build_tiny_vlm(family, build_test_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: save_tiny_vlm(family, root / family) for family in ("llava", "qwen2_vl", "idefics3")}


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before, module):
    return [name for name, p in module.named_parameters() if name in before and not torch.equal(before[name], p)]


@pytest.mark.parametrize("family,tower", [("llava", "full"), ("llava", "frozen"), ("llava", "lora"),
                                          ("qwen2_vl", "full"), ("idefics3", "full")])
def test_tiny_vlm_trains_saves_and_reloads_to_identical_predictions(family, tower, vlm_dirs, tmp_path):
    data_config, model_config, args = parse_recipe(train_dataclasses(), [
        str(SMOKE), "--model_name_or_path", str(vlm_dirs[family]), "--dataset_cache_dir", str(tmp_path / "built"),
        "--output_dir", str(tmp_path / "run"), "--vision_tower_train", tower, *VLM_FLAGS])
    model, tokenizer, dataset, report = build_forecaster(data_config, model_config, args.seed)
    assert "st_fusion" in report.groups and ("st_vision_tower" in report.groups) == (tower == "full")
    trainer = build_trainer(model, data_config, model_config, args, dataset["train"], tokenizer, args.seed)
    tower_before = snapshot(vision_tower(model.backbone))
    projector_before = snapshot(vision_projector(model.backbone))
    trainer.train()
    assert model.st_fusion.gate.item() != 0.0  # the fusion trained
    moved = changed(tower_before, vision_tower(model.backbone))
    if tower == "frozen":
        assert not moved
    elif tower == "lora":
        assert moved and all("lora_" in name for name in moved)
    else:
        assert moved and not any("lora_" in name for name in moved)
    assert changed(projector_before, vision_projector(model.backbone))  # the projector always trains
    trainer.save_model(str(tmp_path / "saved"))
    loaded, loaded_tokenizer = load_forecaster(tmp_path / "saved")
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    batch = trainer.data_collator([dataset["test"][i] for i in range(2)])
    assert "pixel_values" in batch
    torch.testing.assert_close(loaded.predict(batch), model.predict(batch), atol=0, rtol=0)


def test_a_text_backbone_with_images_is_refused(tiny_backbone_dir, tmp_path):
    from st_instruct.configs import RecipeError

    data_config, model_config, args = parse_recipe(train_dataclasses(), [
        str(SMOKE), "--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"),
        "--output_dir", str(tmp_path / "run"), "--image_kind", "map", "--report_to", "none"])
    model, tokenizer, dataset, _ = build_forecaster(data_config, model_config, args.seed)
    with pytest.raises(RecipeError, match="image_kind: map gives every window an image, but the backbone"):
        build_trainer(model, data_config, model_config, args, dataset["train"], tokenizer, args.seed)


def test_trained_vlm_card_push_and_reload_from_the_hub(vlm_dirs, tmp_path, hub_server):
    """``train`` writes the VLM folder with a card that says what the image shows; ``push_to_hub`` (the local Hub
    stand-in, real HTTP) delivers it; the downloaded copy loads to the trained predictions, vision tower, projector
    and fusion included."""
    from huggingface_hub import snapshot_download
    from safetensors import safe_open

    from st_instruct.hub import push_to_hub
    from st_instruct.models.collators import build_collator
    from st_instruct.training.run import train

    output = train(*parse_recipe(train_dataclasses(), [
        str(SMOKE), "--model_name_or_path", str(vlm_dirs["llava"]), "--dataset_cache_dir", str(tmp_path / "built"),
        "--output_dir", str(tmp_path / "trained"), *VLM_FLAGS]))
    card = (output / "README.md").read_text()
    assert "## What the image shows" in card and "32 x 32 RGB image (map)" in card
    with safe_open(str(output / "st_modules.safetensors"), framework="pt") as saved:
        prefixes = {key.split(".")[0] for key in saved.keys()}
    assert {"st_fusion", "st_vision_tower", "st_vision_projector", "st_encoder", "regression_head"} <= prefixes
    push_to_hub(output, "st-user/tiny-stvlm", token=hub_server.token)
    copy = snapshot_download("st-user/tiny-stvlm", endpoint=hub_server.url, token=hub_server.token,
                             cache_dir=tmp_path / "hf_cache")
    here, tokenizer = load_forecaster(output)
    there, _ = load_forecaster(copy)
    data_config, _, _ = parse_recipe(train_dataclasses(), [str(output / "recipe.yaml")])
    from st_instruct.samples.builder import build_dataset

    rows = build_dataset(data_config, tokenizer)["test"]
    batch = build_collator(data_config, here, tokenizer, str(vlm_dirs["llava"]))([rows[i] for i in range(2)])
    assert "pixel_values" in batch
    torch.testing.assert_close(there.predict(batch), here.predict(batch), atol=0, rtol=0)
    # the prediction API on raw values: the images rendered from the input, coloured on training's range
    from st_instruct import load_forecaster as load_model
    from st_instruct.data.loaders import get_dataset

    data = get_dataset("synthetic-small")
    steps = slice(-12, None)
    local = load_model(output).forecast(data.values[steps], data.time_index()[steps])
    hub = load_model(copy).forecast(data.values[steps], data.time_index()[steps])
    assert local.values.shape == (1, 12, 12, 2) and np.isfinite(local.values).all()
    np.testing.assert_array_equal(hub.values, local.values)
