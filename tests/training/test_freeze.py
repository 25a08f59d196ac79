"""Each freeze plan trains exactly the parameters it names: the requires_grad set equals a set computed here from
the module structure, and after real optimizer steps exactly those parameters moved, every other one bit-identical."""

import pytest
import torch
from tiny import build_tiny_backbone, build_tiny_forecaster, two_sample_batch

from st_instruct.configs import FreezeConfig
from st_instruct.models.forecaster import build_st_forecaster, regression_mask
from st_instruct.tasks.base import masked_mae_loss
from st_instruct.training.freeze import FREEZE_PLANS, apply_freeze_plan

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),  # inside peft
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),  # peft fixes it for GPT-2
]
ARCHS = ["llama", "qwen2", "gpt2"]
ST_PREFIXES = ("st_encoder.", "st_projector.", "regression_head.")
# written out by hand (not asked of st_instruct.models.patching): what each family's modules are called
LAYERS = {"llama": "model.layers", "qwen2": "model.layers", "gpt2": "transformer.h"}
ATTENTION = {"llama": ("self_attn", ["q_proj", "k_proj", "v_proj", "o_proj"]),
             "qwen2": ("self_attn", ["q_proj", "k_proj", "v_proj", "o_proj"]),
             "gpt2": ("attn", ["c_attn", "c_proj"])}
MLP = {"llama": ["gate_proj", "up_proj", "down_proj"], "qwen2": ["gate_proj", "up_proj", "down_proj"],
       "gpt2": ["c_fc", "c_proj"]}
EMBEDDING = {"llama": "model.embed_tokens", "qwen2": "model.embed_tokens", "gpt2": "transformer.wte"}
NUM_LAYERS = 2  # tests/tiny.py
PEFT_PREFIX = "backbone.base_model.model."


@pytest.fixture(scope="module")
def tok(st_tok):
    return st_tok


@pytest.fixture(scope="module")
def batch(tok):
    """A real collated batch: two samples with 2 and 3 nodes."""
    return two_sample_batch(tok)


def trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def lora_names(arch, modules):
    return {f"{PEFT_PREFIX}{LAYERS[arch]}.{i}.{module}.lora_{ab}.default.weight"
            for i in range(NUM_LAYERS) for module in modules for ab in "AB"}


def expected_trainable(model, arch, plan, last_layers=2, mlp=False, tokens=False):
    """The names ``plan`` must leave trainable, from the module names alone."""
    names = [name for name, _ in model.named_parameters()]
    st = {name for name in names if name.startswith(ST_PREFIXES)}
    peft = tokens or plan in ("lora", "qlora")
    prefix = PEFT_PREFIX if peft else "backbone."
    token_delta = {f"{PEFT_PREFIX}{EMBEDDING[arch]}" + (".token_adapter" if plan in ("lora", "qlora") else "")
                   + ".trainable_tokens_delta.default"} if tokens else set()
    if plan == "full":
        return set(names)
    if plan == "frozen":
        return st | token_delta
    if plan in ("lora", "qlora"):
        attention, projections = ATTENTION[arch]
        modules = [f"{attention}.{p}" for p in projections] + ([f"mlp.{p}" for p in MLP[arch]] if mlp else [])
        return st | lora_names(arch, modules) | token_delta
    assert plan == "pfa"
    attention = ATTENTION[arch][0]
    norm = {name for name in names if name.startswith(prefix) and ("norm" in name or ".ln_" in name)}
    last = {name for name in names for i in range(NUM_LAYERS - last_layers, NUM_LAYERS)
            if name.startswith(f"{prefix}{LAYERS[arch]}.{i}.{attention}.")}
    return st | norm | last | token_delta


def train_steps(model, batch, steps=2):
    """``steps`` AdamW steps (weight decay on) over *all* parameters on regression + LM loss; returns the names of
    the parameters that changed and the losses. Two steps: LoRA's A only gets a gradient once B left zero."""
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        out = model(**batch)
        loss = masked_mae_loss(out.predictions, batch["target"], regression_mask(batch)) + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    return changed, losses


TOKENS = {"train_st_token_embeddings": True}
CASES = [pytest.param("frozen", {}, id="frozen"), pytest.param("lora", {}, id="lora"),
         pytest.param("lora", {"lora_target_modules": ["attention", "mlp"]}, id="lora-attention-mlp"),
         pytest.param("pfa", {"pfa_last_layers": 1}, id="pfa-U1"),
         pytest.param("pfa", {"pfa_last_layers": 0}, id="pfa-U0"), pytest.param("full", {}, id="full"),
         pytest.param("frozen", TOKENS, id="frozen-st-tokens"), pytest.param("lora", TOKENS, id="lora-st-tokens"),
         pytest.param("pfa", {"pfa_last_layers": 1, **TOKENS}, id="pfa-U1-st-tokens")]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("plan", "options"), CASES)
def test_plan_trains_exactly_what_it_names(arch, plan, options, tok, batch):
    model = build_tiny_forecaster(tok, arch)
    report = apply_freeze_plan(model, FreezeConfig(freeze_plan=plan, **options))
    expected = expected_trainable(model, arch, plan, last_layers=options.get("pfa_last_layers", 2),
                                  mlp="lora_target_modules" in options,
                                  tokens=options.get("train_st_token_embeddings", False))
    assert trainable(model) == expected
    assert set(report.trainable_names) == expected and report.plan == plan
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.trainable == sum(report.group_counts.values()) and f"{report.trainable:,}" in report.summary()
    assert all(p.requires_grad for name in ("st_encoder", "st_projector", "regression_head")
               for p in getattr(model, name).parameters())
    changed, losses = train_steps(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert changed == expected  # the strong form: frozen parameters are bit-identical, trainable ones all moved


PROMPT_TRAINED = {"st_soft_prompt.prompt", "regression_head.out.weight", "regression_head.out.bias"}


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_plan_trains_the_soft_prompt_and_the_head_output_only(arch, tok, batch):
    """PromptST's plan on a base that carries a LoRA adapter: the adapter stays (frozen); after a backward pass only
    the soft prompt and the head's output layer have gradients, and after optimizer steps only they moved."""
    model = build_tiny_forecaster(tok, arch, soft_prompt_tokens=2)
    apply_freeze_plan(model, FreezeConfig(freeze_plan="lora"))
    adapter = {name for name in trainable(model) if ".lora_" in name}
    report = apply_freeze_plan(model, FreezeConfig(freeze_plan="prompt"))
    assert trainable(model) == set(report.trainable_names) == PROMPT_TRAINED
    assert report.groups == {"st_soft_prompt": ["st_soft_prompt.prompt"],
                             "regression_head": ["regression_head.out.weight", "regression_head.out.bias"]}
    assert report.group_counts == {"st_soft_prompt": 2 * 32, "regression_head": (2 * 32 + 1) * 12 * 2}
    assert adapter and adapter <= {name for name, _ in model.named_parameters()}  # kept, frozen
    out = model(**batch)
    (masked_mae_loss(out.predictions, batch["target"], regression_mask(batch)) + out.loss).backward()
    assert {name for name, p in model.named_parameters() if p.grad is not None} == PROMPT_TRAINED
    model.zero_grad(set_to_none=True)
    changed, losses = train_steps(model, batch)
    assert changed == PROMPT_TRAINED and all(torch.isfinite(torch.tensor(losses)))


def test_prompt_plan_without_a_backbone_and_the_fresh_head(tok, batch):
    from tiny import tiny_st_config

    from st_instruct.training.freeze import reset_head_output

    torch.manual_seed(0)
    control = build_st_forecaster(None, tiny_st_config(tok, hidden_size=32, soft_prompt_tokens=2))
    report = apply_freeze_plan(control, FreezeConfig(freeze_plan="prompt"))
    assert trainable(control) == {"st_soft_prompt.vector", "regression_head.out.weight", "regression_head.out.bias"}
    assert report.plan == "prompt"
    before = {name: p.detach().clone() for name, p in control.named_parameters()}
    reset_head_output(control, seed=1)
    renewed = {name for name, p in control.named_parameters() if not torch.equal(p, before[name])}
    assert renewed == {"regression_head.out.weight", "regression_head.out.bias"}
    with pytest.raises(ValueError, match="freeze plan 'prompt' trains the soft prompt, but this forecaster has none"):
        apply_freeze_plan(build_tiny_forecaster(tok), FreezeConfig(freeze_plan="prompt"))


def test_plans_differ_as_described(tok):
    """On one llama: frozen ⊂ pfa ⊂ full and frozen ⊂ lora; PFA's backbone part is norms plus last-U attention."""
    reports = {}
    for plan in ("frozen", "lora", "pfa", "full"):
        reports[plan] = apply_freeze_plan(build_tiny_forecaster(tok),
                                          FreezeConfig(freeze_plan=plan, pfa_last_layers=1))
    assert reports["frozen"].trainable < reports["pfa"].trainable < reports["full"].trainable
    assert reports["frozen"].trainable < reports["lora"].trainable < reports["full"].trainable
    assert set(reports["frozen"].groups) == {"st_encoder", "st_projector", "regression_head"}
    assert set(reports["lora"].groups) - set(reports["frozen"].groups) == {"adapter"}
    assert set(reports["pfa"].groups) - set(reports["frozen"].groups) == {"backbone"}
    # llama, hidden 32, 2 heads of KV (head dim 8): q/o 32x32, k/v 32x16; five RMSNorms of 32
    assert reports["pfa"].group_counts["backbone"] == 5 * 32 + 2 * 32 * 32 + 2 * 32 * 16
    # LoRA r=8 on q/k/v/o of 2 layers: A is 8 x in, B is out x 8
    assert reports["lora"].group_counts["adapter"] == 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32))


def test_plans_switch_freely_on_a_plain_backbone_and_reapply_idempotently(tok):
    model = build_tiny_forecaster(tok)
    first = apply_freeze_plan(model, FreezeConfig(freeze_plan="pfa", pfa_last_layers=1))
    apply_freeze_plan(model, FreezeConfig(freeze_plan="full"))
    assert apply_freeze_plan(model, FreezeConfig(freeze_plan="pfa", pfa_last_layers=1)) == first
    apply_freeze_plan(model, FreezeConfig(freeze_plan="frozen"))
    lora = apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_r=4))
    backbone = model.backbone
    assert apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_r=4)) == lora
    assert model.backbone is backbone and type(backbone.get_base_model()).__name__ == "LlamaForCausalLM"


def test_plan_refuses_a_backbone_with_another_adapter(tok):
    model = build_tiny_forecaster(tok)
    apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_r=4))
    with pytest.raises(ValueError, match=r"differs from what plan 'lora' asks for \(r: has 4, asked 8\)"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="lora"))
    for plan in ("pfa", "full", "frozen"):
        with pytest.raises(ValueError, match=f"carries a PEFT LORA adapter, which plan '{plan}' does not use"):
            apply_freeze_plan(model, FreezeConfig(freeze_plan=plan))


def test_lora_resumes_on_a_loaded_adapter(tok, tmp_path):
    """A backbone that carries a saved adapter (loaded frozen, for inference) trains again under the same plan."""
    from peft import PeftModel

    model = build_tiny_forecaster(tok, "qwen2")
    report = apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_target_modules=["attention", "mlp"]))
    model.backbone.save_pretrained(tmp_path)
    backbone = PeftModel.from_pretrained(build_tiny_backbone("qwen2", vocab_size=len(tok)), tmp_path)
    loaded = build_st_forecaster(backbone, model.st_config)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    lora = FreezeConfig(freeze_plan="lora", lora_target_modules=["attention", "mlp"])
    assert apply_freeze_plan(loaded, lora) == report
    assert loaded.backbone is backbone


def test_bad_requests(tok):
    model = build_tiny_forecaster(tok, "gpt2")
    with pytest.raises(ValueError, match=r"freeze_plan must be one of \['frozen', 'lora', 'pfa', 'full', "
                                         r"'qlora', 'prompt'\], found 'lor'"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="lor"))
    with pytest.raises(ValueError, match="pfa_last_layers must be between 0 and the backbone's 2 decoder layers, "
                                         "found 3"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="pfa", pfa_last_layers=3))
    with pytest.raises(ValueError, match="found -1"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="pfa", pfa_last_layers=-1))
    with pytest.raises(ValueError, match="plan 'qlora' needs a backbone loaded in 4-bit: set model_load_in_4bit"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="qlora"))
    with pytest.raises(ValueError, match="'full' trains every embedding row already"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="full", train_st_token_embeddings=True))
    with pytest.raises(ValueError, match=r"Target modules \{'no_such_proj'\} not found"):  # peft's own message
        apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_target_modules=["no_such_proj"]))
    with pytest.raises(ValueError, match="lora_target_modules is empty"):
        apply_freeze_plan(model, FreezeConfig(freeze_plan="lora", lora_target_modules=[]))
    assert FREEZE_PLANS == ("frozen", "lora", "pfa", "full", "qlora", "prompt")
    assert all(p.requires_grad for p in model.parameters())  # nothing above touched the model


@pytest.fixture(scope="module")
def tiny_llama_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_backbone("llama", vocab_size=len(tok), hidden_size=64).save_pretrained(path)
    return path


def test_qlora_loads_in_4bit_on_cpu_and_trains_only_lora_and_st(tok, batch, tiny_llama_dir):
    """QLoRA for real: NF4 weights from bitsandbytes' CPU backend, LoRA on top, two steps with finite loss; the
    packed 4-bit weights stay bit-identical."""
    from st_instruct.models.backbones import get_backbone

    backbone = get_backbone(str(tiny_llama_dir), load_in_4bit=True)
    q_proj = backbone.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    model = build_tiny_forecaster(tok)  # its ST modules, on the 4-bit backbone
    model = build_st_forecaster(backbone, model.st_config)
    for plan in ("lora", "pfa", "full"):
        with pytest.raises(ValueError, match=f"loaded in 4-bit, whose weights cannot train: plan '{plan}'"):
            apply_freeze_plan(model, FreezeConfig(freeze_plan=plan))
    report = apply_freeze_plan(model, FreezeConfig(freeze_plan="qlora"))
    assert trainable(model) == expected_trainable(model, "llama", "qlora")
    plain = apply_freeze_plan(build_st_forecaster(get_backbone(str(tiny_llama_dir)), model.st_config),
                              FreezeConfig(freeze_plan="lora"))
    assert (report.trainable, report.total) == (plain.trainable, plain.total)  # 4-bit weights counted unpacked
    changed, losses = train_steps(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert changed == expected_trainable(model, "llama", "qlora")


def test_frozen_plan_runs_on_a_4bit_backbone(tok, batch, tiny_llama_dir):
    from st_instruct.models.backbones import get_backbone

    model = build_st_forecaster(get_backbone(str(tiny_llama_dir), load_in_4bit=True),
                                build_tiny_forecaster(tok).st_config)
    apply_freeze_plan(model, FreezeConfig(freeze_plan="frozen"))
    changed, _ = train_steps(model, batch, steps=1)
    assert changed == expected_trainable(model, "llama", "frozen")
