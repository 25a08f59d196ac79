"""Graph patches (PatchSTG-style KD-tree partition): coverage, balance, compactness, isolated nodes, determinism,
the graph-only fallback, neighbouring patches and the one-line errors."""

import time

import numpy as np
import pytest
import scipy.sparse as sp

from st_instruct.data import patches as patches_module
from st_instruct.data.graph import grid_adjacency, grid_coordinates
from st_instruct.data.patches import neighbour_patches, partition_nodes
from st_instruct.data.synthetic import synthetic_graph


def _points(n, seed=0):
    """Clustered planar points, like sensors around a few towns."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-100, 100, size=(5, 2))
    return centres[rng.integers(5, size=n)] + rng.normal(0, 10, size=(n, 2))


def _chain_adjacency(n):
    """A path 0 - 1 - ... - n-1 with self-loops, as a sparse array."""
    i = np.arange(n - 1)
    rows, cols = np.concatenate([i, i + 1, np.arange(n)]), np.concatenate([i + 1, i, np.arange(n)])
    return sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def _spread(points, patches):
    """Mean distance of a node to its patch's centroid."""
    return float(np.mean([np.linalg.norm(points[p] - points[p].mean(0), axis=1).mean() for p in patches]))


def _check_partition(patches, n, size):
    nodes = np.concatenate(patches)
    np.testing.assert_array_equal(np.sort(nodes), np.arange(n))  # every node exactly once
    for p in patches:
        assert p.dtype == np.int64 and p.ndim == 1 and 1 <= len(p) <= size
        assert (np.diff(p) > 0).all()  # ascending


# ---------------------------------------------------------------------------------------------------- with coords
@pytest.mark.parametrize(("n", "size"), [(1000, 32), (1000, 7), (37, 5), (64, 64), (5, 1)])
def test_patches_cover_every_node_once_within_the_size_bound_and_balanced(n, size):
    patches = partition_nodes(_points(n), None, size)
    _check_partition(patches, n, size)
    sizes = [len(p) for p in patches]
    assert len(patches) == -(-n // size)
    assert max(sizes) - min(sizes) <= 1


def test_patches_are_spatially_compact():
    points = _points(2000)
    patches = partition_nodes(points, None, 50)
    rng = np.random.default_rng(1)
    random = np.array_split(rng.permutation(2000), len(patches))
    assert _spread(points, patches) < 0.25 * _spread(points, random)


def test_a_patch_size_larger_than_the_graph_gives_one_patch():
    points = _points(30)
    patches = partition_nodes(points, None, 1000)
    assert len(patches) == 1
    np.testing.assert_array_equal(patches[0], np.arange(30))


def test_isolated_nodes_get_patches_of_their_own():
    n = 40
    adj = np.zeros((n, n))
    for i in range(0, 30, 2):  # nodes 0..29 in pairs; 30..39 isolated (self-loops do not count)
        adj[i, i + 1] = adj[i + 1, i] = 1.0
    np.fill_diagonal(adj, 1.0)
    isolated = set(range(30, 40))
    for coords in (_points(n), None):
        patches = partition_nodes(coords, adj, 8)
        _check_partition(patches, n, 8)
        for p in patches:
            assert set(p.tolist()) <= isolated or not set(p.tolist()) & isolated
        lonely = [p for p in patches if set(p.tolist()) <= isolated]
        assert sum(len(p) for p in lonely) == 10 and len(lonely) == 2  # 10 isolated nodes in chunks of <= 8
        assert patches[-len(lonely):] == lonely  # the connected nodes' patches come first


def test_a_directed_link_connects_both_ends():
    adj = np.zeros((4, 4))
    adj[0, 1] = 0.5  # 1 has no out-link but is linked to by 0
    patches = partition_nodes(None, adj, 4)
    assert [p.tolist() for p in patches] == [[0, 1], [2, 3]]


def test_partition_is_deterministic_and_ties_are_broken_by_index():
    points = _points(500)
    a, b = partition_nodes(points, None, 16), partition_nodes(points.copy(), None, 16)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    same = np.zeros((10, 2))  # all nodes at one place: cut in index order
    assert [p.tolist() for p in partition_nodes(same, None, 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_grid_cells_split_into_blocks():
    coords = grid_coordinates(8, 8)
    patches = partition_nodes(coords, grid_adjacency(8, 8), 16)
    assert len(patches) == 4
    for p in patches:  # each a 4 x 4 block
        rows, cols = coords[p, 0], coords[p, 1]
        assert np.ptp(rows) == 3 and np.ptp(cols) == 3


# ---------------------------------------------------------------------------------------------------- graph only
def test_without_coords_patches_follow_the_graph():
    n = 200
    adj = _chain_adjacency(n)
    patches = partition_nodes(None, adj, 20)
    _check_partition(patches, n, 20)
    assert len(patches) == 10
    for p in patches:  # a contiguous stretch of the path
        assert p[-1] - p[0] == len(p) - 1


def test_without_coords_large_components_use_the_sparse_eigensolver_and_stay_compact():
    coords, adjacency = synthetic_graph("sd")  # 716 sensors on roads, sparse adjacency
    patches = partition_nodes(None, adjacency, 32)
    _check_partition(patches, len(coords), 32)
    rng = np.random.default_rng(0)
    random = np.array_split(rng.permutation(len(coords)), len(patches))
    assert _spread(coords, patches) < 0.25 * _spread(coords, random)
    assert _spread(coords, patches) < 2.5 * _spread(coords, partition_nodes(coords, adjacency, 32))
    again = partition_nodes(None, adjacency, 32)
    assert [p.tolist() for p in patches] == [p.tolist() for p in again]


def test_components_are_cut_separately_and_the_eigensolver_failure_falls_back(monkeypatch):
    a, b = _chain_adjacency(500), _chain_adjacency(30)
    adj = sp.block_diag([a, b], format="csr")
    patches = partition_nodes(None, adj, 100)
    _check_partition(patches, 530, 100)
    assert [len(p) for p in patches] == [100] * 5 + [30]  # the small component is one patch of its own

    def fail(*args, **kwargs):
        raise patches_module.ArpackNoConvergence("no", np.zeros(0), np.zeros((0, 0)))

    monkeypatch.setattr(patches_module, "eigsh", fail)
    fallback = partition_nodes(None, a, 100)
    _check_partition(fallback, 500, 100)
    for p in fallback:  # breadth-first order along the path: contiguous stretches
        assert p[-1] - p[0] == len(p) - 1


# ---------------------------------------------------------------------------------------------------- neighbours
def test_neighbour_patches_are_the_nearest_centroids():
    coords = np.array([[0.0, 0], [1, 0], [10, 0], [11, 0], [30, 0], [31, 0]])
    patches = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    np.testing.assert_array_equal(neighbour_patches(patches, coords, 1), [[1], [0], [1]])
    np.testing.assert_array_equal(neighbour_patches(patches, coords, 2), [[1, 2], [0, 2], [1, 0]])
    # fewer other patches than k: padded with -1
    np.testing.assert_array_equal(neighbour_patches(patches, coords, 4), [[1, 2, -1, -1], [0, 2, -1, -1],
                                                                         [1, 0, -1, -1]])
    np.testing.assert_array_equal(neighbour_patches(patches[:1], coords, 2), [[-1, -1]])
    assert neighbour_patches(patches, coords, 0).shape == (3, 0)


def test_neighbour_patches_on_a_partition():
    points = _points(1000)
    patches = partition_nodes(points, None, 25)
    nb = neighbour_patches(patches, points, 3)
    assert nb.shape == (len(patches), 3) and nb.dtype == np.int64
    assert (nb >= 0).all() and (nb != np.arange(len(patches))[:, None]).all()
    assert all(len(set(row)) == 3 for row in nb.tolist())


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("coords", "adjacency", "size", "message"), [
    (np.zeros((4, 2)), None, 0, r"patch_size must be a positive integer, found 0"),
    (np.zeros((4, 2)), None, -3, r"patch_size must be a positive integer, found -3"),
    (np.zeros((4, 2)), None, 2.5, r"patch_size must be a positive integer, found 2\.5 \(float\)"),
    (np.zeros((4, 2)), None, "8", r"patch_size must be a positive integer, found '8' \(str\)"),
    (np.zeros((4, 2)), None, True, r"patch_size must be a positive integer, found True \(bool\)"),
    (np.zeros(4), None, 2, r"coords must be a 2-D \[N, K\] array of node coordinates \(K >= 1\), found shape \(4,\)"),
    (np.zeros((4, 2, 1)), None, 2, r"coords must be a 2-D \[N, K\] array .*found shape \(4, 2, 1\)"),
    (np.zeros((4, 0)), None, 2, r"coords must be a 2-D \[N, K\] array .*found shape \(4, 0\)"),
    (np.array([[0.0, np.nan]]), None, 2, r"coords contain NaN or inf"),
    (np.zeros((4, 2)), np.zeros((3, 3)), 2, r"adjacency must be \[4, 4\] to match coords, found shape \(3, 3\)"),
    (None, np.zeros((3, 4)), 2, r"adjacency must be square \[N, N\], found shape \(3, 4\)"),
    (None, np.zeros(3), 2, r"adjacency must be an \[N, N\] matrix, found shape \(3,\)"),
    (None, None, 2, r"partition_nodes needs coords \[N, K\] or an adjacency \[N, N\], found neither"),
])
def test_bad_input_says_what_is_wrong_in_one_line(coords, adjacency, size, message):
    with pytest.raises(ValueError, match=message) as err:
        partition_nodes(coords, adjacency, size)
    assert "\n" not in str(err.value)


def test_neighbour_patches_bad_input():
    coords = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"k must be a non-negative integer, found -1"):
        neighbour_patches([np.arange(4)], coords, -1)
    with pytest.raises(ValueError, match=r"needs node coordinates"):
        neighbour_patches([np.arange(4)], None, 1)
    with pytest.raises(ValueError, match=r"patch 1 must be a non-empty 1-D array of node indices in 0\.\.3"):
        neighbour_patches([np.arange(2), np.array([2, 7])], coords, 1)


def test_numpy_integer_patch_size_and_an_empty_graph():
    assert len(partition_nodes(_points(10), None, np.int64(5))) == 2
    assert partition_nodes(np.zeros((0, 2)), None, 4) == []


# ---------------------------------------------------------------------------------------------------- LargeST size
def test_partitioning_8600_sensors_is_fast():
    coords, adjacency = synthetic_graph("ca")  # LargeST CA's 8,600 sensors
    start = time.perf_counter()
    patches = partition_nodes(coords, adjacency, 64)
    elapsed = time.perf_counter() - start
    _check_partition(patches, 8600, 64)
    assert len(patches) == 135
    assert elapsed < 1.0, elapsed
    start = time.perf_counter()
    spectral = partition_nodes(None, adjacency, 64)
    assert time.perf_counter() - start < 5.0  # the graph-only fallback: a sparse eigensolve, well under a second
    _check_partition(spectral, 8600, 64)
    assert neighbour_patches(patches, coords, 8).shape == (135, 8)
