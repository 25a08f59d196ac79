"""The documentation site (docs/, mkdocs-material) builds with ``mkdocs build --strict``: no broken link or anchor, and
the recipe reference generated from the config dataclasses (docs/hooks/recipe_reference.py) has a help text for
every key; run here so that the test command .ci/run runs it. The README stays short (docs/design.md: measured
tables live on the results page)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_the_generated_recipe_reference(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "recipes-reference" / "index.html").read_text()
    for key in ("history", "st_encoder", "pretrain_learning_rate", "rationale_teacher"):  # one of each dataclass
        assert f"<code>{key}</code>" in reference, key


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
