"""Shared test set-up: no network, no hub, real data only from $ST_INSTRUCT_DATA or ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


from real_data import require_real_data  # noqa: E402,F401  (tests import it from here, or from real_data)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a busy
    2-core machine torch's thread pool turns 0.1 s steps into 30 s ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """The locally trained test tokenizer (tests/tiny.py), trained once per session and saved here."""
    from tiny import build_test_tokenizer

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    build_test_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    """A fresh copy of the test tokenizer (ChatML template, no ST tokens), free to change."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def st_tokenizer(tiny_tokenizer):
    """The test tokenizer with the ST special tokens added."""
    from st_instruct.samples.st_tokens import add_st_tokens

    add_st_tokens(tiny_tokenizer)
    return tiny_tokenizer


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A local stand-in of the Hugging Face Hub HTTP API on 127.0.0.1 (tests/hub_server.py; there is no hub access
    here, docs/design.md §8), with ``.url``, ``.token`` and ``.repo_files(repo_id) -> {path: bytes}``.

    For the test's duration ``$HF_ENDPOINT`` points at it (huggingface_hub read the variable at import, so code
    under test must pass ``endpoint=`` or re-read it, as ``st_instruct.hub`` does), the session-wide offline mode
    is lifted for huggingface_hub, and no token of this machine (``$HF_TOKEN``, the saved login) is visible.
    """
    import huggingface_hub.constants as hf_constants
    from hub_server import HubStandIn

    server = HubStandIn().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_hf_token"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def st_tok(tiny_tokenizer_dir):
    """The test tokenizer with the ST tokens, shared by the session: tests must not change it."""
    from transformers import AutoTokenizer

    from st_instruct.samples.st_tokens import add_st_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    add_st_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random Llama and the test tokenizer in one folder: a backbone by path, as a recipe names one. Hidden
    size 64: bitsandbytes' CPU inference path packs 4-bit weights in blocks of 64 inputs (qlora)."""
    from tiny import build_tiny_backbone
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    path = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_backbone("llama", vocab_size=len(tokenizer), hidden_size=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------ the bad-input suite (tests/bad_input/)


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> CliResult``: ``st-instruct`` with these arguments, in this process (``tests/cli_check.py``)."""
    from cli_check import CliResult

    from st_instruct.cli import main

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def datasets_read(monkeypatch):
    """The names of every dataset the test loads, in order: ``st_instruct.data.loaders.get_dataset`` recorded (every
    loader of a recipe's data goes through it)."""
    from st_instruct.data import loaders

    read: list[str] = []
    real = loaders.get_dataset

    def recording(name, **kwargs):
        read.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(loaders, "get_dataset", recording)
    return read
