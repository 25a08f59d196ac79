"""Recipe parsing (DESIGN.md §3): default < YAML < flag, unknown keys named, unique fields, every recipe parses."""

from pathlib import Path

import pytest

from st_instruct.configs import RECIPE_DATACLASSES, DataConfig, RecipeError, check_unique_fields, parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


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


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "dataset_names: [synthetic]\nhistroy: 24\n")
    with pytest.raises(RecipeError, match=r"recipe .*recipe.yaml: unknown key 'histroy'; did you mean 'history'\?"):
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
    parse_recipe(RECIPE_DATACLASSES, [str(recipe)])


def test_recipes_exist():
    assert RECIPES, "recipes/*.yaml is empty"
