"""Graph patches: balanced groups of nearby nodes, for models that attend within and between patches.

PatchSTG (Fang et al., KDD 2025) scales spatio-temporal attention to graphs of thousands of sensors (LargeST) by
cutting the nodes into *patches* with a KD-tree on their coordinates: recursive median bisection along the wider
coordinate axis, so that the leaves are balanced and spatially compact. Attention then runs inside each patch
(depth) and across patches (breadth) instead of over all ``N^2`` node pairs.

:func:`partition_nodes` builds such patches: from coordinates when there are some, otherwise from a spectral
embedding of the graph (two eigenvectors of its Laplacian, per connected component). Isolated nodes
(no edge to another node) never share a patch with connected ones. :func:`neighbour_patches` lists each patch's
``k`` nearest other patches by centroid distance.

Unlike PatchSTG, no padding nodes are added: leaves differ in size by at most one node (per group: the
connected nodes, the isolated ones, and without coordinates each connected component).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh
from scipy.spatial import cKDTree

__all__ = ["neighbour_patches", "partition_nodes"]

_DENSE_EIGH_MAX = 400  # components up to this size get a dense eigendecomposition


def partition_nodes(coords: np.ndarray | None, adjacency: np.ndarray | sp.sparray | sp.spmatrix | None,
                    patch_size: int) -> list[np.ndarray]:
    """Cut the ``N`` nodes into balanced, spatially compact patches of at most ``patch_size`` nodes.

    Args:
        coords: ``[N, K]`` node coordinates (any ``K >= 1``: lat/lon, planar km, grid cells, Laplacian
            eigenvectors), or ``None`` to place the nodes by the graph.
        adjacency: ``[N, N]`` weights, dense or scipy sparse; a non-zero off-diagonal entry in either direction is
            a link (self-loops are ignored). Used to find isolated nodes, and to place the nodes when ``coords``
            is ``None``. ``None``: every node counts as connected.
        patch_size: the most nodes in a patch (a positive integer). One larger than ``N`` is fine: the connected
            nodes then form one patch (and the isolated ones another).
    Returns:
        A list of patches, each an ascending ``int64`` array of node indices; every node is in exactly one patch.
        The connected nodes come first, in KD-tree leaf order (neighbouring leaves are usually neighbours in
        space), then the isolated nodes' patches. A group of ``M`` nodes is cut into ``ceil(M / patch_size)``
        patches whose sizes differ by at most one.

    With coordinates, each cut splits a group at the median of its coordinate of widest range (max - min), ties
    broken by node index, so the result is deterministic. Without, each connected component is cut on its own,
    with a two-dimensional spectral layout as the coordinates (:func:`_spectral_layout`: the slowest random-walk
    eigenvectors of the component; a breadth-first order if the eigensolver does not converge), so a patch never
    spans two components; a component no larger than ``patch_size`` is one patch.

    Raises:
        ValueError: ``patch_size`` not a positive integer; ``coords`` not a finite ``[N, K]`` array; ``adjacency``
            not ``[N, N]``; neither ``coords`` nor ``adjacency`` given.
    """
    size = _check_patch_size(patch_size)
    points = None if coords is None else _check_coords(coords)
    adj = None if adjacency is None else _check_adjacency(adjacency, None if points is None else len(points))
    if points is None and adj is None:
        raise ValueError("partition_nodes needs coords [N, K] or an adjacency [N, N], found neither")
    n = len(points) if points is not None else adj.shape[0]
    if n == 0:
        return []
    isolated = np.zeros(n, dtype=bool) if adj is None else np.diff(adj.indptr) == 0
    connected = np.flatnonzero(~isolated)
    lonely = np.flatnonzero(isolated)
    patches: list[np.ndarray] = []
    if points is not None:
        for group in (connected, lonely):
            if len(group):
                patches += _kd_patches(points[group], group, size)
        return patches
    _, labels = csgraph.connected_components(adj, directed=False)
    comp_of = labels[connected]
    _, first_seen = np.unique(comp_of, return_index=True)
    for label in comp_of[np.sort(first_seen)]:  # components in the order of their smallest node
        members = connected[comp_of == label]
        layout = _spectral_layout(adj[members][:, members]) if len(members) > size else np.zeros((len(members), 1))
        patches += _kd_patches(layout, members, size)
    if len(lonely):
        patches += _kd_patches(lonely[:, None].astype(np.float64), lonely, size)
    return patches


def neighbour_patches(patches: list[np.ndarray], coords: np.ndarray, k: int) -> np.ndarray:
    """``[num_patches, k]`` int64: row ``p`` lists the ``k`` patches whose centroids (mean node coordinates) are
    nearest to patch ``p``'s, nearest first, ``p`` itself excluded.

    With fewer than ``k + 1`` patches, each row lists every other patch and is padded with ``-1`` (so a single
    patch gets a row of ``-1``). Equal distances keep the KD-tree's deterministic order.

    Raises:
        ValueError: ``k`` not a non-negative integer; ``coords`` not a finite ``[N, K]`` array; a patch empty or
            naming a node outside ``0..N-1``.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"k must be a non-negative integer, found {k!r}")
    if coords is None:
        raise ValueError("neighbour_patches needs node coordinates [N, K] to place the patches, found None")
    points = _check_coords(coords)
    centroids = np.empty((len(patches), points.shape[1]))
    for p, patch in enumerate(patches):
        idx = np.asarray(patch)
        if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer) \
                or idx.min() < 0 or idx.max() >= len(points):
            raise ValueError(f"patch {p} must be a non-empty 1-D array of node indices in 0..{len(points) - 1}, "
                             f"found {idx!r}")
        centroids[p] = points[idx].mean(0)
    out = np.full((len(patches), int(k)), -1, dtype=np.int64)
    if k == 0 or len(patches) < 2:
        return out
    want = min(int(k) + 1, len(patches))
    _, found = cKDTree(centroids).query(centroids, k=want)
    found = np.asarray(found).reshape(len(patches), want)
    for p in range(len(patches)):
        others = found[p][found[p] != p][: int(k)]
        out[p, : len(others)] = others
    return out


# ---------------------------------------------------------------------------------------------------- helpers
def _check_patch_size(patch_size: object) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral):
        raise ValueError(f"patch_size must be a positive integer, found {patch_size!r} "
                         f"({type(patch_size).__name__})")
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, found {patch_size}")
    return int(patch_size)


def _check_coords(coords: object) -> np.ndarray:
    try:
        points = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"coords must be a numeric [N, K] array of node coordinates: {err}") from err
    if points.ndim != 2 or points.shape[1] < 1:
        raise ValueError(f"coords must be a 2-D [N, K] array of node coordinates (K >= 1), found shape "
                         f"{tuple(points.shape)}")
    if not np.isfinite(points).all():
        raise ValueError("coords contain NaN or inf")
    return points


def _check_adjacency(adjacency: object, n: int | None) -> sp.csr_array:
    """The symmetric 0/1 pattern of the links (no self-loops) as a csr_array."""
    adj = sp.csr_array(adjacency) if sp.issparse(adjacency) else None
    if adj is None:
        dense = np.asarray(adjacency)
        if dense.ndim != 2:
            raise ValueError(f"adjacency must be an [N, N] matrix, found shape {tuple(dense.shape)}")
        adj = sp.csr_array(dense)
    if adj.shape[0] != adj.shape[1] or (n is not None and adj.shape[0] != n):
        expect = f"[{n}, {n}] to match coords" if n is not None else "square [N, N]"
        raise ValueError(f"adjacency must be {expect}, found shape {tuple(adj.shape)}")
    if adj.nnz and not np.isfinite(adj.data).all():
        raise ValueError("adjacency contains NaN or inf")
    coo = adj.tocoo()
    keep = (coo.row != coo.col) & (coo.data != 0)
    rows, cols = coo.row[keep], coo.col[keep]
    n = adj.shape[0]
    both = sp.csr_array((np.ones(2 * len(rows)), (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                        shape=(n, n))
    both.sum_duplicates()
    both.data[:] = 1.0
    return both


def _kd_patches(points: np.ndarray, nodes: np.ndarray, size: int) -> list[np.ndarray]:
    """Balanced KD-tree leaves of ``nodes`` (``points [M, K]`` their coordinates), at most ``size`` each."""
    m = len(nodes)
    leaves = -(-m // size)
    sizes = np.full(leaves, m // leaves)
    sizes[: m % leaves] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out: list[np.ndarray] = []
    stack = [(np.arange(m), 0, leaves)]  # (rows of points, first leaf, number of leaves), left subtree first
    while stack:
        rows, first, count = stack.pop()
        if count == 1:
            out.append(np.sort(nodes[rows]).astype(np.int64))
            continue
        sub = points[rows]
        axis = int(np.argmax(sub.max(0) - sub.min(0)))
        order = rows[np.lexsort((nodes[rows], sub[:, axis]))]
        half = count // 2
        cut = bounds[first + half] - bounds[first]
        stack.append((order[cut:], first + half, count - half))
        stack.append((order[:cut], first, half))
    return out


def _spectral_layout(adj: sp.csr_array, dim: int = 2) -> np.ndarray:
    """``[M, dim]`` coordinates of a connected graph's nodes: the random-walk eigenvectors ``D^-1/2 u`` of its
    normalised Laplacian after the trivial one, each divided by the square root of its eigenvalue (a commute-time
    embedding: slow, large-scale directions weigh more, so the KD cuts follow them); signs fixed (largest-magnitude
    entry positive). A breadth-first order when the eigensolver fails."""
    m = adj.shape[0]
    inv_sqrt_deg = 1.0 / np.sqrt(np.asarray(adj.sum(1)).ravel())
    scale = sp.diags_array(inv_sqrt_deg)
    lap = sp.identity(m, format="csr") - scale @ adj @ scale
    k = min(dim, m - 1)  # non-trivial eigenvectors wanted
    if k < 1:
        return np.zeros((m, 1))
    try:
        if m <= _DENSE_EIGH_MAX:
            vals, vecs = np.linalg.eigh(lap.toarray())
            vals, vecs = vals[1 : k + 1], vecs[:, 1 : k + 1]
        else:
            v0 = np.cos(np.arange(m) * 0.7 + 0.3)  # a fixed start vector: same input, same output
            vals, vecs = eigsh(lap.tocsc(), k=k + 1, sigma=-1e-3, which="LM", v0=v0)
            order = np.argsort(vals)[1:]
            vals, vecs = vals[order], vecs[:, order]
    except (ArpackNoConvergence, ArpackError, np.linalg.LinAlgError, RuntimeError):
        order = csgraph.breadth_first_order(adj, 0, directed=False, return_predecessors=False)
        position = np.empty(m)
        position[order] = np.arange(m)
        return position[:, None]
    vecs = vecs * inv_sqrt_deg[:, None] / np.sqrt(np.maximum(vals, 1e-12))
    idx = np.argmax(np.abs(vecs), axis=0)
    return vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])
