"""Graph utilities: kernels, distances, normalisation, Laplacian eigenvectors, grids."""

import numpy as np
import pytest

from st_instruct.data.graph import (
    edge_list_to_dense,
    gaussian_kernel_adjacency,
    grid_adjacency,
    grid_coordinates,
    haversine_km,
    laplacian_eigenvectors,
    normalize_adjacency,
)


def test_haversine_known_distance():
    # Beijing Dongsi (39.929, 116.417) to Tiantan (39.886, 116.407): about 4.9 km
    d = haversine_km(np.array([[39.929, 116.417], [39.886, 116.407]]))
    assert d[0, 1] == pytest.approx(4.87, abs=0.05)
    assert d[0, 0] == 0 and d[0, 1] == d[1, 0]
    # one degree of latitude is about 111.2 km
    assert haversine_km(np.array([[0.0, 0.0], [1.0, 0.0]]))[0, 1] == pytest.approx(111.2, abs=0.1)
    with pytest.raises(ValueError, match="lat, lon"):
        haversine_km(np.array([[116.4, 39.9]]))


def test_gaussian_kernel():
    d = np.array([[0.0, 1.0, 3.0], [1.0, 0.0, np.inf], [3.0, np.inf, 0.0]])
    a = gaussian_kernel_adjacency(d, sigma=1.0, threshold=0.05)
    assert a[0, 1] == pytest.approx(np.exp(-0.5))
    assert a[0, 2] == 0.0  # exp(-4.5) = 0.011 < threshold
    assert a[1, 2] == 0.0 and (np.diag(a) == 1).all()
    with pytest.raises(ValueError, match="square"):
        gaussian_kernel_adjacency(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_kernel_adjacency(np.array([[0.0, np.nan], [1.0, 0.0]]))


def test_edge_list_to_dense():
    edges = np.array([[0, 1, 10.0], [1, 2, 20.0]])
    binary = edge_list_to_dense(edges, 3, weights="binary")
    assert binary.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    gauss = edge_list_to_dense(edges, 3)
    assert gauss[0, 1] > gauss[1, 2] > 0 and gauss[0, 2] == 0
    with pytest.raises(ValueError, match="outside 0..2"):
        edge_list_to_dense(np.array([[0, 3, 1.0]]), 3)


def test_normalisation():
    a = np.array([[0, 1.0], [1.0, 0]])
    rw = normalize_adjacency(a, "rw")
    np.testing.assert_allclose(rw.sum(1), 1.0, rtol=1e-6)
    sym = normalize_adjacency(a, "sym")
    np.testing.assert_allclose(sym, sym.T)
    np.testing.assert_allclose(sym, [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)


def test_laplacian_eigenvectors_of_a_path_are_smooth_and_deterministic():
    n = 10
    a = np.zeros((n, n))
    a[np.arange(n - 1), np.arange(1, n)] = 1
    a = a + a.T
    v = laplacian_eigenvectors(a, 3)
    assert v.shape == (n, 3)
    # the Fiedler vector of a path splits it into two halves (one sign change), higher ones change sign more
    assert [int((np.diff(np.sign(v[:, i])) != 0).sum()) for i in range(3)] == [1, 2, 3]
    # orthonormal columns, orthogonal to the trivial eigenvector D^1/2 * 1
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(v.T @ np.sqrt(a.sum(1)), 0.0, atol=1e-5)
    np.testing.assert_array_equal(v, laplacian_eigenvectors(a, 3))
    # more columns than the graph supports are zero-padded
    assert laplacian_eigenvectors(a[:3, :3], 5)[:, 2:].tolist() == [[0.0] * 3] * 3


def test_grid():
    rc = grid_coordinates(2, 3)
    assert rc[4].tolist() == [1, 1]
    a8 = grid_adjacency(3, 3, 8)
    a4 = grid_adjacency(3, 3, 4)
    assert a8[4].sum() == 8 and a4[4].sum() == 4 and a8[0].sum() == 3 and a4[0].sum() == 2
    np.testing.assert_array_equal(a8, a8.T)


def test_a_large_sparse_graph_gets_the_dense_solvers_eigenvectors(monkeypatch):
    """The ARPACK path (sparse graphs above DENSE_EIGH_MAX nodes, LargeST-sized) against the dense eigh on one graph:
    the same vectors up to the sign rule, which both apply (threshold lowered so the dense answer is cheap)."""
    import scipy.sparse as sp

    from st_instruct.data import graph
    from st_instruct.data.synthetic import synthetic_graph

    adjacency = synthetic_graph("sd", 0)[1]  # 716 sensors on a road network, sparse
    dense = graph.laplacian_eigenvectors(adjacency.toarray(), 6)
    monkeypatch.setattr(graph, "DENSE_EIGH_MAX", 100)
    found = graph.laplacian_eigenvectors(sp.csr_array(adjacency), 6)
    assert found.shape == dense.shape == (716, 6) and found.dtype == np.float32
    # equal where the eigenvalues are apart; a degenerate pair may rotate, so compare the spanned subspace too
    overlap = np.linalg.svd(dense.T.astype(np.float64) @ found.astype(np.float64), compute_uv=False)
    assert overlap.min() > 0.999
    np.testing.assert_allclose(np.abs(found[:, 0]), np.abs(dense[:, 0]), atol=1e-4)
