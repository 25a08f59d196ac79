"""Folders saved by the release before the configuration redesign (issue 22) still load, and predict bit-identically.

The fixture is made at test time by that release's own code -- no folder or weight is committed: the package as it
was at :data:`LEGACY_COMMIT` is extracted from this clone's history (``git archive``) and run in a child process,
which trains the smoke recipe on the tiny Llama (2 steps), pretrains an encoder (2 steps), and saves the forecast of
one input. Today's code then loads the forecaster folder (a flat ``st_forecaster_config.json``) and forecasts the same
input, and starts a forecaster from the pretrained folder (a flat ``encoder_config.json``). Skipped where the clone
has no history (an sdist, a shallow clone).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from st_instruct import load_forecaster
from st_instruct.data.loaders import get_dataset
from st_instruct.models.st_encoders import EncoderSpec

ROOT = Path(__file__).resolve().parents[1]
LEGACY_COMMIT = "4b5e2dd76b4833b9b22ca7f222a9fa83891f6bbc"  # issue 22 part 3: the last flat configuration

LEGACY_RUN = textwrap.dedent("""
    # the release of LEGACY_COMMIT: its st_instruct first on the path, the editable install's finder removed
    import sys
    legacy, backbone, out = sys.argv[1:4]
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
    sys.path.insert(0, legacy)
    import numpy as np
    import st_instruct
    assert st_instruct.__file__.startswith(legacy), st_instruct.__file__
    from st_instruct import load_forecaster
    from st_instruct.cli import main
    from st_instruct.data.loaders import get_dataset

    smoke = f"{legacy}/recipes/smoke_sft.yaml"
    assert main(["train", smoke, "--model_name_or_path", backbone, "--dataset_cache_dir", f"{out}/built",
                 "--report_to", "none", "--output_dir", f"{out}/model", "--max_steps", "2", "--save_strategy", "no",
                 "--quiet"]) == 0
    assert main(["pretrain", f"{legacy}/recipes/pretrain_mae.yaml", "--pretrain_steps", "2", "--pretrain_output_dir",
                 f"{out}/encoder"]) == 0
    data = get_dataset("synthetic-small")
    result = load_forecaster(f"{out}/model").forecast(data.values[-48:], data.time_index()[-48:])
    np.save(f"{out}/forecast.npy", result.values)
""")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, tiny_backbone_dir):
    """``(folder of LEGACY_COMMIT's outputs, its forecast)``, made by that release's code."""
    if subprocess.run(["git", "cat-file", "-e", f"{LEGACY_COMMIT}^{{commit}}"], cwd=ROOT,
                      capture_output=True).returncode != 0:
        pytest.skip(reason=f"this checkout has no git history holding {LEGACY_COMMIT[:12]} (the legacy release)")
    root = tmp_path_factory.mktemp("legacy")
    code, out = root / "code", root / "out"
    code.mkdir()
    archive = subprocess.run(["git", "archive", LEGACY_COMMIT, "st_instruct", "recipes", "prompts"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    done = subprocess.run([sys.executable, "-c", LEGACY_RUN, str(code), str(tiny_backbone_dir), str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, np.load(out / "forecast.npy")


def test_a_legacy_forecaster_folder_loads_and_forecasts_bit_identically(legacy):
    """Its flat st_forecaster_config.json is read into today's nested configuration, and the forecast of the same
    input equals the one the legacy release made, to float32 rounding: prediction now runs a shorter pass (the tokens
    after the last ST token cut, issue 26), whose attention sums the same terms in another order."""
    out, expected = legacy
    flat = (out / "model" / "st_forecaster_config.json").read_text()
    assert '"encoder_dim"' in flat and '"head":' not in flat  # the legacy format indeed
    forecaster = load_forecaster(out / "model")
    assert forecaster.model.st_config.encoder.st_encoder_dim == 32  # the smoke recipe's, read from the flat key
    data = get_dataset("synthetic-small")
    result = forecaster.forecast(data.values[-48:], data.time_index()[-48:])
    np.testing.assert_allclose(result.values, expected, rtol=1e-5, atol=1e-4)


def test_a_legacy_pretrained_encoder_starts_a_forecaster(legacy, tmp_path, tiny_backbone_dir):
    """Its flat encoder_config.json is read as today's EncoderSpec, and today's training starts from it."""
    from st_instruct.cli import main

    out, _ = legacy
    spec = EncoderSpec.load(out / "encoder")
    assert spec.encoder.st_encoder == "patch" and spec.encoder.st_encoder_dim == 32 and spec.history == 12
    code = main(["train", str(ROOT / "recipes" / "smoke_sft.yaml"), "--model_name_or_path", str(tiny_backbone_dir),
                 "--dataset_cache_dir", str(tmp_path / "built"), "--report_to", "none", "--output_dir",
                 str(tmp_path / "model"), "--max_steps", "1", "--save_strategy", "no", "--st_encoder_init",
                 str(out / "encoder"), "--quiet"])
    assert code == 0 and (tmp_path / "model" / "st_backbone.json").is_file()
