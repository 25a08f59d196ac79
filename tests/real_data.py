"""``require_real_data``: a module, not only conftest, so a test under a folder with its own conftest (whose name
shadows the root one, e.g. tests/models/conftest.py before tests/training) imports it by a unique name."""

from __future__ import annotations

from pathlib import Path

import pytest


def require_real_data(name: str) -> Path:
    """The folder holding the real dataset ``name``; skips the calling test, with the reason, when it is absent."""
    from st_instruct.data import registry

    root = registry.find_dataset_dir(name)
    if root is None:
        pytest.skip(reason=f"{name}: real data not found in $ST_INSTRUCT_DATA or ../shared/data (next to the "
                    "repository or the working directory); see ../shared/data/README.md")
    return root
