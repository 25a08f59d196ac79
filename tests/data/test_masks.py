"""Properties of the MAE mask families (UniST, UrbanMind): fractions, structure, determinism, clear errors."""

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from st_instruct.data.graph import grid_adjacency
from st_instruct.data.masks import (
    MASK_FAMILIES,
    agnostic_mask,
    block_mask,
    channel_spatial_mask,
    channel_temporal_mask,
    draw_mask,
    random_mask,
    temporal_mask,
    tube_mask,
)

SHAPE = (64, 12, 20, 3)  # B, L, N, C
TOLERANCE = 0.05  # |batch masked fraction - ratio|; counts are exact per sample up to rounding


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def ring_with_chords(nodes=20):
    """A connected graph: a ring plus a few chords, as a dense [N, N] array."""
    adj = np.zeros((nodes, nodes), dtype=np.float32)
    for i in range(nodes):
        adj[i, (i + 1) % nodes] = 1.0
    adj[0, 10] = adj[5, 15] = 0.4  # one direction only: the masks symmetrise
    return adj


def hidden_nodes(mask):
    """[B, N] nodes hidden at some step and channel."""
    return mask.any(dim=(1, 3))


def components(adj, nodes):
    """Connected components of the sub-graph induced by ``nodes`` (a bool [N] mask) of ``adj`` [N, N]."""
    index = np.flatnonzero(nodes)
    sub = (adj != 0) | (adj != 0).T
    count, _ = connected_components(csr_matrix(sub[np.ix_(index, index)]), directed=False)
    return count


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_random_mask_hides_the_ratio_of_entries_of_each_sample(ratio):
    mask = random_mask(SHAPE, ratio, generator())
    assert mask.shape == SHAPE and mask.dtype == torch.bool
    per_sample = mask.flatten(1).float().mean(1)
    assert (per_sample - ratio).abs().max() <= 1 / mask[0].numel()  # exact up to rounding
    assert not torch.equal(mask[0], mask[1])  # each sample its own


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_tube_mask_hides_whole_nodes(ratio):
    mask = tube_mask(SHAPE, ratio, generator())
    nodes = hidden_nodes(mask)  # [B, N]
    assert torch.equal(mask, nodes[:, None, :, None].expand(SHAPE))  # every step and channel of a hidden node
    assert abs(mask.float().mean().item() - ratio) <= TOLERANCE
    assert (nodes.sum(1) == round(ratio * SHAPE[2])).all()


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_temporal_mask_hides_whole_steps(ratio):
    mask = temporal_mask(SHAPE, ratio, generator())
    steps = mask.any(dim=(2, 3))  # [B, L]
    assert torch.equal(mask, steps[:, :, None, None].expand(SHAPE))
    assert (steps.sum(1) == round(ratio * SHAPE[1])).all()
    assert abs(mask.float().mean().item() - ratio) <= TOLERANCE
    assert len({tuple(row.tolist()) for row in steps}) > 1  # random steps, not always the same ones


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_block_mask_on_a_connected_graph_is_one_connected_region(ratio):
    adj = ring_with_chords()
    mask = block_mask(SHAPE, ratio, generator(), adjacency=adj)
    nodes = hidden_nodes(mask)
    assert torch.equal(mask, nodes[:, None, :, None].expand(SHAPE))  # whole nodes
    assert (nodes.sum(1) == round(ratio * SHAPE[2])).all()
    for row in nodes.numpy():
        assert components(adj, row) == 1
    # not a tube mask in disguise: a random set of 10 of 20 ring nodes is almost never connected
    assert components(adj, tube_mask(SHAPE, 0.5, generator())[0].any(dim=(0, 2)).numpy()) > 1


def test_block_mask_regions_stay_inside_components_when_a_component_runs_out():
    """Two disjoint rings of 5 and 15 nodes, 12 nodes to hide: every region is connected, at most one per
    component, and the count is exact."""
    adj = np.zeros((20, 20), dtype=np.float32)
    for start, size in ((0, 5), (5, 15)):
        for i in range(size):
            adj[start + i, start + (i + 1) % size] = 1.0
    mask = block_mask((32, 4, 20, 1), 0.6, generator(), adjacency=torch.from_numpy(adj))
    rings = (np.arange(20) < 5, np.arange(20) >= 5)
    for row in hidden_nodes(mask).numpy():
        assert row.sum() == 12
        for ring in rings:
            if (row & ring).any():
                assert components(adj, row & ring) == 1  # one region per component, connected


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_block_mask_on_a_grid_is_one_rectangle(ratio):
    height, width = 6, 8
    shape = (128, 4, height * width, 2)
    mask = block_mask(shape, ratio, generator(), grid_shape=(height, width))
    nodes = hidden_nodes(mask)
    assert torch.equal(mask, nodes[:, None, :, None].expand(shape))
    for row in nodes.reshape(-1, height, width):
        rows, cols = row.any(1).nonzero().flatten(), row.any(0).nonzero().flatten()
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))  # contiguous rows and columns ...
        assert torch.equal(cols, torch.arange(cols[0], cols[-1] + 1))
        assert row.sum() == len(rows) * len(cols)  # ... and every cell between them: a rectangle
        assert 0 < row.sum() < height * width
    assert abs(mask.float().mean().item() - ratio) <= TOLERANCE
    # the grid adjacency sees one connected region too
    adj = grid_adjacency(height, width, 4)
    assert all(components(adj, row) == 1 for row in nodes.numpy())


@pytest.mark.parametrize("family", [channel_temporal_mask, channel_spatial_mask])
def test_channel_sensitive_masks_hide_one_channel_per_sample(family):
    ratio = 0.5
    mask = family(SHAPE, ratio, generator())
    channels = mask.any(dim=(1, 2))  # [B, C]
    assert (channels.sum(1) == 1).all()
    assert len(set(channels.float().argmax(1).tolist())) == SHAPE[3]  # every channel gets drawn in 64 samples
    chosen = mask[torch.arange(SHAPE[0]), :, :, channels.float().argmax(1)]  # [B, L, N] of the drawn channel
    assert abs(chosen.float().mean().item() - ratio) <= TOLERANCE
    if family is channel_temporal_mask:  # whole steps of that channel
        steps = chosen.any(2)
        assert torch.equal(chosen, steps[:, :, None].expand_as(chosen))
    else:  # whole nodes of that channel
        nodes = chosen.any(1)
        assert torch.equal(chosen, nodes[:, None, :].expand_as(chosen))


def kind(sample):
    """(whole steps, whole nodes, one channel) of one sample's mask [L, N, C]: tells the families apart."""
    whole_steps = torch.equal(sample, sample.any(dim=(1, 2), keepdim=True).expand_as(sample))
    whole_nodes = torch.equal(sample, sample.any(dim=(0, 2), keepdim=True).expand_as(sample))
    return whole_steps, whole_nodes, int(sample.any(dim=(0, 1)).sum()) == 1


def test_agnostic_mask_gives_each_sample_a_family_of_its_own():
    mask = agnostic_mask(SHAPE, 0.5, generator(), adjacency=ring_with_chords())
    assert mask.shape == SHAPE
    assert len({kind(sample) for sample in mask}) >= 4  # random, whole steps, whole nodes, one channel x 2


@pytest.mark.parametrize("family", [*MASK_FAMILIES, "mix"])
def test_same_generator_seed_gives_the_same_mask(family):
    adj = ring_with_chords()
    first = draw_mask(family, SHAPE, 0.4, generator(3), adjacency=adj)
    again = draw_mask(family, SHAPE, 0.4, generator(3), adjacency=adj)
    assert first.shape == SHAPE and first.dtype == torch.bool and torch.equal(first, again)
    masks = [draw_mask(family, SHAPE, 0.4, generator(seed), adjacency=adj) for seed in range(4, 8)]
    assert any(not torch.equal(first, other) for other in masks)


def test_mix_draws_one_family_per_call():
    draws = [draw_mask("mix", SHAPE, 0.5, generator(seed)) for seed in range(40)]
    kinds = [{kind(sample) for sample in mask} for mask in draws]
    assert all(len(found) == 1 for found in kinds)  # the whole batch of a call shares one family
    assert len(set.union(*kinds)) >= 4  # and the calls draw several ones (never block: no graph was given)


def test_bad_arguments_are_clear_errors():
    for ratio in (0, 1, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="ratio must be a fraction in"):
            draw_mask("random", SHAPE, ratio, generator())
    with pytest.raises(ValueError, match=r"shape must be \(B, L, N, C\)"):
        random_mask((4, 12, 20), 0.5, generator())
    with pytest.raises(ValueError, match="block masks need the graph: pass adjacency"):
        draw_mask("block", SHAPE, 0.5, generator())
    with pytest.raises(ValueError, match=r"adjacency must be \[N, N\] = \[20, 20\]"):
        block_mask(SHAPE, 0.5, generator(), adjacency=np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"grid_shape must be \(H, W\) with H \* W = N = 20"):
        block_mask(SHAPE, 0.5, generator(), grid_shape=(4, 4))
    with pytest.raises(ValueError, match="needs at least 2 of them, found 1"):
        tube_mask((2, 12, 1, 1), 0.5, generator())
    with pytest.raises(ValueError, match="family must be one of"):
        draw_mask("spiral", SHAPE, 0.5, generator())
