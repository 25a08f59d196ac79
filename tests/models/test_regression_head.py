import pytest
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


def test_skip_path_closed_equals_the_plain_head_and_both_parts_get_gradients():
    head, hidden, his, pre, node_mask = setup()
    torch.manual_seed(0)
    gated = RegressionHead(H, P, C, dim=8, skip_dim=5)  # same seed: W1..W3 are drawn first, so they are the same
    assert all(torch.equal(value, gated.state_dict()[key]) for key, value in head.state_dict().items())
    skip = torch.randn(B, 3, 5)
    assert gated.gate.item() == 0
    closed = gated.from_hidden_states(hidden, his, pre, node_mask, skip)
    assert torch.equal(closed, head.from_hidden_states(hidden, his, pre, node_mask))
    closed.square().sum().backward()
    assert gated.gate.grad.abs() > 0 and (gated.skip.weight.grad == 0).all()  # closed: only the gate learns at first
    with torch.no_grad():
        gated.gate.fill_(0.5)
    gated.zero_grad()
    opened = gated.from_hidden_states(hidden, his, pre, node_mask, skip)
    expected = head.from_hidden_states(hidden, his, pre, node_mask) + 0.5 * (
        gated.skip(skip).reshape(B, 3, P, C).transpose(1, 2) * node_mask[:, None, :, None])
    torch.testing.assert_close(opened, expected)
    opened.square().sum().backward()
    assert gated.gate.grad.abs() > 0 and gated.skip.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="skip_features must be given exactly when"):
        gated.from_hidden_states(hidden, his, pre, node_mask)
    with pytest.raises(ValueError, match="skip_features must be given exactly when"):
        head.from_hidden_states(hidden, his, pre, node_mask, skip)
