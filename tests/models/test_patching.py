"""``patching.add_forward_kwargs`` reads the cache length under the keyword of either transformers generation."""

import pytest
import torch
from transformers import DynamicCache

from st_instruct.models import patching


@pytest.mark.parametrize("cache_kwarg", patching.CACHE_KWARGS)
def test_added_kwargs_see_the_cache_length_under_either_keyword(cache_kwarg):
    """transformers 5.24 passes the key/value cache as ``cache``, earlier 5.x as ``past_key_values``; with the
    wrong name the past length reads 0 and cached decoding rotates new tokens as if they were at the start."""
    from tiny import build_tiny_backbone

    model = build_tiny_backbone("llama", vocab_size=64, hidden_size=32)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 5)), past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 5
    seen = []
    handle = patching.add_forward_kwargs(model, lambda past: seen.append(past) or {})
    try:
        patching.base_model(model)(input_ids=torch.randint(0, 64, (1, 1)), **{cache_kwarg: cache}, use_cache=True)
    finally:
        handle.remove()
    assert seen == [5]
