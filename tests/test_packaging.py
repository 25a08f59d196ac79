"""Packaging: the wheel carries the shipped recipes and prompt templates (kept at the repository's top level, mapped
into the package by pyproject.toml), and an installed wheel works with no clone in sight.

The must-show test builds the wheel from the working tree, installs it with pip into a fresh virtual environment and,
from a folder outside the clone, runs ``st-instruct recipes``, ``st-instruct build-data smoke_sft``, a shortened
``st-instruct demo`` and ``python -m st_instruct.train smoke_sft``. Installing every dependency afresh takes minutes
(``scripts/check_wheel.sh`` does exactly that, with the real SmolLM2); here the fresh environment sees this
``.venv``'s installed dependencies through a folder of links to them that leaves out st_instruct's own editable
install (its dist-info and the ``__editable__`` finder that would import the clone), so st_instruct can only come
from the wheel -- which the test checks.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from st_instruct import shipped
from st_instruct.shipped import shipped_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "st_instruct", "recipes", "prompts")  # what the build reads
SHIPPED = {"recipes": "st_instruct/recipes", "prompts": "st_instruct/prompts"}


def test_every_subpackage_is_listed_in_pyproject():
    """The package list is explicit (a package-dir mapping cannot be combined with ``find``): a new subpackage must
    be added to it, or the wheel would lack it."""
    from setuptools.config.pyprojecttoml import read_configuration

    setuptools = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]
    on_disk = {".".join(d.relative_to(ROOT).parts) for d in (ROOT / "st_instruct").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    listed = set(setuptools["packages"])
    assert on_disk | {"st_instruct"} <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert setuptools["package-dir"] == {"st_instruct.recipes": "recipes", "st_instruct.prompts": "prompts"}


def test_shipped_files_are_found_in_the_package_else_at_the_repository_root(tmp_path, monkeypatch):
    assert shipped_dir("recipes") == ROOT / "recipes" and shipped_dir("prompts") == ROOT / "prompts"  # this clone
    package = tmp_path / "site-packages" / "st_instruct"
    package.mkdir(parents=True)
    monkeypatch.setattr(shipped, "__file__", str(package / "shipped.py"))
    assert shipped_dir("recipes") == tmp_path / "site-packages" / "recipes"  # no package folder: the root's
    (package / "recipes").mkdir()
    assert shipped_dir("recipes") == package / "recipes"


def build_wheel(folder: Path) -> Path:
    """The wheel of the working tree, built from a copy of it (a setuptools build writes build/ and *.egg-info into
    the folder it builds, and others use this checkout)."""
    source = folder / "src"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(folder / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (folder / "dist").glob("st_instruct-*.whl")
    return wheel


def fresh_environment(folder: Path, wheel: Path) -> Path:
    """A new virtual environment holding the wheel, with this environment's other packages linked in; returns its
    ``bin`` folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True, timeout=120)
    python = folder / "venv" / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = folder / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not (entry.name.startswith(("st_instruct", "__editable__")) or entry.suffix == ".pth"):
            (deps / entry.name).symlink_to(entry)
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return python.parent


@pytest.mark.integration
def test_the_installed_wheel_runs_the_shipped_recipes_outside_the_clone(tmp_path, tiny_backbone_dir):
    wheel = build_wheel(tmp_path / "build")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside in SHIPPED.items():
        shipped = {f"{inside}/{p.relative_to(ROOT / folder)}" for p in (ROOT / folder).rglob("*") if p.is_file()}
        assert shipped and shipped <= names, sorted(shipped - names)
    assert {"st_instruct/recipes/accelerate/zero2.yaml", "st_instruct/prompts/forecast_node.v1.jinja"} <= names
    assert not any(n.startswith(("recipes/", "prompts/", "tests/", "scripts/")) for n in names)

    bin_dir = fresh_environment(tmp_path / "env", wheel)
    work = tmp_path / "work"  # outside the clone: no recipes/ or prompts/ next to it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ST_INSTRUCT_PROMPTS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")

    def run(*argv) -> str:
        done = subprocess.run([str(a) for a in argv], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    where = run(bin_dir / "python", "-c", "import st_instruct, st_instruct.shipped as c; print(st_instruct.__file__);"
                " print(c.shipped_dir('recipes')); print(c.shipped_dir('prompts'))").split()
    site = tmp_path / "env" / "venv" / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's st_instruct, not the clone's
    assert where[1].endswith("site-packages/st_instruct/recipes")

    listed = run(bin_dir / "st-instruct", "recipes")
    assert "smoke_sft " in listed and "demo_sft " in listed and str(ROOT) not in listed
    tiny = ("--model_name_or_path", tiny_backbone_dir)
    built = run(bin_dir / "st-instruct", "build-data", "smoke_sft", *tiny, "--dataset_cache_dir", "built",
                "--output", "data/smoke")
    assert (work / "data" / "smoke" / "dataset_dict.json").is_file() and "<st_his>" in built

    demo = run(bin_dir / "st-instruct", "demo", *tiny, "--model_num_layers", "2", "--max_steps", "2",
               "--pretrain_steps", "3", "--output_dir", "outputs/demo", "--dataset_cache_dir", "built",
               "--report_to", "none", "--max-windows", "2", "--models", "historical_average", "--quiet")
    table = demo[demo.index("| model"):]
    assert "st_forecaster" in table and "st_forecaster_no_llm" in table and "historical_average" in table

    run(bin_dir / "python", "-m", "st_instruct.train", "smoke_sft", *tiny, "--max_steps", "1", "--report_to", "none",
        "--dataset_cache_dir", "built", "--output_dir", "outputs/smoke")
    model = work / "outputs" / "smoke"
    assert (model / "st_backbone.json").is_file()
    # the template the model trained with is the wheel's copy of prompts/forecast_node.v1.jinja
    assert (model / "prompt_template.jinja").read_text() == (ROOT / "prompts" / "forecast_node.v1.jinja").read_text()
