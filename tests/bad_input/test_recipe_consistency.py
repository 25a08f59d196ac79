"""Issue 10: recipe settings that are each valid but do not work together are refused up front, in one line naming
both keys and what to use instead (exit code 2, no traceback, nothing written)."""

from pathlib import Path

import yaml
from cli_check import assert_clean_failure

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_sft.yaml"


def test_se_attention_with_node_granularity_is_one_clear_line(cli, tmp_path):
    values = yaml.safe_load(SMOKE.read_text()) | {"se_attention": True, "output_dir": str(tmp_path / "out")}
    assert values["granularity"] == "node"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    result = cli("train", recipe)
    assert_clean_failure(result, str(recipe), "se_attention: true", "granularity: node", "use granularity: graph")
    assert not (tmp_path / "out").exists()
