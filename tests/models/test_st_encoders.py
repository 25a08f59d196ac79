import pytest
import torch

from st_instruct.models.st_encoders import (
    DilatedTCNEncoder,
    GatedDilatedBlock,
    PatchEmbeddingEncoder,
    STProjector,
    TimeSpaceEmbedding,
)

L, C, K = 12, 2, 4


def inputs(batch=2, nodes=3, seed=0, coord_dim=K):
    g = torch.Generator().manual_seed(seed)
    return {
        "history": torch.randn(batch, L, nodes, C, generator=g),
        "history_mask": torch.rand(batch, L, nodes, C, generator=g) > 0.2,
        "history_tod": torch.randint(0, 24, (batch, L), generator=g),
        "history_dow": torch.randint(0, 7, (batch, L), generator=g),
        "coords": torch.randn(batch, nodes, coord_dim, generator=g),
        "node_mask": torch.ones(batch, nodes, dtype=torch.bool),
    }


def encoders(coord_dim=K):
    torch.manual_seed(0)
    built = [PatchEmbeddingEncoder(L, C, coord_dim, dim=8), DilatedTCNEncoder(L, C, coord_dim, dim=8),
             PatchEmbeddingEncoder(L, C, coord_dim, dim=8, mlp_layers=2),  # STID's fusion blocks after the concat
             DilatedTCNEncoder(L, C, coord_dim, dim=8, mlp_layers=2)]
    return [encoder.eval() for encoder in built]  # the fusion's dropout off: outputs comparable across calls


ENCODER_IDS = ["patch", "tcn", "patch+fusion", "tcn+fusion"]


@pytest.mark.parametrize("index", range(4), ids=ENCODER_IDS)
def test_shapes_padding_and_node_independence(index):
    encoder = encoders()[index]
    x = inputs(nodes=5)
    x["node_mask"][1, 3:] = False
    out = encoder(**x)
    assert out.shape == (2, 5, encoder.out_dim) and encoder.out_dim == 32
    assert (out[1, 3:] == 0).all() and (out[1, :3] != 0).any()
    # one vector per node from that node alone: node 2 encoded alone equals node 2 inside the graph (N'=1 vs N'=5)
    alone = {key: (value[:, :, 2:3] if key.startswith("history") and value.ndim == 4 else value) for key, value in
             x.items()}
    alone["coords"], alone["node_mask"] = x["coords"][:, 2:3], x["node_mask"][:, 2:3]
    torch.testing.assert_close(encoder(**alone)[0, 0], out[0, 2])


@pytest.mark.parametrize("index", range(4), ids=ENCODER_IDS)
def test_missing_values_are_ignored(index):
    encoder = encoders()[index]
    x = inputs()
    changed = dict(x, history=torch.where(x["history_mask"], x["history"], torch.full_like(x["history"], 1e6)))
    torch.testing.assert_close(encoder(**changed), encoder(**x))
    # but the mask itself is information: a gap differs from an observed zero
    zeros = dict(x, history=torch.zeros_like(x["history"]))
    assert not torch.equal(encoder(**zeros), encoder(**dict(zeros, history_mask=torch.ones_like(x["history_mask"]))))


def test_time_of_day_is_read_at_the_table_resolution():
    embed = TimeSpaceEmbedding(dim=4, coord_dim=K, steps_per_day=288)
    coords = torch.zeros(2, 1, K)
    dow = torch.zeros(2, 1, dtype=torch.long)
    hourly_five_pm, five_min_five_pm = torch.tensor([[17], [204]]), torch.tensor([24, 288])
    out = embed(hourly_five_pm, dow, coords, 1, steps_per_day=five_min_five_pm)
    torch.testing.assert_close(out[0], out[1])
    # without the data's frequency, any step is taken modulo the table size rather than failing
    wrapped = embed(torch.tensor([[300], [12]]), dow, coords, 1)
    torch.testing.assert_close(wrapped[0], wrapped[1])


def test_no_coordinates():
    encoder = encoders(coord_dim=0)[0]
    out = encoder(**inputs(coord_dim=0))
    assert out.shape == (2, 3, 32) and (out[..., -8:] == 0).all()


def test_bad_shapes_say_what_differs():
    encoder = encoders()[1]
    with pytest.raises(ValueError, match=r"coords have 3 values per node .* coord_dim=4"):
        encoder(**inputs(coord_dim=3))
    x = inputs()
    x["history"], x["history_mask"] = x["history"][:, :6], x["history_mask"][:, :6]
    with pytest.raises(ValueError, match=r"history must be \[B, L=12, N, C=2\].*\(2, 6, 3, 2\)"):
        encoder(**x)


def test_gated_dilated_block_is_causal():
    torch.manual_seed(0)
    block = GatedDilatedBlock(dim=4, kernel_size=2, dilation=4)
    x = torch.randn(1, 4, 12)
    later = x.clone()
    later[..., 7:] += 1.0
    torch.testing.assert_close(block(later)[..., :7], block(x)[..., :7])
    assert not torch.allclose(block(later)[..., 7:], block(x)[..., 7:])


def test_projector():
    x = torch.randn(2, 3, 32)
    assert STProjector(32, 48)(x).shape == (2, 3, 48)
    assert STProjector(32, 48, layers=2)(x).shape == (2, 3, 48)
    with pytest.raises(ValueError, match="1 \\(linear\\) or 2 \\(MLP\\), found 3"):
        STProjector(32, 48, layers=3)


def test_fusion_blocks_are_stid_residual_mlps_and_none_add_no_parameters():
    plain, _, fused, _ = encoders()
    assert len(fused.fusion) == 2 and not list(plain.fusion.parameters())
    assert set(plain.state_dict()) == {k for k in fused.state_dict() if not k.startswith("fusion.")}
    plain.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("fusion.")})
    x = inputs()
    torch.testing.assert_close(fused(**x), fused.fusion(plain(**x)))


@pytest.mark.parametrize(("steps", "height", "width", "time", "space"),
                         [(12, 5, 7, 2, 2), (11, 3, 5, 3, 2), (12, 9, 4, 4, 3), (1, 1, 1, 2, 2)])
def test_3d_patching_inverts_on_odd_grid_sizes(steps, height, width, time, space):
    """UniST's cut of [T, C, H, W] into t x p x p patches, padded where a side is not a multiple, and back."""
    from st_instruct.models.st_encoders import patchify_3d, unpatchify_3d

    x = torch.randn(2, 3, steps, height, width)
    patches = patchify_3d(x, time, space)
    assert patches.shape == (2, -(-steps // time), -(-height // space), -(-width // space), 3 * time * space**2)
    assert torch.equal(unpatchify_3d(patches, 3, time, space, (steps, height, width)), x)
    # one patch holds exactly its cells: the latest `time` steps of the top-left `space` x `space` block
    first = patches[0, -1, 0, 0].reshape(3, time, space, space)
    h, w = min(space, height), min(space, width)
    assert torch.equal(first[:, -min(time, steps):, :h, :w], x[0, :, -min(time, steps):, :h, :w])


def grid_inputs(height=5, width=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cells = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
    nodes = height * width
    return {"history": torch.randn(2, L, nodes, C, generator=g), "history_mask": torch.rand(2, L, nodes, C,
                                                                                          generator=g) > 0.1,
            "history_tod": torch.randint(0, 24, (2, L), generator=g), "history_dow": torch.randint(0, 7, (2, L)),
            "coords": cells[None].expand(2, -1, -1).clone(), "node_mask": torch.ones(2, nodes, dtype=torch.bool)}


def test_grid_patch_encoder_places_nodes_by_their_cell_not_their_order():
    from st_instruct.models.st_encoders import GridPatchEncoder

    torch.manual_seed(0)
    encoder = GridPatchEncoder(L, C, 2, dim=8, patch_time=3, patch_space=2).eval()
    batch = grid_inputs()
    out = encoder(**batch)
    assert out.shape == (2, 35, 32)
    order = torch.randperm(35)
    shuffled = dict(batch, history=batch["history"][:, :, order], history_mask=batch["history_mask"][:, :, order],
                    coords=batch["coords"][:, order], node_mask=batch["node_mask"][:, order])
    torch.testing.assert_close(encoder(**shuffled), out[:, order])
    # a cell's token reads the other cells of its patch (rows 0-1, cols 0-1), not cells outside it
    changed = dict(batch, history=batch["history"].clone())
    changed["history"][:, :, 1] += 5.0  # cell (0, 1)
    delta = (encoder(**changed) - out).abs().sum(dim=-1)[0]
    assert delta[0] > 0 and delta[7] > 0 and delta[2] == 0 and delta[14] == 0  # (0,0), (1,0) moved; (0,2), (2,0) not
    # a subset of the cells with padding: the padded node is zero and the others unchanged by it
    subset = dict(batch, history=batch["history"][:, :, :20], history_mask=batch["history_mask"][:, :, :20],
                  coords=batch["coords"][:, :20], node_mask=batch["node_mask"][:, :20].clone())
    subset["node_mask"][:, -1] = False
    assert not encoder(**subset)[:, -1].any()
    with pytest.raises(ValueError, match="needs coordinates: grid"):
        GridPatchEncoder(L, C, 4)
