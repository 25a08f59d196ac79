import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny import st_sample

from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.tokenize import IGNORE_INDEX, tokenize_messages


def tokenised(tokenizer, sample_id, num_nodes=1, **kwargs):
    sample = st_sample(sample_id, num_nodes=num_nodes, **kwargs)
    sample.update(tokenize_messages(sample["messages"], tokenizer, sample_id=sample_id, num_nodes=num_nodes))
    return sample


def check_text(batch, samples, pad_id):
    lengths = [len(s["input_ids"]) for s in samples]
    for b, sample in enumerate(samples):
        n = lengths[b]
        assert batch["input_ids"][b, :n].tolist() == sample["input_ids"]
        assert batch["labels"][b, :n].tolist() == sample["labels"]
        assert (batch["input_ids"][b, n:] == pad_id).all()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_node_level_batch(st_tokenizer):
    samples = [tokenised(st_tokenizer, sid, seed=i) for i, sid in enumerate(["a", "bb-long-id", "c"])]
    batch = STDataCollator(st_tokenizer)(samples)
    width = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    check_text(batch, samples, st_tokenizer.pad_token_id)
    assert batch["his_positions"].shape == batch["pre_positions"].shape == batch["node_mask"].shape == (3, 1)
    assert batch["node_mask"].all()
    assert batch["history"].shape == batch["history_mask"].shape == (3, 12, 1, 2)
    assert batch["target"].shape == batch["target_mask"].shape == (3, 12, 1, 2)
    assert batch["history"].dtype == torch.float32 and batch["history_mask"].dtype == torch.bool
    assert batch["coords"].shape == (3, 1, 4) and batch["node_index"].dtype == torch.long
    assert batch["history_tod"].shape == batch["history_dow"].shape == (3, 12)
    assert batch["target_tod"].shape == (3, 12) and batch["scaler_mean"].shape == batch["scaler_std"].shape == (3, 2)
    for b, sample in enumerate(samples):
        np.testing.assert_array_equal(batch["history"][b].numpy(), sample["history"])
        assert batch["input_ids"][b, batch["pre_positions"][b, 0]] == st_tokenizer.convert_tokens_to_ids("<st_pre>")
    assert not any(key in batch for key in ("sample_id", "messages", "dataset", "city"))


def test_graph_batch_pads_nodes(st_tokenizer):
    samples = [tokenised(st_tokenizer, "g2", num_nodes=2), tokenised(st_tokenizer, "g4", num_nodes=4, seed=1),
               tokenised(st_tokenizer, "n1", num_nodes=1, seed=2)]
    batch = STDataCollator(st_tokenizer, pad_to_multiple_of=8)(samples)
    assert batch["input_ids"].shape[1] % 8 == 0
    check_text(batch, samples, st_tokenizer.pad_token_id)
    assert batch["node_mask"].tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert batch["history"].shape == (3, 12, 4, 2) and batch["target_mask"].shape == (3, 12, 4, 2)
    assert batch["coords"].shape == (3, 4, 4) and batch["node_index"].shape == (3, 4)
    for b, sample in enumerate(samples):
        n = len(sample["node_index"])
        assert batch["his_positions"][b, :n].tolist() == sample["his_positions"]
        assert batch["pre_positions"][b, :n].tolist() == sample["pre_positions"]
        assert (batch["his_positions"][b, n:] == 0).all() and (batch["pre_positions"][b, n:] == 0).all()
        np.testing.assert_array_equal(batch["target"][b, :, :n].numpy(), sample["target"])
        assert not batch["target_mask"][b, :, n:].any() and not batch["history_mask"][b, :, n:].any()
        assert (batch["history"][b, :, n:] == 0).all()


def test_rows_of_a_tokenised_dataset(st_tokenizer):
    from st_instruct.samples.tokenize import tokenize_dataset

    rows = [st_sample(f"s{i}", num_nodes=n, seed=i) for i, n in enumerate([1, 3])]
    dataset = tokenize_dataset(Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}), st_tokenizer)
    collator = STDataCollator(st_tokenizer)
    for rows in (list(dataset), list(dataset.with_format("numpy"))):
        batch = collator(rows)
        assert batch["history"].shape == (2, 12, 3, 2) and batch["node_mask"].sum().item() == 4
        assert batch["history_mask"].dtype == torch.bool


def test_mixed_history_lengths_are_refused(st_tokenizer):
    samples = [tokenised(st_tokenizer, "short", history=6), tokenised(st_tokenizer, "long", history=12)]
    with pytest.raises(ValueError, match=r"'history'.*'short' \(6, 1, 2\), 'long' \(12, 1, 2\)"):
        STDataCollator(st_tokenizer)(samples)


def test_arrays_must_match_the_prompt_slots(st_tokenizer):
    sample = tokenised(st_tokenizer, "x", num_nodes=2)
    sample["history"] = sample["history"][:, :1]
    with pytest.raises(ValueError, match="'history' of sample 'x' has 1 nodes"):
        STDataCollator(st_tokenizer)([sample])


def test_eos_pads_when_there_is_no_pad_token(st_tokenizer):
    st_tokenizer.pad_token = None
    samples = [tokenised(st_tokenizer, "a"), tokenised(st_tokenizer, "b" * 30)]
    batch = STDataCollator(st_tokenizer)(samples)
    check_text(batch, samples, st_tokenizer.eos_token_id)


def test_broadcast_channels_repeats_a_one_channel_sample_and_refuses_other_counts(st_tokenizer):
    one = tokenised(st_tokenizer, "speed", num_nodes=2, channels=1)
    batch = STDataCollator(st_tokenizer, broadcast_channels=3)([one])
    assert batch["history"].shape == (1, 12, 2, 3) and batch["scaler_mean"].shape == (1, 3)
    for key in ("history", "history_mask", "target", "target_mask", "scaler_mean", "scaler_std"):
        for c in range(3):
            np.testing.assert_array_equal(batch[key][..., c].numpy(), np.asarray(one[key])[None, ..., 0])
    two = tokenised(st_tokenizer, "flows", num_nodes=2, channels=2)
    with pytest.raises(ValueError, match=r"'history' has 2 channels .* needs 1 or 3"):
        STDataCollator(st_tokenizer, broadcast_channels=3)([two])
    # samples that already have the model's channels pass unchanged
    same = STDataCollator(st_tokenizer, broadcast_channels=2)([two])
    np.testing.assert_array_equal(same["history"][0].numpy(), two["history"])
