"""PromptST's soft prompts (st_instruct.models.soft_prompts): virtual tokens prepended to the LLM's input, read as if
they were not there (the head at <st_pre>, the LM loss, logits_to_keep), deep prompts overwriting the virtual
positions at every layer, the no-LLM control's one vector, and nothing changed with zero tokens."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from tiny import build_tiny_forecaster, build_tiny_vlm, tiny_st_config, two_sample_batch

from st_instruct.configs import RecipeError, SoftPromptConfig
from st_instruct.model_dir import ST_CONFIG_FILE
from st_instruct.models.forecaster import STForecasterConfig, apply_soft_prompt, build_st_forecaster
from st_instruct.models.patching import decoder_layers, input_embeddings
from st_instruct.models.soft_prompts import NodeSoftPrompt, SoftPrompt
from st_instruct.samples.tokenize import IGNORE_INDEX
from st_instruct.training.trainer import lm_loss_positions

TOKENS = 3


@pytest.fixture(scope="module")
def batch(st_tok):
    """Two samples of 2 and 3 nodes, collated (real token positions, right padding)."""
    return two_sample_batch(st_tok)


def manual_pass(model, batch):
    """``(last hidden states [B, S, H] of the real tokens, logits [B, S, V])`` computed here by hand: the word
    embeddings with the projected node tokens at <st_his>, the prompt in front, the backbone on inputs_embeds, the
    virtual positions cut off."""
    embeddings = input_embeddings(model.backbone)(batch["input_ids"])
    nodes = model.st_projector(model.st_encoder(batch["history"], batch["history_mask"], batch["history_tod"],
                                                batch["history_dow"], batch["coords"], batch["node_mask"],
                                                batch["steps_per_day"]))
    b, n = batch["node_mask"].nonzero(as_tuple=True)
    embeddings = embeddings.index_put((b, batch["his_positions"][b, n]), nodes[b, n])
    prompt = model.st_soft_prompt.prompt[None].expand(len(embeddings), -1, -1)
    mask = torch.cat([torch.ones(len(embeddings), TOKENS, dtype=batch["attention_mask"].dtype),
                      batch["attention_mask"]], dim=1)
    out = model.backbone(inputs_embeds=torch.cat([prompt, embeddings], dim=1), attention_mask=mask,
                         output_hidden_states=True)
    return out.hidden_states[-1][:, TOKENS:], out.logits[:, TOKENS:]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_head_reads_the_st_pre_states_after_the_prompt(arch, st_tok, batch):
    model = build_tiny_forecaster(st_tok, arch, soft_prompt_tokens=TOKENS).eval()
    assert isinstance(model.st_soft_prompt, SoftPrompt) and model.st_soft_prompt.prompt.shape == (TOKENS, 32)
    with torch.no_grad():
        out = model(**batch)
        hidden, logits = manual_pass(model, batch)
        expected = model.regression_head.from_hidden_states(hidden, batch["his_positions"], batch["pre_positions"],
                                                            batch["node_mask"])
    torch.testing.assert_close(out.predictions, expected)
    torch.testing.assert_close(out.logits, logits)  # the virtual positions are cut off the logits
    assert out.logits.shape[:2] == batch["input_ids"].shape
    # the LM loss is the one of the real sequence: no label on the prompt, none on the first real token
    labels = batch["labels"]
    manual = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual)
    # logits kept at positions (what STSFTTrainer asks for) are those positions' of the real sequence
    positions = lm_loss_positions(labels)
    with torch.no_grad():
        kept = model(**dict(batch, labels=None), logits_to_keep=positions).logits
    torch.testing.assert_close(kept, logits[:, positions])


def test_predictions_are_finite_and_follow_the_prompt(st_tok, batch):
    model = build_tiny_forecaster(st_tok, soft_prompt_tokens=TOKENS)
    before = model.predict(batch)
    assert torch.isfinite(before).all()
    with torch.no_grad():
        model.st_soft_prompt.prompt.mul_(-3.0)
    after = model.predict(batch)
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


def test_zero_soft_prompt_tokens_change_nothing(st_tok, batch):
    plain = build_tiny_forecaster(st_tok).eval()
    zero = build_tiny_forecaster(st_tok, soft_prompt_tokens=0).eval()
    assert zero.st_soft_prompt is None and "st_soft_prompt" not in zero.st_modules()
    with torch.no_grad():
        a, b = plain(**batch), zero(**batch)
    assert torch.equal(a.predictions, b.predictions) and torch.equal(a.logits, b.logits)
    assert torch.equal(a.loss, b.loss)


def test_deep_prompts_overwrite_the_virtual_positions_at_every_layer(st_tok, batch):
    model = build_tiny_forecaster(st_tok, soft_prompt_tokens=TOKENS, soft_prompt_deep=True).eval()
    prompt = model.st_soft_prompt
    layers = decoder_layers(model.backbone)
    assert prompt.deep.shape == (len(layers) - 1, TOKENS, 32)
    read, written = {}, {}  # what each layer's attention norm reads (after the pre-hooks) / what each layer returns
    for index, layer in enumerate(layers):
        layer.input_layernorm.register_forward_pre_hook(lambda m, args, i=index: read.__setitem__(i, args[0]))
        layer.register_forward_hook(lambda m, args, out, i=index: written.__setitem__(
            i, out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(**batch)
    torch.testing.assert_close(read[0][:, :TOKENS], prompt.prompt[None].expand(2, -1, -1))
    for index in range(1, len(layers)):
        torch.testing.assert_close(read[index][:, :TOKENS], prompt.deep[index - 1][None].expand(2, -1, -1))
        assert not torch.allclose(written[index - 1][:, :TOKENS], read[index][:, :TOKENS])  # overwritten
        torch.testing.assert_close(read[index][:, TOKENS:], written[index - 1][:, TOKENS:])  # the rest untouched
    assert all(not layer._forward_pre_hooks for layer in layers)  # removed after the pass
    with torch.no_grad():
        shallow = model.predict(batch)
        prompt.deep.add_(1.0)
        assert not torch.allclose(shallow, model.predict(batch))


def test_the_no_llm_control_adds_one_vector_to_every_node(st_tok, batch):
    config = tiny_st_config(st_tok, hidden_size=32, soft_prompt_tokens=TOKENS)
    torch.manual_seed(0)
    model = build_st_forecaster(None, config)
    assert isinstance(model.st_soft_prompt, NodeSoftPrompt) and model.st_soft_prompt.vector.shape == (32,)
    plain = build_st_forecaster(None, dataclasses.replace(config, soft_prompt=SoftPromptConfig()))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("st_soft_prompt.")})
    assert torch.equal(model.predict(batch), plain.predict(batch))  # the vector starts at zero
    with torch.no_grad():
        model.st_soft_prompt.vector.fill_(0.5)
    features = model.st_projector(model.node_tokens(batch["history"], batch["history_mask"], batch["history_tod"],
                                                    batch["history_dow"], batch["coords"], batch["node_mask"],
                                                    batch["steps_per_day"], {})[1]) + 0.5
    expected = model.regression_head(features, features) * batch["node_mask"][:, None, :, None]
    torch.testing.assert_close(model(**batch).predictions, expected)
    with pytest.raises(ValueError, match="soft_prompt_deep .* no backbone"):
        build_st_forecaster(None, tiny_st_config(st_tok, hidden_size=32, soft_prompt_tokens=TOKENS,
                                                 soft_prompt_deep=True))


def test_vision_language_backbones_and_bad_settings_are_refused(tiny_tokenizer):
    from st_instruct.samples.st_tokens import add_st_tokens

    add_st_tokens(tiny_tokenizer)
    vlm, _ = build_tiny_vlm("llava", tiny_tokenizer)
    with pytest.raises(ValueError, match="^soft prompts are prepended to a text backbone's input embeddings; a "
                                         "vision-language backbone .* set soft_prompt_tokens 0$"):
        build_st_forecaster(vlm, tiny_st_config(tiny_tokenizer, soft_prompt_tokens=2))
    with pytest.raises(RecipeError, match="soft_prompt_deep: true .* soft_prompt_tokens is 0"):
        SoftPromptConfig(soft_prompt_deep=True)
    with pytest.raises(ValueError, match="soft_prompt_tokens must be a non-negative integer"):
        SoftPromptConfig(soft_prompt_tokens=-1)


def test_a_trained_model_gets_a_fresh_prompt_and_the_config_records_it(st_tok, batch):
    model = build_tiny_forecaster(st_tok).eval()
    before = model.predict(batch)
    apply_soft_prompt(model, SoftPromptConfig(soft_prompt_tokens=2))
    assert model.st_config.soft_prompt.soft_prompt_tokens == 2 and "st_soft_prompt" in model.st_modules()
    assert not torch.allclose(before, model.predict(batch))
    with pytest.raises(ValueError, match="has a soft prompt already"):
        apply_soft_prompt(model, SoftPromptConfig(soft_prompt_tokens=2))


def test_a_config_saved_before_soft_prompts_loads_with_them_off(st_tok, tmp_path):
    tiny_st_config(st_tok).save(tmp_path)
    saved = json.loads((tmp_path / ST_CONFIG_FILE).read_text())
    del saved["soft_prompt"]
    (tmp_path / ST_CONFIG_FILE).write_text(json.dumps(saved))
    assert STForecasterConfig.load(tmp_path).soft_prompt == SoftPromptConfig()
    tiny_st_config(st_tok, soft_prompt_tokens=4, soft_prompt_deep=True).save(tmp_path)
    assert STForecasterConfig.load(tmp_path).soft_prompt == SoftPromptConfig(4, True)
