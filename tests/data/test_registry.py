"""Registry of named datasets: specs, resolution order, and verified downloads from a 127.0.0.1 server."""

import functools
import hashlib
import http.server
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from st_instruct.data import registry
from st_instruct.data.registry import (
    DATASETS,
    ChecksumError,
    DataFile,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    UnknownDatasetError,
    download_dataset,
    sha256_file,
)

NAMES = ["nyc-taxi", "nyc-bike", "los-loop", "nycbike1-grid", "beijing-air", "pedalme-london", "pems04", "pems08"]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test reads the user's cache or a data dir from the environment, or downloads from the internet."""
    for var in ("ST_INSTRUCT_DATA", "ST_INSTRUCT_DOWNLOAD_BASE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def shared_root():
    root = registry.find_dataset_dir("nycbike1-grid")
    if root is None or root not in registry.shared_data_dirs():
        pytest.skip(reason="../shared/data (real datasets) not found next to the repository or the working dir")
    return root


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """``(root served, base_url, hits)`` of an HTTP server on 127.0.0.1 (the only network tests use)."""
    root = tmp_path / "served"
    root.mkdir()
    hits: list[str] = []
    handler = type("Handler", (_Handler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def _tiny_spec(monkeypatch, sha: str | None, name: str = "tiny") -> DatasetSpec:
    spec = DatasetSpec(name, (DataFile("tiny/series.npy", sha, "https://example.invalid/tiny.npy"),), "1h",
                       ("x",), ("",), None, "Nowhere", "test dataset", (4, 3, 1))
    monkeypatch.setitem(DATASETS, name, spec)
    return spec


def _serve_tiny(root: Path) -> bytes:
    (root / "tiny").mkdir()
    np.save(root / "tiny/series.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    return (root / "tiny/series.npy").read_bytes()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ------------------------------------------------------------------------------------------------ specs
def test_registry_names_and_spec_consistency():
    assert list(DATASETS) == NAMES
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert len(spec.channels) == len(spec.units) == spec.shape[2]
        paths = [f.path for f in spec.files]
        assert len(set(paths)) == len(paths)
        for f in spec.files:
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert (f.url is None) == (f.derive is not None)
            assert f.url is None or f.url.startswith("https://raw.githubusercontent.com/")


def test_registry_checksums_match_shared_data(shared_root):
    for spec in DATASETS.values():
        for f in spec.files:
            path = shared_root / f.path
            if path.is_file():
                assert sha256_file(path) == f.sha256, f.path


def test_local_names_differ_from_upstream_names_where_renamed():
    taxi = DATASETS["nyc-taxi"].files[0]
    assert taxi.path.endswith("nyctaxi_inoutflow_60min_2019_2020.npz")
    assert taxi.url.endswith("data-NYCTaxi/60min/201901-202012-NYCtaxi-inoutflow.npz")
    assert DATASETS["pems08"].files[1].url.endswith("data/PEMS08/distance.csv")


def test_beijing_station_file_is_rebuilt_byte_for_byte(tmp_path):
    stations = next(f for f in DATASETS["beijing-air"].files if f.path.endswith("stations.csv"))
    stations.derive(tmp_path, tmp_path / "stations.csv")
    assert sha256_file(tmp_path / "stations.csv") == stations.sha256


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'nyc-txi'; did you mean 'nyc-taxi'"):
        registry.get_spec("nyc-txi")
    with pytest.raises(UnknownDatasetError, match="did you mean 'pems08'"):
        download_dataset("pems8")


# ------------------------------------------------------------------------------------------------ resolution
def _pedalme_dir(root: Path, value: float) -> Path:
    """A data dir holding a tiny pedalme_london.json whose X is filled with ``value``."""
    d = root / "pedalme_london"
    d.mkdir(parents=True)
    (d / "pedalme_london.json").write_text(f'{{"edges": [[0, 1]], "weights": [1.0], "X": [[{value}, 0], [1, 1]]}}')
    return root


def test_resolution_order_explicit_env_shared_cache(monkeypatch, tmp_path):
    from st_instruct.data.loaders import get_dataset

    explicit, env, shared, cache = (_pedalme_dir(tmp_path / n, v) for n, v in
                                    [("explicit", 1), ("env", 2), ("shared", 3), ("cache", 4)])
    monkeypatch.setattr(registry, "shared_data_dirs", lambda: [shared])
    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(cache))
    monkeypatch.setenv("ST_INSTRUCT_DATA", str(env))

    def first_value(**kw):
        return get_dataset("pedalme-london", **kw).values[0, 0, 0]

    assert first_value(data_dir=explicit) == 1  # explicit path beats the environment
    assert first_value() == 2  # env var beats ../shared/data
    monkeypatch.delenv("ST_INSTRUCT_DATA")
    assert first_value() == 3  # ../shared/data beats the cache
    monkeypatch.setattr(registry, "shared_data_dirs", lambda: [tmp_path / "nowhere"])
    assert first_value() == 4


def test_a_directory_counts_only_with_all_files(monkeypatch, tmp_path):
    partial = tmp_path / "partial" / "nyc_manhattan_bike_taxi"
    partial.mkdir(parents=True)
    (partial / "manhattan_zones.csv").write_text("zone_id,graph_id,zone_name\n")
    monkeypatch.setenv("ST_INSTRUCT_DATA", str(tmp_path / "partial"))
    assert registry.find_dataset_dir("nyc-taxi") != tmp_path / "partial"
    with pytest.raises(DatasetNotFoundError, match=r"data_dir argument: .*partial"):
        registry.resolve_dataset_dir("nyc-taxi", data_dir=tmp_path / "partial")  # explicit: no fall-through


def test_missing_everywhere_says_where_it_looked_and_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("ST_INSTRUCT_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        registry.resolve_dataset_dir("pems04")
    msg = str(info.value)
    assert "$ST_INSTRUCT_DATA" in msg and "../shared/data" in msg and "user cache" in msg
    assert str(tmp_path / "default-cache") in msg
    assert "not in ../shared/data" in msg and "st-instruct data download pems04" in msg


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    assert registry.default_cache_dir() == tmp_path / "default-cache"
    monkeypatch.delenv("ST_INSTRUCT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.default_cache_dir() == tmp_path / "xdg" / "st_instruct" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.default_cache_dir() == Path.home() / ".cache" / "st_instruct" / "data"


# ------------------------------------------------------------------------------------------------ download
def test_download_verifies_and_keeps_a_good_file(monkeypatch, tmp_path, server):
    served, base_url, hits = server
    payload = _serve_tiny(served)
    _tiny_spec(monkeypatch, hashlib.sha256(payload).hexdigest())
    cache = tmp_path / "cache"
    assert download_dataset("tiny", cache_dir=cache, base_url=base_url) == cache
    assert (cache / "tiny/series.npy").read_bytes() == payload
    assert _files(cache) == [cache / "tiny/series.npy"]  # no temp file left
    assert registry.find_dataset_dir("tiny", data_dir=cache) == cache
    download_dataset("tiny", cache_dir=cache, base_url=base_url)
    assert hits == ["/tiny/series.npy"]  # a verified file is not fetched again


def test_download_base_url_from_env_and_default_cache(monkeypatch, tmp_path, server):
    served, base_url, _ = server
    payload = _serve_tiny(served)
    _tiny_spec(monkeypatch, hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv("ST_INSTRUCT_DOWNLOAD_BASE", base_url)
    root = download_dataset("tiny")
    assert root == tmp_path / "default-cache" and (root / "tiny/series.npy").read_bytes() == payload


def test_checksum_mismatch_deletes_the_file(monkeypatch, tmp_path, server):
    served, base_url, _ = server
    payload = _serve_tiny(served)
    good = hashlib.sha256(payload).hexdigest()
    _tiny_spec(monkeypatch, good)
    (served / "tiny/series.npy").write_bytes(payload[:-1] + b"\x00")  # corrupted in transit / upstream
    bad = hashlib.sha256((served / "tiny/series.npy").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        download_dataset("tiny", cache_dir=cache, base_url=base_url)
    assert "tiny/series.npy" in str(info.value) and good in str(info.value) and bad in str(info.value)
    assert _files(cache) == [] and not cache.exists()


def test_http_error_names_the_url_and_leaves_nothing(monkeypatch, tmp_path, server):
    _, base_url, _ = server
    _tiny_spec(monkeypatch, "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"could not download tiny/series.npy from http://127.0.0.1:\d+/tiny"):
        download_dataset("tiny", cache_dir=cache, base_url=base_url)
    assert _files(cache) == []


def test_unverified_file_is_refused_unless_pinned_or_allowed(monkeypatch, tmp_path, server, capsys):
    served, base_url, hits = server
    payload = _serve_tiny(served)
    _tiny_spec(monkeypatch, None)
    with pytest.raises(DownloadError, match=r"no published sha256 .*expected_sha256=.*allow_unverified=True"):
        download_dataset("tiny", cache_dir=tmp_path / "a", base_url=base_url)
    assert hits == []  # refused before downloading anything
    sha = hashlib.sha256(payload).hexdigest()
    download_dataset("tiny", cache_dir=tmp_path / "b", base_url=base_url, expected_sha256=sha)
    with pytest.raises(ChecksumError):
        download_dataset("tiny", cache_dir=tmp_path / "c", base_url=base_url, expected_sha256={"series.npy": "1" * 64})
    download_dataset("tiny", cache_dir=tmp_path / "d", base_url=base_url, allow_unverified=True)
    assert f"sha256 {sha}" in capsys.readouterr().err and (tmp_path / "d/tiny/series.npy").is_file()
    with pytest.raises(DownloadError, match="'nope.npy', which is not a file of dataset 'tiny'"):
        download_dataset("tiny", cache_dir=tmp_path / "e", base_url=base_url, expected_sha256={"nope.npy": sha})


def test_download_derives_the_nycbike1_grid_from_val_and_test(tmp_path, server, shared_root):
    served, base_url, hits = server
    for f in ("adj_mx.npz", "val.npz", "test.npz"):
        (served / "nycbike1_stssl").mkdir(exist_ok=True)
        (served / "nycbike1_stssl" / f).write_bytes((shared_root / "nycbike1_stssl" / f).read_bytes())
    cache = download_dataset("nycbike1-grid", cache_dir=tmp_path / "cache", base_url=base_url)
    assert "/nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz" not in hits  # built locally, never fetched
    with np.load(cache / "nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz") as built, \
            np.load(shared_root / "nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz") as ref:
        assert built["data"].dtype == np.int16 and np.array_equal(built["data"], ref["data"])
    assert sorted(p.name for p in _files(cache)) == ["NYCBike1_valtest_grid_TCHW.npz", "adj_mx.npz", "test.npz",
                                                     "val.npz"]
