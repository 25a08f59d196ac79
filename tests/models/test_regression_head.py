import torch

from st_instruct.models.regression_head import RegressionHead, gather_positions

B, S, H, P, C = 2, 20, 16, 3, 2


def setup():
    torch.manual_seed(0)
    head = RegressionHead(H, P, C, dim=8)
    hidden = torch.randn(B, S, H)
    his = torch.tensor([[2, 5, 0], [3, 0, 0]])  # sample 1 has one node; its padded positions point at token 0
    pre = torch.tensor([[12, 14, 0], [15, 0, 0]])
    node_mask = torch.tensor([[True, True, False], [True, False, False]])
    return head, hidden, his, pre, node_mask


def test_shape_and_padded_nodes():
    head, hidden, his, pre, node_mask = setup()
    out = head.from_hidden_states(hidden, his, pre, node_mask)
    assert out.shape == (B, P, 3, C)
    assert (out[0, :, 2] == 0).all() and (out[1, :, 1:] == 0).all() and (out[0, :, :2] != 0).all()


def test_reads_exactly_the_his_and_pre_positions():
    head, hidden, his, pre, node_mask = setup()
    out = head.from_hidden_states(hidden, his, pre, node_mask)
    read = torch.zeros(B, S, dtype=torch.bool)
    for positions in (his, pre):
        read[torch.nonzero(node_mask, as_tuple=True)[0], positions[node_mask]] = True
    noise = torch.where(read[..., None], torch.zeros_like(hidden), 100 * torch.randn_like(hidden))
    torch.testing.assert_close(head.from_hidden_states(hidden + noise, his, pre, node_mask), out)
    # a change at node 1's <st_pre> moves node 1's forecast and nothing else
    moved = hidden.clone()
    moved[0, 14] += 1.0
    changed = head.from_hidden_states(moved, his, pre, node_mask)
    assert not torch.allclose(changed[0, :, 1], out[0, :, 1])
    torch.testing.assert_close(changed[0, :, 0], out[0, :, 0])
    torch.testing.assert_close(changed[1], out[1])


def test_formula():
    head, hidden, his, pre, node_mask = setup()
    act = torch.nn.functional.leaky_relu
    h_his, h_pre = hidden[0, 5], hidden[0, 14]
    expected = head.out(torch.cat([act(head.his(h_his)), act(head.pre(h_pre))])).reshape(P, C)
    torch.testing.assert_close(head.from_hidden_states(hidden, his, pre, node_mask)[0, :, 1], expected)
    assert torch.equal(gather_positions(hidden, his)[1, 0], hidden[1, 3])
