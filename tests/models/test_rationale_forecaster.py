"""AirGPT's student: the graph encoder on the ST tokens and the forecaster that generates its rationale (issue 12)."""

import numpy as np
import pytest
import torch
from tiny import build_tiny_forecaster, st_sample

from st_instruct.data.air_graphs import WindowGraphs
from st_instruct.models.rationale import generate_forecast
from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.tokenize import tokenize_messages

RATIONALES = ["### 1. Problem definition\nForecast the zones.\n### 5. Synthesis and conclusion\nLevels stay high.",
              "Short reason 42."]


def rationale_sample(tokenizer, index: int, nodes: int, rationale: str, **kwargs) -> dict:
    """An ``st_sample`` whose answer is ``rationale`` + newline + the answer frame, tokenised (the layout of
    st_instruct.samples.rationales' student samples)."""
    sample = st_sample(f"s{index}", num_nodes=nodes, seed=index, **kwargs)
    frame = "<st_start>" + "<st_pre>" * nodes + "<st_end>"
    sample["messages"][-1]["content"] = f"{rationale}\n{frame}"
    sample.update(tokenize_messages(sample["messages"], tokenizer, num_nodes=nodes))
    return sample


def window_graphs(nodes: int = 3, steps: int = 40, history: int = 12, seed: int = 0) -> WindowGraphs:
    rng = np.random.default_rng(seed)
    static = rng.random((nodes + 5, nodes + 5)).astype(np.float32)  # node_index of st_sample starts at 5
    hourly = rng.random((steps, nodes + 5, nodes + 5))
    cumsum = np.concatenate([np.zeros((1, *hourly.shape[1:])), np.cumsum(hourly, axis=0)])
    return WindowGraphs({"synthetic": static}, {"synthetic": cumsum}, history)


def test_window_graphs_pick_the_samples_stations_and_history_mean():
    graphs = window_graphs()
    samples = [st_sample("a", num_nodes=3, seed=2), st_sample("b", num_nodes=2, seed=4)]
    out = graphs.batch(samples, nodes=3)
    assert out["static_graph"].shape == out["wind_graph"].shape == (2, 3, 3)
    index = samples[0]["node_index"]
    cumsum = graphs.wind_cumsum["synthetic"]
    expected = (cumsum[2 + 12] - cumsum[2]) / 12  # window_start 2, history 12
    np.testing.assert_allclose(out["wind_graph"][0], expected[np.ix_(index, index)], rtol=1e-6)
    assert np.all(out["static_graph"][1, 2] == 0) and np.all(out["wind_graph"][1, :, 2] == 0)  # padded node


def test_graph_encoder_reads_the_batch_graphs_and_says_when_they_are_missing(st_tok):
    model = build_tiny_forecaster(st_tok, coord_dim=4, st_graph="static_wind")
    samples = [rationale_sample(st_tok, i, 3, "Reason.") for i in range(2)]
    batch = STDataCollator(st_tok, window_inputs=[window_graphs()])(samples)
    first = model.predict(batch)
    other = dict(batch, wind_graph=torch.rand_like(batch["wind_graph"]))
    assert not torch.allclose(first, model.predict(other))  # the wind graph reaches the forecast
    with pytest.raises(ValueError, match="needs the batch's wind_graph; batch with build_collator"):
        model.predict({key: value for key, value in batch.items() if key != "wind_graph"})
    static_only = build_tiny_forecaster(st_tok, coord_dim=4, st_graph="static")
    assert static_only.st_graph.dynamic_weight is None  # no wind branch, no unused parameter under DDP
    assert static_only.predict(batch).shape == first.shape


@pytest.mark.parametrize("options", [{}, {"se_attention": True, "se_pairs": 2, "st_graph": "static_wind"}],
                         ids=["plain", "se+graph"])
def test_forced_teacher_rationale_equals_the_teacher_forced_pass(st_tok, options):
    model = build_tiny_forecaster(st_tok, coord_dim=4, **options)
    samples = [rationale_sample(st_tok, i, nodes, text)
               for i, (nodes, text) in enumerate(zip((3, 2), RATIONALES, strict=True))]
    batch = STDataCollator(st_tok, window_inputs=[window_graphs()])(samples)
    texts, predictions = generate_forecast(model, st_tok, batch, rationales=RATIONALES)
    assert texts == RATIONALES
    assert torch.equal(predictions, model.predict(batch))


def test_generation_under_se_attention_continues_the_teacher_forced_pass(st_tok):
    """Greedy tokens generated with the key/value cache under the ST contexts (left-padded batch) equal the argmax of
    one full pass over prompt + those tokens: the embeddings and the spatial rotation act in generation as in the
    forward pass."""
    from st_instruct.models.rationale import _greedy_rationales, answer_frame_start
    from st_instruct.samples.st_tokens import st_token_ids

    model = build_tiny_forecaster(st_tok, coord_dim=4, se_attention=True, se_pairs=2, se_init_scale=1.0)
    samples = [rationale_sample(st_tok, i, nodes, text)
               for i, (nodes, text) in enumerate(zip((3, 2), RATIONALES, strict=True))]
    batch = STDataCollator(st_tok)(samples)
    texts, predictions = generate_forecast(model, st_tok, batch, max_new_tokens=6)
    assert len(texts) == 2 and predictions.shape == (2, 12, 3, 2)
    frame = st_tok.convert_tokens_to_ids("<st_start>")
    prompts = [list(s["input_ids"][:answer_frame_start(list(s["input_ids"]), list(s["labels"]), frame, "s")[0]])
               for s in samples]
    assert len(set(map(len, prompts))) == 2  # one prompt is left-padded
    with torch.no_grad():
        generated = _greedy_rationales(model.eval(), st_tok, st_token_ids(st_tok), batch, prompts, max_new_tokens=6)
    assert any(generated)
    for sample, prompt, tokens in zip(samples, prompts, generated, strict=True):
        one = STDataCollator(st_tok)([dict(sample, input_ids=prompt + tokens,
                                           labels=[-100] * (len(prompt) + len(tokens)))])
        _, nodes, _ = model.node_tokens(one["history"], one["history_mask"], one["history_tod"], one["history_dow"],
                                        one["coords"], one["node_mask"], one["steps_per_day"], one)
        length = one["input_ids"].shape[1]
        with torch.no_grad(), model.spatial_context(one["coords"], [one["his_positions"]], one["node_mask"], length), \
                model.st_inputs(one["input_ids"], one["attention_mask"], one["his_positions"], one["his_positions"],
                                one["node_mask"], model.st_projector(nodes)):
            logits = model.backbone(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits[0]
        assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == tokens[:len(tokens)]


def test_generate_forecast_refuses_a_forecaster_without_language_model(st_tok):
    import dataclasses

    from st_instruct.models.forecaster import build_st_forecaster

    model = build_tiny_forecaster(st_tok, coord_dim=4)
    control = build_st_forecaster(None, dataclasses.replace(model.st_config, hidden_size=32))
    batch = STDataCollator(st_tok)([rationale_sample(st_tok, 0, 2, "Reason.")])
    with pytest.raises(ValueError, match="no-LLM control"):
        generate_forecast(control, st_tok, batch)
