import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from st_instruct.samples.st_tokens import ST_END, ST_HIS, ST_PRE, ST_START, ST_TOKENS, add_st_tokens, st_token_ids


def tiny_llama(vocab_size: int, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def test_constants():
    assert ST_TOKENS == (ST_START, ST_HIS, ST_PRE, ST_END) == ("<st_start>", "<st_his>", "<st_pre>", "<st_end>")


def test_added_once_with_stable_ids(tiny_tokenizer):
    size = len(tiny_tokenizer)
    ids = add_st_tokens(tiny_tokenizer)
    assert len(tiny_tokenizer) == size + 4
    assert sorted([ids.start, ids.his, ids.pre, ids.end]) == list(range(size, size + 4))
    assert add_st_tokens(tiny_tokenizer) == ids
    assert len(tiny_tokenizer) == size + 4
    assert st_token_ids(tiny_tokenizer) == ids


def test_tokens_are_special_and_never_split(st_tokenizer):
    ids = st_token_ids(st_tokenizer)
    encoded = st_tokenizer("zone<st_start><st_his><st_end> x<st_pre>", add_special_tokens=False).input_ids
    assert [ids.start, ids.his, ids.end] == encoded[encoded.index(ids.start):encoded.index(ids.start) + 3]
    assert ids.pre in encoded
    assert set(ST_TOKENS) <= set(st_tokenizer.all_special_tokens)
    assert "<st" not in st_tokenizer.decode(encoded, skip_special_tokens=True)


def test_ids_survive_save_and_load(st_tokenizer, tmp_path):
    st_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert st_token_ids(loaded) == st_token_ids(st_tokenizer)
    assert add_st_tokens(loaded) == st_token_ids(st_tokenizer) and len(loaded) == len(st_tokenizer)
    text = "history <st_start><st_his><st_end>"
    assert loaded(text).input_ids == st_tokenizer(text).input_ids


def test_missing_tokens_error_says_what_to_do(tiny_tokenizer):
    with pytest.raises(ValueError, match="add_st_tokens"):
        st_token_ids(tiny_tokenizer)


@pytest.mark.parametrize("tie", [False, True])
def test_new_embedding_rows_are_exactly_the_mean(tiny_tokenizer, tie):
    old_size = len(tiny_tokenizer)
    model = tiny_llama(old_size, tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()

    ids = add_st_tokens(tiny_tokenizer, model)

    new_in = model.get_input_embeddings().weight
    new_out = model.get_output_embeddings().weight
    assert new_in.shape == (old_size + 4, 32) and new_out.shape == (old_size + 4, 32)
    assert model.config.vocab_size == old_size + 4
    assert torch.equal(new_in[:old_size], old_in)
    assert torch.equal(new_out[:old_size], old_out)
    for token in (ids.start, ids.his, ids.pre, ids.end):
        assert torch.equal(new_in[token], old_in.mean(dim=0))
        assert torch.equal(new_out[token], old_out.mean(dim=0))
    assert (new_in.data_ptr() == new_out.data_ptr()) == tie

    with torch.no_grad():  # training moved the rows; adding again must keep them
        new_in[ids.pre] += 1.0
    trained = new_in.detach().clone()
    assert add_st_tokens(tiny_tokenizer, model) == ids
    assert torch.equal(model.get_input_embeddings().weight, trained)


def test_model_resized_for_tokens_added_earlier(st_tokenizer):
    model = tiny_llama(len(st_tokenizer) - 4)
    old = model.get_input_embeddings().weight.detach().clone()
    add_st_tokens(st_tokenizer, model)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(st_tokenizer)
    assert torch.equal(weight[-4:], old.mean(dim=0).expand(4, -1))


def test_padded_vocabulary_rows_are_reused_and_mean_initialised(tiny_tokenizer):
    old_size = len(tiny_tokenizer)
    model = tiny_llama(old_size + 16)  # vocabularies padded to a multiple leave unused rows
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_st_tokens(tiny_tokenizer, model)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == old_size + 16
    assert torch.equal(weight[ids.his], old[:old_size].mean(dim=0))
    assert torch.equal(weight[old_size + 4:], old[old_size + 4:])
