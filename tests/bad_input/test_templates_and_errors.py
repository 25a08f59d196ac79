"""Issue 9, templates and errors: nothing in a template or a shared model folder is executed, and every mistake a new
user makes with recipes, backbones and model folders is one line naming the culprit, with exit code 2."""

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from cli_check import assert_clean_failure

from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.model_dir import TEMPLATE_COPY_FILE
from st_instruct.samples.prompts import load_template
from st_instruct.training.run import train

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke_sft.yaml"
NODE_TEMPLATE = ROOT / "prompts" / "forecast_node.v1.jinja"


def recipe(tmp_path: Path, name: str = "recipe.yaml", **changes) -> Path:
    """The smoke recipe with ``changes`` (None removes a key), written to ``tmp_path / name``."""
    values = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def crafted_template(directory: Path, marker: Path) -> Path:
    """A template that would write ``marker`` through os.system if anything let it reach ``os``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "evil.jinja"
    path.write_text(NODE_TEMPLATE.read_text().replace(
        "Forecast for", "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}Forecast for"))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained for 1 step by the smoke recipe on a tiny Llama (synthetic-small)."""
    output = tmp_path_factory.mktemp("trained") / "model"
    flags = ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir",
             str(tmp_path_factory.mktemp("built")), "--report_to", "none", "--output_dir", str(output),
             "--max_steps", "1", "--save_strategy", "no"]
    return train(*parse_recipe(train_dataclasses(), [str(SMOKE), *flags]))


@pytest.fixture
def model_copy(model_dir, tmp_path):
    """A copy of the trained folder, free to break."""
    return Path(shutil.copytree(model_dir, tmp_path / "copy"))


def evaluate(cli, model: Path, out: Path):
    return cli("evaluate", "--model", model, "--dataset", "synthetic-small", "--max-windows", "1", "--models",
               "last_value", "--output", out, "--quiet")


def edit_recipe(model: Path, **changes) -> None:
    path = model / "recipe.yaml"
    values = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))


# ---------------------------------------------------------------------------------------------------- templates
def test_trained_folder_ships_its_template_with_checksum(model_dir, cli, tmp_path):
    values = yaml.safe_load((model_dir / "recipe.yaml").read_text())
    copy = model_dir / TEMPLATE_COPY_FILE
    assert copy.read_bytes() == NODE_TEMPLATE.read_bytes()
    assert values["template_sha256"] == hashlib.sha256(NODE_TEMPLATE.read_bytes()).hexdigest()
    result = evaluate(cli, model_dir, tmp_path / "eval")
    assert result.code == 0, result.err
    assert (tmp_path / "eval" / "results.json").is_file()


def test_model_folder_naming_a_crafted_template_is_refused_and_nothing_runs(model_copy, cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_template(tmp_path / "elsewhere", marker)
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    edit_recipe(model_copy, template=str(evil), template_sha256=digest)
    result = evaluate(cli, model_copy, tmp_path / "eval")
    assert_clean_failure(result, str(model_copy), "template_sha256", "re-train")
    assert not marker.exists() and not (tmp_path / "eval").exists()


def test_model_folder_with_its_copy_replaced_is_refused(model_copy, cli, tmp_path):
    # the recipe's checksum is that of the crafted copy: still nothing executes, the sandbox refuses the escape
    marker = tmp_path / "pwned"
    evil = crafted_template(tmp_path / "elsewhere", marker)
    shutil.copyfile(evil, model_copy / TEMPLATE_COPY_FILE)
    edit_recipe(model_copy, template=str(evil), template_sha256=hashlib.sha256(evil.read_bytes()).hexdigest())
    result = evaluate(cli, model_copy, tmp_path / "eval")
    assert_clean_failure(result, TEMPLATE_COPY_FILE, "sandbox forbids")
    assert not marker.exists() and not (tmp_path / "eval").exists()


def test_old_model_folder_without_checksum_is_refused_with_what_to_do(model_copy, cli, tmp_path):
    edit_recipe(model_copy, template_sha256=None)
    line = assert_clean_failure(evaluate(cli, model_copy, tmp_path / "eval"), "recipe.yaml", "template_sha256",
                                "forecast_node")
    assert hashlib.sha256(NODE_TEMPLATE.read_bytes()).hexdigest() in line  # the value to add, after checking
    assert not (tmp_path / "eval").exists()


def test_recipe_file_naming_a_template_outside_prompts_is_refused(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_template(tmp_path / "elsewhere", marker)
    path = recipe(tmp_path, template=str(evil))
    result = cli("build-data", path, "--model_name_or_path", "", "--output", tmp_path / "out")
    assert_clean_failure(result, str(path), "'template'", str(evil), "--template")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_template_flag_may_name_any_file_and_still_cannot_escape(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_template(tmp_path / "elsewhere", marker)
    result = cli("build-data", SMOKE, "--model_name_or_path", "", "--template", evil, "--dataset_cache_dir",
                 tmp_path / "cache", "--output", tmp_path / "out")
    assert_clean_failure(result, str(evil), "sandbox forbids")
    assert not marker.exists() and not (tmp_path / "out").exists()
    benign = tmp_path / "mine" / "mine.jinja"
    benign.parent.mkdir()
    benign.write_text(NODE_TEMPLATE.read_text().replace("Forecast for", "Prediction for"))
    result = cli("build-data", SMOKE, "--model_name_or_path", "", "--template", benign, "--dataset_cache_dir",
                 tmp_path / "cache", "--output", tmp_path / "out")
    assert result.code == 0, result.err
    assert "Prediction for" in result.out


def test_template_checksum_mismatch_in_a_recipe(cli, tmp_path):
    path = recipe(tmp_path, template_sha256="0" * 64)
    result = cli("build-data", path, "--model_name_or_path", "", "--output", tmp_path / "out")
    assert_clean_failure(result, "template_sha256", "0" * 64, "forecast_node.v1.jinja")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- recipes
def test_recipe_value_of_the_wrong_type_is_one_line_without_usage(cli, tmp_path):
    path = recipe(tmp_path, history="abc")
    result = cli("build-data", path, "--model_name_or_path", "", "--output", tmp_path / "out")
    assert_clean_failure(result, str(path), "'history'", "'abc'", "integer")
    assert "usage:" not in result.err and len(result.err.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()


def test_flag_value_of_the_wrong_type_names_the_flag(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", SMOKE, "--max_steps", "ten", "--output_dir", out)
    assert_clean_failure(result, "--max_steps", "'ten'", "integer")
    assert "usage:" not in result.err and not out.exists()


def test_recipe_list_where_a_number_belongs(cli, tmp_path):
    path = recipe(tmp_path, horizon=[6, 12], learning_rate="fast")
    result = cli("build-data", path, "--model_name_or_path", "", "--output", tmp_path / "out")
    assert_clean_failure(result, str(path), "'horizon'", "[6, 12]", "integer")
    assert not (tmp_path / "out").exists()


def test_unknown_flag_suggests_the_key(cli, tmp_path):
    result = cli("build-data", SMOKE, "--histroy", "24", "--output", tmp_path / "out")
    assert_clean_failure(result, "--histroy", "--history")
    assert not (tmp_path / "out").exists()


def test_head_dim_zero_names_the_key(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", recipe(tmp_path, head_dim=0), "--output_dir", out)
    assert_clean_failure(result, "head_dim", "0")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- backbones
def test_unknown_backbone_names_it_and_why(cli, tmp_path):
    result = cli("build-data", SMOKE, "--model_name_or_path", "no-such-org/no-such-model", "--output",
                 tmp_path / "out")
    assert_clean_failure(result, "'no-such-org/no-such-model'", "not a registered name", "not a local folder",
                         "Hugging Face cache")
    assert not (tmp_path / "out").exists()


def test_backbone_folder_without_a_checkpoint(cli, tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    out = tmp_path / "run"
    result = cli("train", SMOKE, "--model_name_or_path", empty, "--output_dir", out)
    assert_clean_failure(result, str(empty), "save_pretrained")
    assert not out.exists()


@pytest.mark.parametrize(("flags", "culprits"), [
    (["--mrffn", "true", "--mrffn_layers", "5", "--mrffn_init", "random"],
     ["mrffn_layers", "[5]", "2 decoder layers"]),
    (["--model_num_layers", "9"], ["model_num_layers", "9", "only 2"]),
], ids=["mrffn_layers", "model_num_layers"])
def test_layer_index_beyond_the_backbone(cli, tmp_path, tiny_backbone_dir, flags, culprits):
    out = tmp_path / "run"
    result = cli("train", SMOKE, "--model_name_or_path", tiny_backbone_dir, "--dataset_cache_dir", tmp_path / "c",
                 "--report_to", "none", "--output_dir", out, *flags)
    assert_clean_failure(result, *culprits)
    assert not out.exists()


def test_lora_target_modules_matching_nothing(cli, tmp_path, tiny_backbone_dir):
    out = tmp_path / "run"
    result = cli("train", SMOKE, "--model_name_or_path", tiny_backbone_dir, "--dataset_cache_dir", tmp_path / "c",
                 "--report_to", "none", "--output_dir", out, "--lora_target_modules", "qkv_proj_typo")
    assert_clean_failure(result, "qkv_proj_typo")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- model folders
@pytest.mark.parametrize("name", ["st_modules.safetensors", "adapter_model.safetensors"])
def test_truncated_weights_file(model_copy, cli, tmp_path, name):
    path = model_copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = evaluate(cli, model_copy, tmp_path / "eval")
    assert_clean_failure(result, str(path), "corrupt or truncated")
    assert not (tmp_path / "eval").exists()


def test_corrupt_backbone_json(model_copy, cli, tmp_path):
    path = model_copy / "st_backbone.json"
    path.write_text(path.read_text()[:10])
    assert_clean_failure(evaluate(cli, model_copy, tmp_path / "eval"), str(path), "not valid JSON")
    assert not (tmp_path / "eval").exists()


def test_missing_st_forecaster_config(model_copy, cli, tmp_path):
    (model_copy / "st_forecaster_config.json").unlink()
    assert_clean_failure(evaluate(cli, model_copy, tmp_path / "eval"), str(model_copy), "st_forecaster_config.json")
    assert not (tmp_path / "eval").exists()


def test_model_flag_pointing_at_a_folder_that_is_not_a_forecaster(cli, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    result = evaluate(cli, folder, tmp_path / "eval")
    assert_clean_failure(result, str(folder), "st_backbone.json", "another kind of directory")
    assert not (tmp_path / "eval").exists()


def test_load_template_of_a_crafted_file_raises_and_writes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    template = load_template(crafted_template(tmp_path / "t", marker))
    with pytest.raises(ValueError, match="sandbox forbids"):
        template.render({"node": {"label": "x", "description": "", "location": ""}, "pre_slot": "", "dataset": "d",
                         "city": "c", "freq_text": "", "channels_text": "", "history_steps": 1, "history_period": "",
                         "his_slot": "", "values_in_text": False, "channel_names": "", "horizon_steps": 1,
                         "target_period": ""})
    assert not marker.exists()
