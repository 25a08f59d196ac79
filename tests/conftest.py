"""Shared test set-up: no network, no hub, real data only from $ST_INSTRUCT_DATA or ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def require_real_data(name: str) -> Path:
    """The folder holding the real dataset ``name``; skips the calling test, with the reason, when it is absent."""
    from st_instruct.data import registry

    root = registry.find_dataset_dir(name)
    if root is None:
        pytest.skip(reason=f"{name}: real data not found in $ST_INSTRUCT_DATA or ../shared/data (next to the "
                    "repository or the working directory); see ../shared/data/README.md")
    return root
