"""Building streams (issue 26): a split's samples are rendered one record batch at a time and written to disk as
they come, so the memory a build holds is one batch, not the split."""

import itertools
import weakref

import datasets
import pyarrow as pa
from datasets.table import MemoryMappedTable

from st_instruct.configs import DataConfig
from st_instruct.data.loaders import load_series
from st_instruct.data.windows import SPLITS
from st_instruct.samples import builder
from st_instruct.samples.builder import build_dataset


class BatchSpy:
    """Wraps ``builder.record_batch``: counts the batches the builder made that are alive at once, and the Arrow
    memory allocated (``pa.total_allocated_bytes``) when each is made, i.e. with every earlier batch that is still
    held."""

    def __init__(self, real):
        self.real, self.alive, self.most_alive, self.allocated, self.sizes = real, set(), 0, [], []
        self.ids = itertools.count()

    def __call__(self, columns, schema):
        batch = self.real(columns, schema)
        key = next(self.ids)
        self.alive.add(key)
        weakref.finalize(batch, self.alive.discard, key)
        self.most_alive = max(self.most_alive, len(self.alive))
        self.allocated.append(pa.total_allocated_bytes())
        self.sizes.append(batch.nbytes)
        return batch


def test_a_build_holds_one_record_batch_not_the_split(tmp_path, monkeypatch):
    # every window of synthetic-small, one zone per sample: ~16k samples in ~100 batches of 12 windows x 12 nodes
    monkeypatch.setattr(builder, "CHUNK_SAMPLES", 144)
    spy = BatchSpy(builder.record_batch)
    monkeypatch.setattr(builder, "record_batch", spy)
    config = DataConfig(dataset_names=["synthetic-small"], dataset_cache_dir=str(tmp_path / "cache"))
    built = build_dataset(config)

    batches = len(spy.sizes)
    assert batches >= 60 and sum(len(split) for split in built.values()) > 130 * batches
    # at most the batch being written and the next one being made; a build that collects them holds all ~100
    assert spy.most_alive <= 2, f"{spy.most_alive} of {batches} record batches were held at once"
    # the Arrow memory live when a batch is made stays about one batch, however many batches came before it
    # (held batches add up to the split: ~13 MB here, against ~0.1 MB when streaming)
    growth = max(spy.allocated) - min(spy.allocated)
    assert growth <= 3 * max(spy.sizes), (
        f"Arrow memory grew by {growth} bytes over {batches} batches of <= {max(spy.sizes)} bytes")

    # the result is memory-mapped from the cache, and the scratch stream files are gone
    path = tmp_path / "cache" / builder.dataset_fingerprint(config)
    assert sorted(p.name for p in path.iterdir()) == sorted(["dataset_dict.json", *SPLITS])
    for split in SPLITS:
        assert isinstance(built[split].data, MemoryMappedTable) and built[split].cache_files


def test_streamed_split_file_equals_the_in_memory_table(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "CHUNK_SAMPLES", 50)  # several batches per source, a short last one
    config = DataConfig(dataset_names=["synthetic-small", "synthetic-grid"], window_sample=9, granularity="graph",
                        template="forecast_graph", dataset_cache_dir=str(tmp_path / "cache"))
    plans = [builder.plan_source(data, config) for data in load_series(config)]
    template = builder.load_template(config.template)
    for split in SPLITS:
        table = builder.build_split_table(plans, split, template, "graph")
        rows = builder.write_split(plans, split, template, "graph", tmp_path / f"{split}.arrow")
        streamed = MemoryMappedTable.from_file(str(tmp_path / f"{split}.arrow"))
        assert rows == table.num_rows == streamed.num_rows > 0
        assert streamed.table.equals(table) and streamed.schema.equals(table.schema, check_metadata=True)
        assert datasets.Dataset(streamed).features == builder.sample_features()
