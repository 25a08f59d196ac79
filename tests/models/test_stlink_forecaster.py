"""ST-LINK inside the forecaster: SE-Attention, MRFFN memories, RevIN and learned node coordinates switched on from
the recipe; equivalence at zero angles / zero gate, trained through the real trainer, saved and loaded back
exactly, and clear errors. The mechanisms themselves are tested in test_se_attention.py and test_mrffn.py."""

from pathlib import Path

import pytest
import torch
from tiny import build_tiny_forecaster

from st_instruct.configs import FreezeConfig, parse_recipe, train_dataclasses
from st_instruct.models.mrffn import memory_modules
from st_instruct.models.saving import load_forecaster
from st_instruct.models.se_attention import se_attention_enabled
from st_instruct.models.st_encoders import RevIN
from st_instruct.samples.collator import STDataCollator
from st_instruct.training.run import train

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_sft.yaml"
STLINK = ["--se_attention", "true", "--se_pairs", "2", "--mrffn", "true", "--mrffn_slots", "4", "--mrffn_key_dim", "8",
          "--mrffn_top_k", "2", "--revin", "true"]
GRAPH = ["--template", "forecast_graph", "--granularity", "graph"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_angles_and_closed_gate_forecast_exactly_as_the_plain_forecaster(arch, st_tok, built, collate):
    batch = collate([built["graph12"][0], built["graph48"][0]])
    plain = build_tiny_forecaster(st_tok, arch).eval()
    patched = build_tiny_forecaster(st_tok, arch, se_attention=True, se_pairs=2, mrffn=True, mrffn_layers=[-1],
                                    mrffn_slots=4, mrffn_key_dim=8).eval()
    assert se_attention_enabled(patched.backbone) and len(memory_modules(patched.backbone)) == 1
    with torch.no_grad():
        patched.st_spatial.weight.zero_()
    expected = plain.predict(batch)
    torch.testing.assert_close(patched.predict(batch), expected, atol=1e-5, rtol=1e-5)
    # the patches are live: real angles and an open gate change the forecast
    with torch.no_grad():
        patched.st_spatial.weight.normal_()
    rotated = patched.predict(batch)
    assert not torch.allclose(rotated, expected, atol=1e-4)
    with torch.no_grad():
        memory_modules(patched.backbone)[0].st_memory.gate.fill_(1.0)
    assert not torch.allclose(patched.predict(batch), rotated, atol=1e-4)


def test_revin_round_trip_uses_each_nodes_own_observed_statistics():
    torch.manual_seed(0)
    revin = RevIN(2)
    with torch.no_grad():
        revin.gamma.copy_(torch.tensor([2.0, 0.5]))
        revin.beta.copy_(torch.tensor([0.3, -1.0]))
    history = torch.randn(3, 12, 5, 2) * 4 + 7
    mask = torch.rand(3, 12, 5, 2) > 0.2
    normalised, stats = revin.normalise(history, mask)
    assert (normalised[~mask] == 0).all()
    # observed values normalised by the node's own observed mean / std
    b, n, c = 1, 3, 0
    observed = history[b, :, n, c][mask[b, :, n, c]]
    expected = (observed - observed.mean()) / (observed.var(unbiased=False) + 1e-5).sqrt() * 2.0 + 0.3
    torch.testing.assert_close(normalised[b, :, n, c][mask[b, :, n, c]], expected)
    # de-normalising a normalised series gives the original back
    restored = revin.denormalise(normalised, stats)
    torch.testing.assert_close(restored[mask], history[mask], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("plan", ["lora", "full", "frozen"])
def test_stlink_trains_saves_and_loads_back_identically(plan, tiny_backbone_dir, tmp_path):
    flags = ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"),
             "--report_to", "none", "--output_dir", str(tmp_path / "out"), "--max_steps", "3", "--save_strategy",
             "no", "--freeze_plan", plan, "--learning_rate", "0.01", *GRAPH, *STLINK]
    data_config, model_config, sft_config = parse_recipe(train_dataclasses(), [str(SMOKE), *flags])
    output = train(data_config, model_config, sft_config)
    model, tokenizer = load_forecaster(output)
    assert se_attention_enabled(model.backbone) and model.st_revin is not None
    (memory,) = memory_modules(model.backbone)
    assert float(memory.st_memory.gate) != 0  # trained: the gate opened in every plan
    from st_instruct.samples.builder import build_dataset

    test = build_dataset(data_config, tokenizer)["test"]
    batch = STDataCollator(tokenizer)([test[i] for i in range(2)])
    first = model.predict(batch)
    again, _ = load_forecaster(output)
    assert torch.equal(again.predict(batch), first)
    # the folder holds the ST-LINK parts with the ST modules, not in the adapter / backbone files
    from safetensors.torch import load_file

    keys = load_file(output / "st_modules.safetensors").keys()
    assert any(k.startswith("st_spatial.") for k in keys) and any(k.startswith("st_memory.layers.") for k in keys)
    assert any(k.startswith("st_revin.") for k in keys)


def test_freeze_report_names_the_stlink_groups_and_memory_trains_under_lora(st_tok):
    from st_instruct.training.freeze import apply_freeze_plan

    model = build_tiny_forecaster(st_tok, se_attention=True, se_pairs=2, mrffn=True, mrffn_layers=[0], mrffn_slots=4,
                                  mrffn_key_dim=8, revin=True)
    report = apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_target_modules=["attention", "mlp"]))
    assert {"st_spatial", "st_memory", "st_revin", "adapter"} <= set(report.groups)
    assert se_attention_enabled(model.backbone)  # still on under the PEFT wrapper
    lora_mlp = [n for n, _ in model.backbone.named_modules() if n.endswith("mlp.base.down_proj.lora_A")]
    assert lora_mlp  # LoRA still found the wrapped MLP's projections


def test_learned_coordinates_train_and_refuse_another_node_set(tiny_backbone_dir, tmp_path):
    from st_instruct.protocols.evaluate import evaluate_forecaster

    flags = ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"),
             "--report_to", "none", "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--save_strategy",
             "no", "--coordinates", "learned", "--coordinate_dim", "4", "--se_attention", "true", "--se_pairs", "2",
             *GRAPH]
    output = train(*parse_recipe(train_dataclasses(), [str(SMOKE), *flags]))
    model, _ = load_forecaster(output)
    assert model.st_node_table.weight.shape == (12, 4)  # synthetic-small has 12 zones
    report, _ = evaluate_forecaster(output, "synthetic-small", max_windows=1, models=["last_value"], progress=False)
    assert report["results"]["st_forecaster"]["MAE"] is not None
    with pytest.raises(ValueError, match="beyond the learned node table of 12 nodes"):
        evaluate_forecaster(output, "synthetic", max_windows=1, models=["last_value"], progress=False)


def test_bad_stlink_settings_are_clear_errors(st_tok, tiny_backbone_dir, tmp_path):
    from st_instruct.configs import RecipeError

    with pytest.raises(ValueError, match="coord_dim is 0"):
        build_tiny_forecaster(st_tok, coord_dim=0, se_attention=True)
    with pytest.raises(RecipeError, match="mrffn_top_k"):
        parse_recipe(train_dataclasses(), [str(SMOKE), "--mrffn_slots", "4", "--mrffn_top_k", "8"])
    flags = ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"),
             "--report_to", "none", "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--mrffn", "true",
             "--mrffn_slots", "64"]
    with pytest.raises(RecipeError, match="needs at least mrffn_slots = 64"):
        train(*parse_recipe(train_dataclasses(), [str(SMOKE), *flags]))


def stlink_weights(model):
    """SE-Attention's angle projection and each MRFFN memory's query projection of ``model``."""
    return [model.st_spatial.weight.detach().clone()] + [m.st_memory.query.detach().clone()
                                                        for m in memory_modules(model.backbone)]


def seeded_forecaster(st_tok, seed):
    """A tiny ST-LINK forecaster on the same backbone weights, its ST modules built after torch.manual_seed(seed)."""
    from tiny import build_tiny_backbone, tiny_st_config

    from st_instruct.models.forecaster import build_st_forecaster

    config = tiny_st_config(st_tok, se_attention=True, se_pairs=2, mrffn=True, mrffn_layers=[0, 1], mrffn_slots=4,
                            mrffn_key_dim=8)
    backbone = build_tiny_backbone(vocab_size=len(st_tok))
    torch.manual_seed(seed)
    return build_st_forecaster(backbone, config)


def test_the_global_seed_reaches_the_se_angles_and_the_memory_queries(st_tok, built, collate, tmp_path):
    from st_instruct.models.forecaster import load_st_modules, save_st_modules

    first, same, other = (stlink_weights(seeded_forecaster(st_tok, seed)) for seed in (1, 1, 2))
    assert len(first) == 3  # the angles and two memories
    for a, b, c in zip(first, same, other, strict=True):
        assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(first[1], first[2])  # each memory layer has its own initialisation
    # weights saved under one seed load back exactly into a forecaster built under another
    model = seeded_forecaster(st_tok, 1).eval()
    with torch.no_grad():
        model.st_spatial.weight.mul_(10)  # angles big enough to move the forecast
        for memory in memory_modules(model.backbone):
            memory.st_memory.gate.fill_(1.0)
    save_st_modules(model, tmp_path)
    batch = collate([built["graph12"][0]])
    fresh = seeded_forecaster(st_tok, 2).eval()
    assert not torch.allclose(fresh.predict(batch), model.predict(batch))
    load_st_modules(fresh, tmp_path)
    assert torch.equal(fresh.predict(batch), model.predict(batch))
    assert all(torch.equal(a, b) for a, b in zip(stlink_weights(fresh), stlink_weights(model), strict=True))


def test_the_recipe_seed_reaches_the_se_angles_and_the_memory_queries(tiny_backbone_dir, tmp_path):
    from st_instruct.training.run import build_forecaster

    flags = ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"),
             "--report_to", "none", "--output_dir", str(tmp_path / "out"), *GRAPH, *STLINK]
    data_config, model_config, _ = parse_recipe(train_dataclasses(), [str(SMOKE), *flags])
    first, same, other = (stlink_weights(build_forecaster(data_config, model_config, seed)[0]) for seed in (0, 0, 1))
    for a, b, c in zip(first, same, other, strict=True):
        assert torch.equal(a, b) and not torch.allclose(a, c)


def test_se_attention_on_one_node_prompts_is_refused(tiny_backbone_dir, tmp_path):
    from st_instruct.configs import DataConfig, ModelConfig, RecipeError
    from st_instruct.training.run import build_forecaster

    with pytest.raises(RecipeError, match="se_attention: true .*granularity: node.*use granularity: graph"):
        parse_recipe(train_dataclasses(), [str(SMOKE), "--se_attention", "true"])
    with pytest.raises(RecipeError, match="se_attention: true .*granularity: node.*use granularity: graph"):
        build_forecaster(DataConfig(dataset_names=["synthetic-small"], granularity="node"),
                         ModelConfig(model_name_or_path=str(tiny_backbone_dir), se_attention=True), seed=0)
    parse_recipe(train_dataclasses(), [str(SMOKE), "--se_attention", "true", *GRAPH])  # graph prompts are fine
