import copy
import math

import pytest
import torch
from tiny import build_tiny_backbone

from st_instruct.models.mrffn import (
    MemoryBank,
    MemoryFFN,
    init_memory_from_patterns,
    is_memory_parameter,
    kmeans,
    load_memory_state_dict,
    memory_modules,
    memory_state_dict,
    plain_mlps,
    recorded_inputs,
    wrap_mlps,
)
from st_instruct.models.patching import feed_forward_projection_names

ARCHS = ["llama", "gpt2"]
MLP_TARGETS = {"llama": ["gate_proj", "up_proj", "down_proj"], "gpt2": ["c_fc", "mlp.base.c_proj"]}
PLAIN_MLP_TARGETS = {"llama": MLP_TARGETS["llama"], "gpt2": ["c_fc", "mlp.c_proj"]}


def _ids(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 800, (batch, length), generator=torch.Generator().manual_seed(seed))


def _run(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True)


def _assert_same_outputs(a, b, atol=1e-5):
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=0)
    assert len(a.hidden_states) == len(b.hidden_states)
    for left, right in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(left, right, atol=atol, rtol=0)


def _pair(arch):
    plain = build_tiny_backbone(arch)
    wrapped = copy.deepcopy(plain)
    return plain, wrapped


# ---- equivalence at gate 0 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("top_k", [None, 2])
def test_gate_zero_equals_plain_backbone(arch, top_k):
    plain, wrapped = _pair(arch)
    wrappers = wrap_mlps(wrapped, [0, -1], slots=8, key_dim=16, top_k=top_k)
    assert [type(w) for w in wrappers] == [MemoryFFN, MemoryFFN]
    ids = _ids()
    _assert_same_outputs(_run(wrapped, ids), _run(plain, ids))
    # the memory is live (not skipped): it does change the output once the gate opens
    with torch.no_grad():
        wrappers[0].st_memory.gate.fill_(1.0)
    assert not torch.allclose(_run(wrapped, ids).logits, _run(plain, ids).logits, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_init_from_patterns_keeps_output_and_gives_each_centroid_its_slot(arch):
    plain, wrapped = _pair(arch)
    (wrapper,) = wrap_mlps(wrapped, [-1], slots=4, key_dim=16, top_k=1)
    hidden = wrapper.st_memory.hidden_size
    centres = torch.randn(4, hidden, generator=torch.Generator().manual_seed(1)) * 5
    patterns = centres.repeat_interleave(25, 0) + 0.1 * torch.randn(100, hidden)
    centroids = init_memory_from_patterns(wrapper, patterns)
    bank = wrapper.st_memory
    assert bank.gate.item() == 0.0
    torch.testing.assert_close(bank.values.data, centroids)
    torch.testing.assert_close(bank.keys.data, centroids @ bank.query.data.T)
    # each centroid retrieves its own slot, and so does every pattern of its cluster
    assert torch.equal(bank.weights(centroids).argmax(-1), torch.arange(4))
    torch.testing.assert_close(bank.retrieve(centroids), centroids)
    own = torch.cdist(patterns, centroids).argmin(-1)
    assert torch.equal(bank.weights(patterns).argmax(-1), own)
    ids = _ids(1)
    _assert_same_outputs(_run(wrapped, ids), _run(plain, ids))


# ---- retrieval math against a hand computation -------------------------------------------------------------------

def _hand_memory(top_k):
    bank = MemoryBank(hidden_size=4, slots=3, key_dim=4, top_k=top_k)
    with torch.no_grad():
        bank.query.copy_(torch.eye(4))
        bank.keys.copy_(10 * torch.eye(4)[:3])  # orthogonal directions, scaled large
        bank.values.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]]))
        bank.reset_slot_bias()  # -50 for every slot: equal norms, so it cannot change the ranking
        bank.gate.fill_(1.0)
    return bank


def test_top1_returns_the_nearest_keys_value_exactly():
    bank = _hand_memory(top_k=1)
    for slot in range(3):
        query = 10 * torch.eye(4)[slot] + torch.tensor([0.3, -0.2, 0.1, 0.4])
        assert torch.equal(bank(query), bank.values.data[slot])


def _hand_weights(query, keys, bias, key_dim, top_k):
    scores = [(sum(q * k for q, k in zip(query, key, strict=True)) + b) / math.sqrt(key_dim)
              for key, b in zip(keys, bias, strict=True)]
    kept = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k or len(scores)]
    total = sum(math.exp(scores[i]) for i in kept)
    return [math.exp(scores[i]) / total if i in kept else 0.0 for i in range(len(scores))]


@pytest.mark.parametrize("top_k", [2, None])
def test_top2_and_soft_weights_follow_the_softmax(top_k):
    bank = _hand_memory(top_k)
    query = torch.tensor([0.5, 0.3, -0.1, 0.7])  # small scores: every weight matters
    weights = _hand_weights(query.tolist(), bank.keys.tolist(), bank.slot_bias.tolist(), 4, top_k)
    assert (weights[2] == 0.0) == (top_k == 2)
    expected = sum(w * v for w, v in zip(weights, bank.values.data, strict=True))
    torch.testing.assert_close(bank.weights(query), torch.tensor(weights), atol=1e-6, rtol=0)
    torch.testing.assert_close(bank(query), expected, atol=1e-6, rtol=0)


def test_slot_bias_makes_retrieval_pick_the_nearest_not_the_longest_key():
    bank = MemoryBank(hidden_size=2, slots=2, key_dim=2, top_k=1)
    with torch.no_grad():
        bank.query.copy_(torch.eye(2))
        bank.keys.copy_(torch.tensor([[1.0, 0.0], [10.0, 0.0]]))
        bank.reset_slot_bias()
    assert bank.weights(torch.tensor([1.2, 0.0])).argmax().item() == 0  # q·k alone would pick slot 1


# ---- PEFT ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_the_same_mlp_projections_and_stays_equal(arch):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    plain, wrapped = _pair(arch)
    wrap_mlps(wrapped, [0, 1], slots=8, key_dim=16, top_k=2)
    assert not any("st_memory" in name for name in feed_forward_projection_names(wrapped))
    if arch == "llama":
        assert feed_forward_projection_names(wrapped) == ["mlp.base.gate_proj", "mlp.base.up_proj",
                                                          "mlp.base.down_proj"]
    lora_plain = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=PLAIN_MLP_TARGETS[arch]))
    lora_wrapped = get_peft_model(wrapped, LoraConfig(r=4, lora_alpha=8, target_modules=MLP_TARGETS[arch]))
    count = [sum(isinstance(m, LoraLayer) for m in model.modules()) for model in (lora_plain, lora_wrapped)]
    assert count[0] == count[1] == 2 * len(MLP_TARGETS[arch])
    assert len(memory_modules(lora_wrapped)) == 2
    assert all(is_memory_parameter(name) for name, _ in lora_wrapped.named_parameters() if "st_memory" in name)
    assert not any("lora" in name for name, _ in lora_wrapped.named_parameters() if is_memory_parameter(name))
    ids = _ids(2)
    _assert_same_outputs(_run(lora_wrapped, ids), _run(lora_plain, ids))


# ---- gradients ---------------------------------------------------------------------------------------------------

def test_gate_gets_a_gradient_then_the_memory_trains():
    backbone = build_tiny_backbone("llama")
    (wrapper,) = wrap_mlps(backbone, [-1], slots=8, key_dim=16, top_k=2)
    bank = wrapper.st_memory
    ids = _ids(3)

    def step():
        backbone.zero_grad()
        backbone(input_ids=ids, labels=ids).loss.backward()

    step()
    assert bank.gate.grad is not None and bank.gate.grad.abs().item() > 0
    for parameter in (bank.query, bank.keys, bank.values, bank.slot_bias):
        assert parameter.grad is None or not parameter.grad.any()  # closed gate: nothing flows past it yet
    torch.optim.SGD(backbone.parameters(), lr=1.0).step()
    assert bank.gate.item() != 0.0
    step()
    for parameter in (bank.gate, bank.query, bank.keys, bank.values, bank.slot_bias):
        assert parameter.grad is not None and parameter.grad.abs().sum().item() > 0


# ---- causality ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top_k", [None, 1])
def test_a_future_token_cannot_change_an_earlier_output(arch, top_k):
    backbone = build_tiny_backbone(arch)
    for wrapper in wrap_mlps(backbone, [0, 1], slots=8, key_dim=16, top_k=top_k):
        with torch.no_grad():
            wrapper.st_memory.gate.fill_(1.0)
            wrapper.st_memory.values.normal_()
    ids = _ids(4, batch=1)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 800
    before, after = _run(backbone, ids), _run(backbone, changed)
    torch.testing.assert_close(after.logits[:, :-1], before.logits[:, :-1], atol=1e-6, rtol=0)
    assert not torch.allclose(after.logits[:, -1], before.logits[:, -1])


def test_retrieval_is_per_token():
    bank = MemoryBank(hidden_size=8, slots=5, key_dim=4, top_k=2)
    with torch.no_grad():
        bank.gate.fill_(0.7)
    x = torch.randn(3, 6, 8)
    rows = torch.stack([bank(row) for row in x.reshape(-1, 8)]).reshape(3, 6, 8)
    torch.testing.assert_close(bank(x), rows)


# ---- k-means -----------------------------------------------------------------------------------------------------

def test_kmeans_recovers_separated_centres_and_is_deterministic():
    generator = torch.Generator().manual_seed(5)
    centres = torch.tensor([[0.0, 0, 0], [20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]])
    x = centres.repeat(50, 1) + torch.randn(200, 3, generator=generator)
    found = kmeans(x, 4, seed=3)
    assert found.shape == (4, 3)
    error = torch.cdist(centres, found)
    assert torch.equal(error.argmin(1).sort().values, torch.arange(4))  # one centroid per centre
    assert error.min(1).values.max().item() < 0.5
    assert torch.equal(kmeans(x, 4, seed=3), found)
    assert torch.equal(kmeans(x.double(), 1), x.double().mean(0, keepdim=True))


def test_kmeans_errors_and_repeated_rows():
    with pytest.raises(ValueError, match="cannot find 5 centroids in 3 rows"):
        kmeans(torch.randn(3, 2), 5)
    with pytest.raises(ValueError, match=r"2-D tensor \[n, d\]"):
        kmeans(torch.randn(3), 1)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0], [float("nan")]]), 1)
    found = kmeans(torch.ones(6, 2), 3)  # fewer distinct rows than k: repeated centroids, no crash
    assert torch.equal(found, torch.ones(3, 2))


# ---- wrapping: idempotence, errors, save / load ------------------------------------------------------------------

def test_wrap_is_idempotent():
    backbone = build_tiny_backbone("gpt2")
    first = wrap_mlps(backbone, [-1], slots=4, key_dim=8, top_k=None)
    again = wrap_mlps(backbone, [1], slots=4, key_dim=8, top_k=None)
    assert again[0] is first[0]
    assert not isinstance(first[0].base, MemoryFFN)
    assert sum(isinstance(m, MemoryFFN) for m in backbone.modules()) == 1
    both = wrap_mlps(backbone, [0, 1], slots=4, key_dim=8, top_k=None)
    assert both[1] is first[0] and memory_modules(backbone) == both


def test_wrap_errors():
    backbone = build_tiny_backbone("llama")
    with pytest.raises(IndexError, match="the backbone has 2 decoder layers"):
        wrap_mlps(backbone, [2], slots=4, key_dim=8, top_k=1)
    with pytest.raises(IndexError, match="out of range"):
        wrap_mlps(backbone, [-3], slots=4, key_dim=8, top_k=1)
    with pytest.raises(ValueError, match="same decoder layer twice"):
        wrap_mlps(backbone, [1, -1], slots=4, key_dim=8, top_k=1)
    with pytest.raises(ValueError, match="at least one"):
        wrap_mlps(backbone, [], slots=4, key_dim=8, top_k=1)
    with pytest.raises(ValueError, match="top_k must be between 1 and slots=4"):
        wrap_mlps(backbone, [0], slots=4, key_dim=8, top_k=5)
    assert memory_modules(backbone) == []  # nothing half-done
    wrap_mlps(backbone, [0], slots=4, key_dim=8, top_k=1)
    with pytest.raises(ValueError, match="already carries a memory with slots=4"):
        wrap_mlps(backbone, [0], slots=6, key_dim=8, top_k=1)
    with pytest.raises(ValueError, match=r"patterns must be \[n, 32\]"):
        init_memory_from_patterns(memory_modules(backbone)[0], torch.randn(10, 16))


def test_memory_state_round_trip_and_plain_checkpoint_layout():
    from peft import LoraConfig, get_peft_model

    trained = build_tiny_backbone("llama")
    wrap_mlps(trained, [-1], slots=4, key_dim=8, top_k=2)
    with torch.no_grad():
        memory_modules(trained)[0].st_memory.gate.fill_(0.5)
    peft_model = get_peft_model(trained, LoraConfig(r=2, target_modules=["q_proj"]))
    state = memory_state_dict(peft_model)  # same keys with or without the PEFT wrapper
    assert sorted(state) == [f"layers.1.{k}" for k in sorted(["query", "keys", "values", "slot_bias", "gate"])]

    fresh = build_tiny_backbone("llama", seed=7)
    with pytest.raises(ValueError, match=r"decoder layers \[1\], the backbone's on \[\]"):
        load_memory_state_dict(fresh, state)
    wrap_mlps(fresh, [-1], slots=4, key_dim=8, top_k=2)
    load_memory_state_dict(fresh, state)
    assert memory_modules(fresh)[0].st_memory.gate.item() == 0.5

    plain_keys = set(build_tiny_backbone("llama").state_dict())
    with plain_mlps(fresh):
        assert set(fresh.state_dict()) == plain_keys and memory_modules(fresh) == []
    assert len(memory_modules(fresh)) == 1


def test_recorded_inputs_are_what_the_mlp_reads():
    backbone = build_tiny_backbone("llama")
    (wrapper,) = wrap_mlps(backbone, [0], slots=4, key_dim=8, top_k=1)
    with recorded_inputs(wrapper) as inputs:
        _run(backbone, _ids(batch=2, length=5))
    _run(backbone, _ids())
    assert len(inputs) == 1 and inputs[0].shape == (2, 5, 32) and not inputs[0].requires_grad


def test_memory_follows_the_backbone_dtype_and_is_found_by_name():
    backbone = build_tiny_backbone("qwen2").to(torch.bfloat16)
    (wrapper,) = wrap_mlps(backbone, [0], slots=4, key_dim=8, top_k=2)
    assert {p.dtype for p in wrapper.st_memory.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        wrapper.st_memory.gate.fill_(1.0)
    assert _run(backbone, _ids()).logits.dtype == torch.bfloat16
    names = [name for name, _ in backbone.named_parameters() if is_memory_parameter(name)]
    assert names == [f"model.layers.0.mlp.st_memory.{k}" for k in ("query", "keys", "values", "slot_bias", "gate")]
    assert not is_memory_parameter("model.layers.0.mlp.base.gate_proj.weight")
    assert not is_memory_parameter("st_memory_like.weight")
