"""The package's layers (docs/design.md §2): import-linter's layers contract in pyproject.toml names every module and
subpackage of st_instruct, and the code keeps it (``lint-imports``, run here so that the test command of .ci/run
checks it)."""

import subprocess
import sys
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_contract_names_every_module_of_the_package():
    contract = read_configuration(ROOT / "pyproject.toml")["tool"]["importlinter"]["contracts"][0]
    named = {part.strip() for layer in contract["layers"] for part in layer.split("|")}
    package = ROOT / "st_instruct"
    modules = {f"st_instruct.{p.stem}" for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {f"st_instruct.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules == named, f"not in the contract: {sorted(modules - named)}; not a module: {sorted(named - modules)}"


def test_the_code_keeps_its_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "KEPT" in done.stdout, done.stdout[-3000:]
