"""The single-process peer of graph.similarity: NumPy/SciPy sparse algebra on one machine.

Used by the benchmark (same pairs in, the same top-K lists out, side by side with Spark) and as an
independent implementation. Input: the (user, item, b) pairs after the activity filter and the
caps (``apply_caps`` output collected to pandas). Without time decay (the default), every score is
a sparse product:

- cooc = BᵀB, itemcf = XᵀX / sqrt(N_i N_j) (X: behavior weights, B: binary, N = diag XᵀX),
  itemcf_iuf = Xᵀ diag(1/log(1+|I_u|)) X / sqrt(N_i N_j), swing_simple = Bᵀ diag(1/(α+|I_u|)) B;
- swing: the user pairs u < v with |I_u ∩ I_v| ≥ 2 come from the upper triangle of BBᵀ; each
  pair's common items are the row product B_u ∘ B_v, so swing = Zᵀ diag(W) Z with Z stacking those
  products and W_uv = w_u w_v / (α + |I_u ∩ I_v|) — in chunks of user pairs to bound memory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfactory.graph.similarity import SimilaritySpec


def _matrices(pairs: pd.DataFrame):
    users, u_idx = np.unique(pairs["user_id"].to_numpy(), return_inverse=True)
    items, i_idx = np.unique(pairs["item_id"].to_numpy(), return_inverse=True)
    shape = (len(users), len(items))
    X = sp.csr_matrix((pairs["b"].to_numpy(dtype=np.float64), (u_idx, i_idx)), shape=shape)
    B = sp.csr_matrix((np.ones(len(pairs)), (u_idx, i_idx)), shape=shape)
    return users, items, X, B


def scores(pairs: pd.DataFrame, spec: SimilaritySpec, chunk: int = 200_000) -> tuple[np.ndarray, dict[str, sp.csr_matrix], sp.csr_matrix]:
    """(items, {algo: item × item score matrix}, cooc matrix); diagonals removed."""
    if spec.time_decay_days:
        raise ValueError("the sparse peer has no time decay")
    items, X, B = _matrices(pairs)[1:]
    n_u = np.asarray(B.sum(axis=1)).ravel()
    out: dict[str, sp.csr_matrix] = {}
    cooc = (B.T @ B).tocsr()
    norms = np.asarray(X.multiply(X).sum(axis=0)).ravel()
    inv = sp.diags(1.0 / np.sqrt(norms))
    if "itemcf" in spec.algos:
        out["itemcf"] = inv @ (X.T @ X) @ inv
    if "itemcf_iuf" in spec.algos:
        out["itemcf_iuf"] = inv @ (X.T @ sp.diags(1.0 / np.log1p(n_u)) @ X) @ inv
    if "swing_simple" in spec.algos:
        out["swing_simple"] = B.T @ sp.diags(1.0 / (spec.simple_alpha + n_u)) @ B
    if "swing" in spec.algos:
        w = (spec.user_alpha + n_u) ** spec.user_beta
        overlap = sp.triu(B @ B.T, k=1).tocoo()
        keep = overlap.data >= 2
        us, vs, c = overlap.row[keep], overlap.col[keep], overlap.data[keep]
        acc = sp.csr_matrix((B.shape[1], B.shape[1]))
        for s in range(0, len(us), chunk):
            u, v = us[s:s + chunk], vs[s:s + chunk]
            Z = B[u].multiply(B[v]).tocsr()
            W = sp.diags(w[u] * w[v] / (spec.swing_alpha + c[s:s + chunk]))
            acc = acc + (Z.T @ W @ Z)
        out["swing"] = acc
    for a, m in out.items():
        m = m.tocsr()
        m.setdiag(0)
        m.eliminate_zeros()
        out[a] = m
    return items, out, cooc


def top_k(items: np.ndarray, m: sp.csr_matrix, cooc: sp.csr_matrix, k: int) -> dict[str, list[tuple[str, float, int]]]:
    """item → [(neighbor, score, cooc)], best first, ties by neighbor id (as the Spark job)."""
    out = {}
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if lo == hi:
            continue
        cols, vals = m.indices[lo:hi], m.data[lo:hi]
        order = np.lexsort((items[cols], -np.round(vals, 9)))[:k]
        cc = cooc[r].toarray().ravel()
        out[items[r]] = [(items[cols[o]], float(vals[o]), int(cc[cols[o]])) for o in order]
    return out
