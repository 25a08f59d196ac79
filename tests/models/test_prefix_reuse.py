"""Prediction's shortened pass (issue 26): the node-as-token template ``forecast_graph_tokens`` (one token per node,
the head reads the forecast where the encoder wrote the history), the tokens after the last ST token cut, and the
keys / values of the text prefix shared by every window computed once and reused. Each is checked against the full
teacher-forced pass of the same model on the same batch: the forecasts must agree."""

import pytest
import torch
from tiny import build_tiny_forecaster

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STLINK = {"se_attention": True, "se_pairs": 2, "mrffn": True, "mrffn_layers": [-1], "mrffn_slots": 4,
          "mrffn_key_dim": 8}


def full_pass(model, batch):
    """The forecast of the plain teacher-forced pass over every token (no prefix reuse, nothing cut)."""
    model.eval()
    with torch.no_grad():
        scaled = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1).predictions
    return scaled * batch["scaler_std"][:, None, None, :] + batch["scaler_mean"][:, None, None, :]


def test_node_as_token_samples_carry_one_token_per_node_read_by_the_head(built):
    for key, nodes in (("tokens12", 12), ("tokens48", 48)):
        row = built[key][0]
        assert row["his_positions"] == row["pre_positions"] and len(row["his_positions"]) == nodes
        # one token per node: the ST tokens are consecutive, nothing between two nodes
        assert row["his_positions"] == list(range(row["his_positions"][0], row["his_positions"][0] + nodes))
    graph = built["graph12"][0]
    assert len(built["tokens12"][0]["input_ids"]) < len(graph["input_ids"]) - 12  # shorter than forecast_graph


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("stlink", [False, True])
def test_reused_prefix_forecasts_exactly_as_the_full_pass(arch, stlink, st_tok, built, collate):
    batch = collate([built["tokens48"][0], built["tokens48"][1]])  # two windows of one city: one prefix
    model = build_tiny_forecaster(st_tok, arch, **(STLINK if stlink else {}))
    if stlink:
        with torch.no_grad():
            model.st_spatial.weight.normal_()  # real angles: the rotation must see absolute positions
    start, end = model.prediction_span(batch["input_ids"], batch["attention_mask"], batch["his_positions"],
                                       batch["pre_positions"], batch["node_mask"])
    assert 0 < start == int(batch["his_positions"][0, 0]) and end < batch["input_ids"].shape[1]
    expected = full_pass(model, batch) * batch["node_mask"][:, None, :, None]
    torch.testing.assert_close(model.predict(batch), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.predict(batch), expected, atol=1e-5, rtol=1e-5)  # from the cache


def test_the_prefix_is_computed_once_and_again_after_the_weights_change(st_tok, built, collate):
    batch = collate([built["tokens12"][0], built["tokens12"][1]])
    model = build_tiny_forecaster(st_tok, "llama", **STLINK)
    lengths = []
    handle = model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    first = model.predict(batch)
    model.predict(collate([built["tokens12"][1]]))
    prefix = int(batch["his_positions"][0, 0])
    assert lengths.count(prefix) == 1  # one prefix pass for both calls
    with torch.no_grad():  # an optimizer step edits the weights in place
        for name, parameter in model.backbone.named_parameters():
            if "layers.0" in name:
                parameter.mul_(1.5)
    changed = model.predict(batch)
    handle.remove()
    assert lengths.count(prefix) == 2  # the stale prefix was not reused
    assert not torch.allclose(changed, first, atol=1e-4)
    torch.testing.assert_close(changed, full_pass(model, batch) * batch["node_mask"][:, None, :, None],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [("graph12", "graph12"), ("tokens12", "tokens48")])
def test_rows_with_different_text_before_the_nodes_share_nothing_but_still_cut_the_tail(rows, st_tok, built, collate):
    # forecast_graph writes the period before the nodes; two cities differ in name (and pad 12 nodes to 48)
    batch = collate([built[rows[0]][0], built[rows[1]][1]])
    model = build_tiny_forecaster(st_tok, "llama", **STLINK)
    start, end = model.prediction_span(batch["input_ids"], batch["attention_mask"], batch["his_positions"],
                                       batch["pre_positions"], batch["node_mask"])
    assert start == 0 and end <= batch["input_ids"].shape[1]
    torch.testing.assert_close(model.predict(batch), full_pass(model, batch) * batch["node_mask"][:, None, :, None],
                               atol=1e-5, rtol=1e-5)


def test_the_batch_size_chosen_by_memory_follows_the_free_memory_and_the_sample_length(st_tok, built):
    from st_instruct.inference import MAX_AUTO_BATCH, memory_batch_size

    model = build_tiny_forecaster(st_tok, "llama")
    per_sample = model.prediction_bytes(300)
    assert per_sample > model.prediction_bytes(100) > 0  # longer samples take more
    assert memory_batch_size(model, 300, free_bytes=4 * per_sample * 10) == 10  # a quarter of the free memory
    assert memory_batch_size(model, 300, free_bytes=per_sample) == 1  # never 0
    assert memory_batch_size(model, 300, free_bytes=1 << 50) == MAX_AUTO_BATCH
    # at least the hidden states of every layer, which the pass keeps for the head
    hidden = model.backbone.config.hidden_size * (model.backbone.config.num_hidden_layers + 1) * 300 * 4
    assert per_sample >= hidden
