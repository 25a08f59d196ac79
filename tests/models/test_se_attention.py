"""SE-Attention (st_instruct.models.se_attention): equivalence, causality, rotation properties, KV cache, padding."""

import pytest
import torch
from tiny import build_tiny_backbone

from st_instruct.models import se_attention
from st_instruct.models.patching import UnsupportedArchitectureError
from st_instruct.models.se_attention import (
    ATTN_IMPLEMENTATION,
    SpatialRotation,
    apply_se_attention,
    build_spatial_rotation,
    disable_se_attention,
    normalize_coords,
    spatial_context,
    token_coords,
)

ARCHS = ["llama", "qwen2", "gpt2"]  # Llama (SmolLM2) layout, Qwen2 with GQA (4 query / 2 key-value heads), GPT-2
K = 3
ST_POSITIONS = [2, 3, 5, 7]


def setup(arch, num_pairs=2):
    """A tiny eval-mode backbone and a rotation for it with unequal per-head scales (GQA must still be relative)."""
    model = build_tiny_backbone(arch).eval()
    rotation = build_spatial_rotation(model, coord_dim=K, num_pairs=num_pairs)
    with torch.no_grad():
        rotation.head_scale.copy_(torch.linspace(0.5, 2.0, rotation.num_kv_heads))
    return model, rotation


def inputs(batch=2, seq=10, seed=0):
    """Token ids [B, S], coordinates [B, S, K] (O(1) offsets) and an ST mask [B, S] at ST_POSITIONS."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 800, (batch, seq), generator=gen)
    coords = 2 * torch.randn(batch, seq, K, generator=gen)
    st_mask = torch.zeros(batch, seq, dtype=torch.bool)
    st_mask[:, ST_POSITIONS] = True
    return ids, coords, st_mask


def run(model, ids, **kwargs):
    """(logits, hidden states of every layer) of one forward pass."""
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, **kwargs)
    return out.logits, out.hidden_states


def assert_same(a, b, atol=1e-5):
    (logits_a, hidden_a), (logits_b, hidden_b) = a, b
    torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=0)
    for layer_a, layer_b in zip(hidden_a, hidden_b, strict=True):
        torch.testing.assert_close(layer_a, layer_b, atol=atol, rtol=0)


@pytest.fixture
def captured(monkeypatch):
    """(query, key) after the spatial rotation, as every attention call hands them to sdpa, in call order."""
    seen = []
    sdpa = se_attention.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.detach(), key.detach()))
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(se_attention, "sdpa_attention_forward", spy)
    return seen


def scores(query, key):
    """q . k [B, H, q_len, kv_len] with each key/value head repeated for its query heads."""
    return query @ key.repeat_interleave(query.shape[1] // key.shape[1], dim=1).transpose(-1, -2)


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_rotation_reproduces_the_plain_backbone(arch):
    model, rotation = setup(arch)
    ids, coords, st_mask = inputs()
    plain = run(model, ids)
    assert model.config._attn_implementation == "sdpa"
    assert apply_se_attention(model, rotation) == 2
    assert_same(run(model, ids), plain)  # no context open: plain sdpa
    with spatial_context(model, rotation, coords, torch.zeros_like(st_mask)):
        assert_same(run(model, ids), plain)
    with torch.no_grad():
        rotation.weight.zero_()
    with spatial_context(model, rotation, coords, st_mask):
        assert_same(run(model, ids), plain)
    disable_se_attention(model)
    assert model.config._attn_implementation == "sdpa"
    assert_same(run(model, ids), plain)


def test_enable_is_idempotent_and_disable_restores_the_previous_implementation():
    model, rotation = setup("llama")
    model.set_attn_implementation("eager")
    assert apply_se_attention(model, rotation) == apply_se_attention(model, rotation) == 2
    assert all(layer.self_attn.config._attn_implementation == ATTN_IMPLEMENTATION for layer in model.model.layers)
    disable_se_attention(model)
    disable_se_attention(model)
    assert model.config._attn_implementation == "eager"
    assert rotation.weight not in set(model.parameters())  # the forecaster owns the rotation, not the backbone


@pytest.mark.parametrize("arch", ARCHS)
def test_spatial_angles_change_the_output_from_the_first_st_token_on(arch):
    model, rotation = setup(arch)
    ids, coords, st_mask = inputs()
    plain = run(model, ids)
    apply_se_attention(model, rotation)
    with spatial_context(model, rotation, coords, st_mask):
        logits, hidden = run(model, ids)
    first = ST_POSITIONS[0]
    torch.testing.assert_close(logits[:, :first], plain[0][:, :first], atol=0, rtol=0)  # text before: identity
    # from the second ST token on, queries and keys see a non-zero offset
    assert (logits[:, ST_POSITIONS[1]:] - plain[0][:, ST_POSITIONS[1]:]).abs().amax(-1).min() > 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_a_future_token_cannot_change_a_past_output(arch):
    model, rotation = setup(arch)
    ids, coords, st_mask = inputs()
    apply_se_attention(model, rotation)
    with spatial_context(model, rotation, coords, st_mask):
        before = run(model, ids)
    changed_ids, changed_coords, changed_mask = ids.clone(), coords.clone(), st_mask.clone()
    changed_ids[:, -1] = (ids[:, -1] + 7) % 800
    changed_coords[:, -1] += 5.0
    changed_mask[:, -1] = True
    with spatial_context(model, rotation, changed_coords, changed_mask):
        after = run(model, changed_ids)
    for layer_before, layer_after in zip(before[1], after[1], strict=True):
        torch.testing.assert_close(layer_after[:, :-1], layer_before[:, :-1], atol=1e-6, rtol=0)
    assert (after[0][:, -1] - before[0][:, -1]).abs().max() > 1e-4


def test_rotation_preserves_query_and_key_norms():
    rotation = SpatialRotation(K, head_dim=16, num_heads=6, num_kv_heads=2, num_pairs=5)
    _, coords, st_mask = inputs(seq=10)
    cos, sin = rotation.cos_sin(coords, st_mask)
    assert cos.shape == (2, 2, 10, 16)
    call = se_attention._SpatialCall(cos, sin, past_length=0)
    query, key = torch.randn(2, 6, 10, 16), torch.randn(2, 2, 10, 16)
    rotated_query, rotated_key = call.rotate(query, key)
    torch.testing.assert_close(rotated_query.norm(dim=-1), query.norm(dim=-1))
    torch.testing.assert_close(rotated_key.norm(dim=-1), key.norm(dim=-1))
    # only the chosen (lowest-frequency) pairs move: dims 3..7 and 11..15 of a 16-dim head
    moved = (rotated_key - key).abs().amax((0, 1, 2)) > 0
    assert moved.tolist() == [False] * 3 + [True] * 5 + [False] * 3 + [True] * 5


@pytest.mark.parametrize("arch", ARCHS)
def test_st_scores_depend_on_the_coordinate_offset_only(arch, captured):
    """Layer 0 sees the same q / k before rotation in every run, so its scores isolate the spatial rotation."""
    model, rotation = setup(arch)
    ids, coords, st_mask = inputs()
    apply_se_attention(model, rotation)

    def layer0_scores(token_coords):
        captured.clear()
        with spatial_context(model, rotation, token_coords, st_mask):
            run(model, ids)
        assert len(captured) == 2  # one call per layer
        return scores(*captured[0])

    base = layer0_scores(coords)
    shifted = layer0_scores(coords + torch.tensor([3.0, -1.5, 0.7]))
    st, text = torch.tensor(ST_POSITIONS), torch.tensor([i for i in range(10) if i not in ST_POSITIONS])
    torch.testing.assert_close(shifted[..., st[:, None], st], base[..., st[:, None], st], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(shifted[..., text[:, None], text], base[..., text[:, None], text], atol=0, rtol=0)
    # text <-> ST scores see the ST token's own angle (absolute), so a shift moves them
    assert (shifted[..., text[:, None], st] - base[..., text[:, None], st]).abs().max() > 1e-5

    moved = coords.clone()
    moved[:, ST_POSITIONS[1]] += torch.tensor([1.0, 0.5, -0.8])  # a new offset between that node and the others
    other = layer0_scores(moved)
    pair = (slice(None), slice(None), ST_POSITIONS[2], ST_POSITIONS[1])
    assert (other[pair] - base[pair]).abs().min() > 1e-6
    rest = torch.tensor([p for p in ST_POSITIONS if p != ST_POSITIONS[1]])
    torch.testing.assert_close(other[..., rest[:, None], rest], base[..., rest[:, None], rest], atol=1e-6, rtol=1e-4)


def test_spatial_and_temporal_offsets_compose():
    """RoPE then the spatial rotation: a score depends on (p_a - p_b, c_a - c_b) only."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, rotation = setup("llama", num_pairs=3)
    rope = model.model.rotary_emb
    query, key = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 1, 8)

    def score(p_a, p_b, c_a, c_b):
        cos, sin = rope(query, torch.tensor([[p_a, p_b]]))
        q, _ = apply_rotary_pos_emb(query, query, cos[:, :1], sin[:, :1])
        _, k = apply_rotary_pos_emb(key, key, cos[:, 1:], sin[:, 1:])
        coords = torch.stack([c_a, c_b])[None]
        spatial = se_attention._SpatialCall(*rotation.cos_sin(coords, torch.ones(1, 2, dtype=torch.bool)), 0)
        q, k = spatial.rotate(q, torch.cat([k, k], dim=2))  # query at position 0 (c_a), keys at 0 and 1 (c_b)
        return scores(q, k[:, :, 1:]).flatten()

    c_a, c_b, shift = torch.randn(K), torch.randn(K), torch.randn(K)
    with torch.no_grad():
        base = score(9, 4, c_a, c_b)
        torch.testing.assert_close(score(29, 24, c_a + shift, c_b + shift), base)
        assert (score(10, 4, c_a, c_b) - base).abs().max() > 1e-4
        assert (score(9, 4, c_a + shift, c_b) - base).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_full_forward_passes_with_left_padding(arch):
    """The coordinates cover the 9-token prompt and the first 3 generated positions (two of them ST tokens), so
    cached decoding meets rotated queries at absolute positions past the prompt and, for the last two tokens,
    positions past what the context was given (identity)."""
    model, rotation = setup(arch)
    model.generation_config.eos_token_id = None  # always 5 new tokens
    prompt, covered, new_tokens = 9, 12, 5
    ids, coords, st_mask = inputs(seq=covered)
    ids = ids[:, :prompt].clone()
    st_mask[:, [prompt, prompt + 2]] = True
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 left-padded by two
    ids[0, :2] = 0
    st_mask[0, :2] = False
    apply_se_attention(model, rotation)
    with spatial_context(model, rotation, coords, st_mask), torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        sequence, sequence_mask = ids, mask
        for step_logits in out.logits:
            positions = (sequence_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(sequence, attention_mask=sequence_mask, position_ids=positions).logits[:, -1]
            torch.testing.assert_close(step_logits, logits, atol=1e-5, rtol=1e-5)
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
            sequence_mask = torch.cat([sequence_mask, torch.ones_like(sequence_mask[:, :1])], dim=1)
    assert len(out.logits) == new_tokens and torch.equal(out.sequences, sequence)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_and_right_padding_leave_real_tokens_unchanged(arch):
    model, rotation = setup(arch)
    ids, coords, st_mask = inputs(batch=1, seq=8)
    apply_se_attention(model, rotation)
    with spatial_context(model, rotation, coords, st_mask):
        alone = run(model, ids)[1][-1]
    pad = 3

    def padded(side):
        def grow(x, fill):
            extra = torch.full((1, pad, *x.shape[2:]), fill, dtype=x.dtype)
            return torch.cat([extra, x] if side == "left" else [x, extra], dim=1)

        other = torch.randint(3, 800, (1, ids.shape[1] + pad))  # a full-length row beside the padded one
        batch_ids = torch.cat([grow(ids, 0), other])
        mask = torch.cat([grow(torch.ones_like(ids), 0), torch.ones_like(other)])
        batch_coords = torch.cat([grow(coords, 9.0), 2 * torch.randn(1, other.shape[1], K)])
        batch_st = torch.cat([grow(st_mask, False), grow(st_mask, False)])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with spatial_context(model, rotation, batch_coords, batch_st):
            hidden = run(model, batch_ids, attention_mask=mask, position_ids=positions)[1][-1]
        return hidden[0, pad:] if side == "left" else hidden[0, :-pad]

    torch.testing.assert_close(padded("left"), alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded("right"), alone[0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_rotation_also_under_gradient_checkpointing():
    """The checkpointed layers are recomputed in the backward pass, after the context closed."""
    model, rotation = setup("llama")
    model.train()
    ids, coords, st_mask = inputs()
    apply_se_attention(model, rotation)

    def gradients():
        model.zero_grad()
        rotation.zero_grad()
        with spatial_context(model, rotation, coords, st_mask):
            loss = model(ids).logits.pow(2).mean()
        loss.backward()
        return rotation.weight.grad.clone(), rotation.head_scale.grad.clone()

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.model.layers[0].gradient_checkpointing
    checkpointed = gradients()
    for grad, grad_checkpointed in zip(plain, checkpointed, strict=True):
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad_checkpointed, grad, atol=1e-7, rtol=1e-4)


def test_works_under_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model, rotation = setup("llama")
    ids, coords, st_mask = inputs()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    plain = run(peft_model, ids)
    assert apply_se_attention(peft_model, rotation) == 2
    with spatial_context(peft_model, rotation, coords, st_mask):
        logits, _ = run(peft_model, ids)
    assert (logits - plain[0]).abs().max() > 1e-5
    assert all(param is not rotation.weight for param in peft_model.parameters())


def test_clear_errors():
    model, rotation = setup("llama")
    ids, coords, st_mask = inputs()
    with pytest.raises(RuntimeError, match="apply_se_attention"):
        with spatial_context(model, rotation, coords, st_mask):
            pass
    apply_se_attention(model, rotation)
    with pytest.raises(ValueError, match=r"K=3.*\(2, 10, 5\)"):
        with spatial_context(model, rotation, torch.zeros(2, 10, 5), st_mask):
            pass
    with pytest.raises(ValueError, match=r"st_mask must be \[B, S\] = \[2, 10\].*\(2, 9\)"):
        with spatial_context(model, rotation, coords, st_mask[:, :9]):
            pass
    with pytest.raises(ValueError, match=r"num_pairs must be between 1 and head_dim / 2 = 4.*found 5"):
        SpatialRotation(K, head_dim=8, num_heads=4, num_kv_heads=2, num_pairs=5)
    with pytest.raises(ValueError, match="pair_indices"):
        SpatialRotation(K, head_dim=8, num_heads=4, num_kv_heads=2, num_pairs=2, pair_indices=[1, 1])
    with pytest.raises(ValueError, match=r"\(4, 4, 8, False\).*\(4, 2, 8, True\)"):
        apply_se_attention(model, build_spatial_rotation(build_tiny_backbone("gpt2"), K, num_pairs=2))
    with pytest.raises(ValueError, match="batch 2"):
        with spatial_context(model, rotation, coords, st_mask):
            model(ids[:1])
    with spatial_context(model, rotation, coords, st_mask):
        with pytest.raises(RuntimeError, match="do not nest"):
            with spatial_context(model, rotation, coords, st_mask):
                pass


def test_gpt_neo_is_refused_and_left_unchanged():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    model = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                           attention_types=[[["global"], 2]], bos_token_id=0, eos_token_id=0))
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedArchitectureError, match="AttentionInterface"):
        apply_se_attention(model, build_spatial_rotation(model, K, num_pairs=2))
    assert model.config._attn_implementation == before


def test_token_coords_and_normalize_coords():
    coords = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]], [[1.0, 1.0], [5.0, 5.0], [7.0, 7.0]]])
    node_mask = torch.tensor([[True, True, False], [True, True, True]])
    his, pre = torch.tensor([[1, 3, 0], [0, 2, 4]]), torch.tensor([[6, 7, 0], [5, 6, 7]])
    per_token, st_mask = token_coords(coords, [his, pre], node_mask, seq_len=8)
    assert st_mask.tolist() == [[False, True, False, True, False, False, True, True],
                                [True, False, True, False, True, True, True, True]]
    assert per_token[0, 3].tolist() == per_token[0, 7].tolist() == [2.0, 0.0] and per_token[0, 0].abs().sum() == 0
    normalized = normalize_coords(coords, node_mask)
    assert normalized[0].tolist() == [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # padded node -> 0
    torch.testing.assert_close(normalized[1].mean(0), torch.zeros(2))
    torch.testing.assert_close(normalized[1].pow(2).sum(-1).mean(), torch.tensor(1.0))
    torch.testing.assert_close(normalize_coords(coords * 50 + 3, node_mask), normalized)
