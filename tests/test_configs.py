"""Recipe parsing (docs/design.md §3): default < YAML < flag, unknown keys named, unique fields, every recipe
parses."""

from pathlib import Path

import pytest
import torch
import yaml

from st_instruct.configs import (
    FREEZE_PLAN_NAMES,
    PRETRAIN_DATACLASSES,
    RECIPE_DATACLASSES,
    ST_ENCODER_NAMES,
    DataConfig,
    ModelConfig,
    RecipeError,
    check_recipe_consistency,
    check_unique_fields,
    parse_recipe,
    recipe_dict,
    train_dataclasses,
)

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPE_DIR / "accelerate").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_precedence_default_then_yaml_then_flag(tmp_path):
    path = write(tmp_path, "dataset_names: [nyc-taxi]\nhistory: 24\nhorizon: 6\n")
    (data, *_) = parse_recipe(RECIPE_DATACLASSES, [str(path), "--horizon", "3"])
    assert data.dataset_names == ["nyc-taxi"]  # YAML over default
    assert data.history == 24  # YAML
    assert data.horizon == 3  # flag over YAML
    assert data.split == "7:1:2"  # default
    (data, *_) = parse_recipe(RECIPE_DATACLASSES, ["--config", str(path)])
    assert data.horizon == 6


def test_the_dataset_flags_of_the_other_verbs_set_their_recipe_keys(tmp_path):
    """``train`` / ``build-data`` / ``scripts/sft.py`` take ``--freq`` etc. as ``baselines`` and ``evaluate`` do."""
    path = write(tmp_path, "dataset_names: [speeds.npz]\ndataset_freq: 5min\n")
    (data, *_) = parse_recipe(RECIPE_DATACLASSES, [
        str(path), "--freq", "15min", "--series-start=2024-03-04", "--adjacency", "adj.csv", "--null-value", "0",
        "--channel-names", "speed", "--nodes", "nodes.csv", "--no-calendar", "--start", "2024-03-05",
        "--end", "2024-03-09", "--channels", "speed"])
    assert (data.dataset_freq, data.dataset_series_start, data.dataset_adjacency) == ("15min", "2024-03-04",
                                                                                       "adj.csv")
    assert (data.dataset_null_value, data.dataset_channel_names, data.dataset_nodes) == ("0", ["speed"],
                                                                                         "nodes.csv")
    assert data.dataset_no_calendar is True
    assert (data.dataset_start, data.dataset_end, data.dataset_channels) == ("2024-03-05", "2024-03-09", ["speed"])


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "dataset_names: [synthetic]\nhistroy: 24\n")
    with pytest.raises(RecipeError, match=r"recipe .*recipe.yaml: unknown key 'histroy'; did you mean 'history'"):
        parse_recipe(RECIPE_DATACLASSES, [str(path)])


def test_not_a_mapping_and_unreadable(tmp_path):
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        parse_recipe(RECIPE_DATACLASSES, [str(write(tmp_path, "- a\n- b\n"))])
    with pytest.raises(RecipeError, match="cannot read recipe"):
        parse_recipe(RECIPE_DATACLASSES, [str(tmp_path / "missing.yaml")])
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe(RECIPE_DATACLASSES, [str(write(tmp_path, "a: [1, 2\n"))])


def test_bad_values_are_rejected():
    with pytest.raises(RecipeError, match="granularity must be one of"):
        DataConfig(granularity="city")
    with pytest.raises(RecipeError, match="node_sample must be a fraction"):
        DataConfig(node_sample=0)


def test_field_names_are_unique_across_recipe_dataclasses():
    check_unique_fields(RECIPE_DATACLASSES)
    check_unique_fields(train_dataclasses())  # TRL's SFTConfig (TrainingArguments) included
    check_unique_fields((*train_dataclasses(), *PRETRAIN_DATACLASSES[2:]))  # pretrain_* keys clash with none
    from dataclasses import dataclass

    @dataclass
    class Clash:
        history: int = 1

    with pytest.raises(RecipeError, match="'history' is declared by both DataConfig and Clash"):
        check_unique_fields((DataConfig, Clash))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_parses_and_opens_with_its_command(recipe):
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith("# ") and ("st-instruct" in first_line or "accelerate launch" in first_line)
    # pretraining recipes (their command is st-instruct pretrain) have their own schema: DataConfig, ModelConfig,
    # PretrainConfig
    schema = PRETRAIN_DATACLASSES if "st-instruct pretrain " in first_line else train_dataclasses()
    parse_recipe(schema, [str(recipe)])


def test_se_attention_with_one_node_prompts_is_refused(tmp_path):
    """SE-Attention rotates by coordinates centred per sample: one node per prompt gets angle 0 and nothing changes."""
    check_recipe_consistency(DataConfig(granularity="graph"), ModelConfig(se_attention=True))
    check_recipe_consistency(DataConfig(granularity="node"), ModelConfig(se_attention=False))
    with pytest.raises(RecipeError, match="se_attention: true .*granularity: node.*use granularity: graph"):
        check_recipe_consistency(DataConfig(granularity="node"), ModelConfig(se_attention=True))
    path = write(tmp_path, "granularity: node\nse_attention: true\n")
    with pytest.raises(RecipeError, match=f"recipe {path}: se_attention: true .*granularity: node") as err:
        parse_recipe(RECIPE_DATACLASSES, [str(path)])
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="recipe \\(flags\\): se_attention: true"):
        parse_recipe(RECIPE_DATACLASSES, ["--se_attention", "true"])  # DataConfig's default granularity is node
    data, model = parse_recipe(RECIPE_DATACLASSES, [str(path), "--granularity", "graph"])
    assert model.se_attention and data.granularity == "graph"


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_configs_open_with_their_launch_command(config):
    text = config.read_text()
    assert text.startswith(f"# accelerate launch --config_file recipes/accelerate/{config.name} scripts/sft.py ")
    settings = yaml.safe_load(text)
    assert settings["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED") and "use_cpu" not in settings
    assert {p.name for p in ACCELERATE_CONFIGS} == {"single.yaml", "ddp.yaml", "zero2.yaml", "zero3.yaml"}


def test_model_config_choices_mirror_the_modules_and_are_checked():
    from st_instruct.configs import ST_GRAPH_NAMES
    from st_instruct.data.air_graphs import GRAPH_KINDS
    from st_instruct.models.st_encoders import ENCODERS
    from st_instruct.training.freeze import FREEZE_PLANS

    assert FREEZE_PLAN_NAMES == tuple(FREEZE_PLANS) and set(ST_ENCODER_NAMES) == set(ENCODERS)
    assert ST_GRAPH_NAMES == GRAPH_KINDS
    with pytest.raises(RecipeError, match="st_graph must be one of"):
        ModelConfig(st_graph="wind")
    with pytest.raises(RecipeError, match="freeze_plan must be one of"):
        ModelConfig(freeze_plan="lorra")
    with pytest.raises(RecipeError, match="st_encoder must be one of"):
        ModelConfig(st_encoder="gru")
    with pytest.raises(RecipeError, match="not both 0"):
        ModelConfig(loss_reg_weight=0, loss_lm_weight=0)
    assert ModelConfig(freeze_plan="qlora").model_load_in_4bit


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults apply only without CUDA")
def test_training_arguments_get_cpu_defaults_under_the_recipe(tmp_path):
    path = write(tmp_path, "max_steps: 3\n")
    _, _, args = parse_recipe(train_dataclasses(), [str(path)])
    assert not args.bf16 and args.use_cpu and not args.activation_checkpointing  # TRL's defaults are bf16 + on
    _, _, args = parse_recipe(train_dataclasses(), [str(path), "--gradient_checkpointing", "true"])
    assert args.activation_checkpointing  # the deprecated alias still wins over the CPU default
    with pytest.raises(RecipeError, match="bf16"):  # TrainingArguments' own check, reported as a recipe error
        parse_recipe(train_dataclasses(), [str(write(tmp_path, "bf16: true\nuse_cpu: false\n"))])


def test_resolved_recipe_reads_back_the_same(tmp_path):
    path = write(tmp_path, "dataset_names: [synthetic-small]\nmax_steps: 3\nlora_r: 4\nreport_to: [tensorboard]\n")
    configs = parse_recipe(train_dataclasses(), [str(path), "--learning_rate", "0.01"])
    resolved = recipe_dict(*configs)
    assert resolved["learning_rate"] == 0.01 and resolved["lora_r"] == 4 and "hub_token" not in resolved
    assert "per_device_eval_batch_size" not in resolved  # TrainingArguments defaults are left out
    again = parse_recipe(train_dataclasses(), [str(write(tmp_path, yaml.safe_dump(resolved)))])
    assert again[:2] == configs[:2] and recipe_dict(*again) == resolved


def test_recipes_exist():
    assert RECIPES, "recipes/*.yaml is empty"


@pytest.mark.parametrize(("line", "culprits"), [
    ("history: null", ["'history'", "None", "integer"]),
    ("revin: 3", ["'revin'", "3", "true or false"]),
    ("mrffn_layers: [last]", ["'mrffn_layers'", "'last'", "integer"]),
    ("lora_dropout: 1.5", ["lora_dropout", "1.5"]),
    ("st_projector_layers: 3", ["st_projector_layers", "3"]),
])
def test_recipe_type_errors_name_the_key_and_value(tmp_path, line, culprits):
    path = tmp_path / "r.yaml"
    path.write_text(f"dataset_names: [synthetic-small]\n{line}\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe((DataConfig, ModelConfig), [str(path)])
    for culprit in culprits:
        assert culprit in str(err.value)


def test_recipe_template_path_only_from_a_flag(tmp_path):
    custom = tmp_path / "mine.jinja"
    custom.write_text((Path(__file__).resolve().parents[1] / "prompts" / "forecast_node.v1.jinja").read_text())
    path = tmp_path / "r.yaml"
    path.write_text(f"template: {custom}\n")
    with pytest.raises(RecipeError, match=r"key 'template' names .*--template"):
        parse_recipe((DataConfig, ModelConfig), [str(path)])
    data, _ = parse_recipe((DataConfig, ModelConfig), [str(path), "--template", str(custom)])
    assert data.template == str(custom)
    shipped, _ = parse_recipe((DataConfig, ModelConfig), [str(path), "--template", "forecast_node@1"])
    assert shipped.template == "forecast_node@1"


def test_help_flag_prints_every_key_instead_of_being_refused(capsys):
    """``scripts/sft.py --help`` (no CLI verb in front): argparse's help with every recipe key, exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe(train_dataclasses(), ["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--dataset_freq" in printed and "--learning_rate" in printed


def test_an_encoder_option_is_declared_once_and_reaches_the_module_from_a_recipe(tmp_path):
    """``st_encoder_tcn_layers`` / ``st_encoder_tcn_kernel_size`` (unreachable from a recipe before the configuration
    redesign) are fields of STEncoderConfig alone: a flag sets them, the forecaster's saved configuration holds them,
    and the encoder built from it has that many blocks of that kernel."""
    from st_instruct.configs import STEncoderConfig, part
    from st_instruct.models.forecaster import STForecasterConfig
    from st_instruct.models.st_encoders import build_st_encoder

    _, model_config, _ = parse_recipe(train_dataclasses(), [str(RECIPE_DIR / "smoke_sft.yaml"), "--st_encoder", "tcn",
                                                            "--st_encoder_tcn_layers", "2",
                                                            "--st_encoder_tcn_kernel_size", "3"])
    assert part(model_config, STEncoderConfig).st_encoder_tcn_layers == 2
    config = STForecasterConfig.of_recipe(model_config, history=12, horizon=12, channels=2, coord_dim=8,
                                          his_token_id=1, pre_token_id=2)
    config.save(tmp_path)
    assert STForecasterConfig.load(tmp_path).encoder.st_encoder_tcn_kernel_size == 3
    encoder = build_st_encoder(config.encoder_spec())
    assert len(encoder.blocks) == 2 and {block.filter_gate.kernel_size[0] for block in encoder.blocks} == {3}
