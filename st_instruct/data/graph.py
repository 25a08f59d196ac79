"""Graph utilities: distances, Gaussian-kernel adjacency, normalisation, Laplacian eigenvectors, grids.

The Gaussian kernel ``A_ij = exp(-d_ij^2 / (2 sigma^2))`` is the static distance graph of DCRNN (Li et al.,
ICLR 2018) and AirGPT; Laplacian eigenvectors are the spatial coordinates later used by SE-Attention
(ST-LINK) and by positional encodings of graph transformers (Dwivedi & Bresson, 2020).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

EARTH_RADIUS_KM = 6371.0088


def haversine_km(latlon: np.ndarray) -> np.ndarray:
    """Great-circle distances ``[N, N]`` in km between ``latlon [N, 2]`` points (degrees, lat first)."""
    latlon = np.asarray(latlon, dtype=np.float64)
    if latlon.ndim != 2 or latlon.shape[1] != 2:
        raise ValueError(f"latlon must have shape [N, 2] (lat, lon in degrees), found {latlon.shape}")
    if (np.abs(latlon[:, 0]) > 90).any() or (np.abs(latlon[:, 1]) > 180).any():
        raise ValueError("latlon holds a latitude outside [-90, 90] or a longitude outside [-180, 180]; "
                         "is the column order (lat, lon)?")
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    a = np.sin(dlat / 2) ** 2 + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def euclidean_distances(xy: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances ``[N, N]`` between ``xy [N, D]`` points."""
    xy = np.asarray(xy, dtype=np.float64)
    diff = xy[:, None, :] - xy[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def gaussian_kernel_adjacency(distances: np.ndarray, sigma: float | None = None, threshold: float = 0.1,
                              ) -> np.ndarray:
    """``A_ij = exp(-d_ij^2 / (2 sigma^2))``, entries below ``threshold`` set to 0 (DCRNN's sparsification).

    Args:
        distances: ``[N, N]``; ``inf`` marks unconnected pairs (e.g. from an edge list).
        sigma: kernel width; default the standard deviation of the finite off-diagonal distances.
    Returns:
        ``[N, N]`` float32 weights in [0, 1], 1 on the diagonal.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square [N, N] matrix, found shape {d.shape}")
    if np.isnan(d).any() or (d < 0).any():
        raise ValueError("distances must be non-negative (use inf for unconnected pairs), found NaN or negative")
    if sigma is None:
        off = d[~np.eye(len(d), dtype=bool) & np.isfinite(d)]
        sigma = float(off.std()) if off.size and off.std() > 0 else 1.0
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, found {sigma}")
    with np.errstate(over="ignore"):
        adj = np.exp(-np.square(d) / (2 * sigma**2))
    adj[adj < threshold] = 0.0
    np.fill_diagonal(adj, 1.0)
    return adj.astype(np.float32)


def edge_list_to_dense(edges: pd.DataFrame | np.ndarray, num_nodes: int, weights: str = "gaussian",
                       symmetric: bool = True) -> np.ndarray:
    """``from, to, cost`` rows (PEMS ``distance.csv``) -> ``[N, N]`` adjacency.

    ``weights="gaussian"`` turns costs (distances) into Gaussian-kernel weights (sigma = std of the costs);
    ``"binary"`` gives 1 per edge; ``"cost"`` keeps the raw cost as the weight.
    """
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"an edge list needs rows of (from, to[, cost]), found shape {arr.shape}")
    src, dst = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    bad = (src < 0) | (src >= num_nodes) | (dst < 0) | (dst >= num_nodes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"edge {i} ({src[i]} -> {dst[i]}) names a node outside 0..{num_nodes - 1}")
    cost = arr[:, 2] if arr.shape[1] == 3 else np.ones(len(arr))
    if weights == "gaussian":
        dist = np.full((num_nodes, num_nodes), np.inf)
        dist[src, dst] = cost
        if symmetric:
            dist[dst, src] = np.minimum(dist[dst, src], cost)
        np.fill_diagonal(dist, 0.0)
        return gaussian_kernel_adjacency(dist, sigma=float(cost.std()) or 1.0, threshold=0.0)
    if weights not in ("binary", "cost"):
        raise ValueError(f"weights must be 'gaussian', 'binary' or 'cost', found {weights!r}")
    value = np.ones(len(arr)) if weights == "binary" else cost
    adj = np.zeros((num_nodes, num_nodes), dtype=np.float32)
    adj[src, dst] = value
    if symmetric:
        adj[dst, src] = value
    return adj


def normalize_adjacency(adj: np.ndarray, kind: str = "sym", add_self_loops: bool = True) -> np.ndarray:
    """Normalised adjacency: ``"sym"`` = D^-1/2 (A+I) D^-1/2 (GCN), ``"rw"`` = D^-1 (A+I) (random walk)."""
    a = np.asarray(adj, dtype=np.float64)
    if add_self_loops:
        a = a + np.eye(len(a))
    deg = a.sum(1)
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0)
    if kind == "rw":
        return (inv[:, None] * a).astype(np.float32)
    if kind == "sym":
        s = np.sqrt(inv)
        return (s[:, None] * a * s[None, :]).astype(np.float32)
    raise ValueError(f"normalisation kind must be 'sym' or 'rw', found {kind!r}")


def laplacian(adj: np.ndarray) -> np.ndarray:
    """Symmetric normalised Laplacian ``I - D^-1/2 A D^-1/2`` of the symmetrised adjacency (no self-loops)."""
    a = np.asarray(adj, dtype=np.float64)
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    deg = a.sum(1)
    with np.errstate(divide="ignore"):
        s = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
    return np.eye(len(a)) - s[:, None] * a * s[None, :]


DENSE_EIGH_MAX = 2_000  # above this many nodes a sparse graph's eigenvectors come from ARPACK, not a dense eigh


def sparse_laplacian(adj: sp.sparray | sp.spmatrix) -> sp.csr_array:
    """:func:`laplacian` of a scipy sparse adjacency, kept sparse."""
    a = sp.csr_array(adj, dtype=np.float64)
    a = (a + a.T) / 2
    a.setdiag(0.0)
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        s = sp.diags_array(np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0))
    return sp.csr_array(sp.eye_array(a.shape[0]) - s @ a @ s)


def laplacian_eigenvectors(adj: np.ndarray | sp.sparray | sp.spmatrix, k: int) -> np.ndarray:
    """The ``k`` eigenvectors of the normalised Laplacian after the trivial one, ``[N, k]`` float32.

    Eigenvectors come in ascending eigenvalue order with a deterministic sign (largest-magnitude entry
    positive), so the same graph always gives the same coordinates. If the graph has fewer than ``k + 1``
    nodes the remaining columns are zero. A scipy sparse ``adj`` of more than :data:`DENSE_EIGH_MAX` nodes (a
    LargeST-sized road graph) is solved sparse: the ``k + 1`` eigenvalues nearest 0 by ARPACK in shift-invert mode
    from a fixed start vector (seconds for 8,600 sensors, where a dense ``eigh`` takes minutes and gigabytes).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    if sp.issparse(adj) and adj.shape[0] > DENSE_EIGH_MAX:
        n = adj.shape[0]
        values, vecs = eigsh(sparse_laplacian(adj), k=min(k + 1, n - 1), sigma=-1e-3, which="LM",
                             v0=np.ones(n))
        vecs = vecs[:, np.argsort(values)][:, 1 : k + 1]
    else:
        lap = laplacian(adj.toarray() if sp.issparse(adj) else adj)
        n = len(lap)
        _, vecs = np.linalg.eigh(lap)
        vecs = vecs[:, 1 : k + 1]
    idx = np.argmax(np.abs(vecs), axis=0)
    vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])
    out = np.zeros((n, k), dtype=np.float32)
    out[:, : vecs.shape[1]] = vecs
    return out


def grid_coordinates(height: int, width: int) -> np.ndarray:
    """``[H * W, 2]`` (row, col) of every cell, node index ``row * W + col``."""
    rows, cols = np.divmod(np.arange(height * width), width)
    return np.stack([rows, cols], axis=1).astype(np.float64)


def grid_adjacency(height: int, width: int, neighbourhood: int = 8) -> np.ndarray:
    """0/1 ``[H*W, H*W]`` adjacency of a grid with 4- or 8-neighbourhoods (no self-loops)."""
    if neighbourhood not in (4, 8):
        raise ValueError(f"neighbourhood must be 4 or 8, found {neighbourhood}")
    rc = grid_coordinates(height, width)
    dr = np.abs(rc[:, None, 0] - rc[None, :, 0])
    dc = np.abs(rc[:, None, 1] - rc[None, :, 1])
    near = (dr <= 1) & (dc <= 1) if neighbourhood == 8 else (dr + dc == 1)
    adj = near.astype(np.float32)
    np.fill_diagonal(adj, 0.0)
    return adj
