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
    # sorted codes (pandas hashes, then sorts only the distinct values): rows in user-id order
    u_idx, users = pd.factorize(pairs["user_id"], sort=True)
    i_idx, items = pd.factorize(pairs["item_id"], sort=True)
    users, items = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
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
        us, vs, c = _swing_pairs(B)
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


def _row_lists(items, rows, m: sp.csr_matrix, cooc: sp.csr_matrix, k: int):
    """(item, [(neighbor, score, cooc)]) for each row r of m (row r is item items[rows[r]])."""
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if lo == hi:
            continue
        cols, vals = m.indices[lo:hi], m.data[lo:hi]
        order = np.lexsort((cols, -np.round(vals, 9)))[:k]  # codes follow item_id order
        clo, chi = cooc.indptr[r], cooc.indptr[r + 1]
        ccols, cvals = cooc.indices[clo:chi], cooc.data[clo:chi]
        srt = np.argsort(ccols)
        cc = cvals[srt][np.searchsorted(ccols[srt], cols[order])]
        yield items[rows[r]], [(items[cols[o]], float(vals[o]), int(c)) for o, c in zip(order, cc)]


def block_rows(pdf: pd.DataFrame, spec: SimilaritySpec, k: int) -> pd.DataFrame:
    """The rows of one item block (the Spark blocks engine): `pdf` holds the full item lists of the
    users touching the block, `in_block` flags the block's items and `nrm` is each item's global
    norm Σ_u b². Same algebra as `scores`, restricted to the block's rows."""
    users, items, X, B = _matrices(pdf)
    rows = np.flatnonzero(np.isin(items, pdf.loc[pdf["in_block"], "item_id"].unique()))
    nrm = pdf.groupby("item_id")["nrm"].first().reindex(items).to_numpy()
    inv, inv_r = sp.diags(1.0 / np.sqrt(nrm)), sp.diags(1.0 / np.sqrt(nrm[rows]))
    n_u = np.asarray(B.sum(axis=1)).ravel()
    Xr, Br = X[:, rows].T.tocsr(), B[:, rows].T.tocsr()
    cooc = (Br @ B).tocsr()
    mats = {}
    if "itemcf" in spec.algos:
        mats["itemcf"] = inv_r @ (Xr @ X) @ inv
    if "itemcf_iuf" in spec.algos:
        mats["itemcf_iuf"] = inv_r @ (Xr @ sp.diags(1.0 / np.log1p(n_u)) @ X) @ inv
    if "swing_simple" in spec.algos:
        mats["swing_simple"] = Br @ sp.diags(1.0 / (spec.simple_alpha + n_u)) @ B
    if "swing" in spec.algos:
        # only the user pairs that share one of the block's items (never the full BBᵀ, which
        # every block would recompute); their full overlap is the row sum of B_u ∘ B_v
        shared = sp.triu(B[:, rows] @ B[:, rows].T, k=1).tocoo()
        order = np.lexsort((shared.col, shared.row))
        us, vs = shared.row[order], shared.col[order]
        Z = B[us].multiply(B[vs]).tocsr()
        c = np.asarray(Z.sum(axis=1)).ravel()
        keep = c >= 2
        us, vs, c, Z = us[keep], vs[keep], c[keep], Z[keep]
        w = (spec.user_alpha + n_u) ** spec.user_beta
        mats["swing"] = Z[:, rows].T @ sp.diags(w[us] * w[vs] / (spec.swing_alpha + c)) @ Z
    out = []
    for a, m in mats.items():
        m = m.tocsr()
        own = np.repeat(rows, np.diff(m.indptr))  # each stored entry's row item: drop self-pairs
        m.data[m.indices == own] = 0
        m.eliminate_zeros()
        for item, nb in _row_lists(items, rows, m, cooc, k):
            top = nb[0][1]
            out.append((a, item, [{"item_id": j, "score": s, "score_norm": s / top, "cooc": c} for j, s, c in nb], len(nb)))
    return pd.DataFrame(out, columns=["algo", "item_id", "neighbors", "n_neighbors"])


def _swing_pairs(B: sp.csr_matrix):
    """User pairs u < v with |I_u ∩ I_v| ≥ 2, sorted by (u, v) so that every sum over them runs in
    the same order everywhere."""
    overlap = sp.triu(B @ B.T, k=1).tocoo()
    keep = overlap.data >= 2
    us, vs, c = overlap.row[keep], overlap.col[keep], overlap.data[keep]
    order = np.lexsort((vs, us))
    return us[order], vs[order], c[order]


def top_k(items: np.ndarray, m: sp.csr_matrix, cooc: sp.csr_matrix, k: int) -> dict[str, list[tuple[str, float, int]]]:
    """item → [(neighbor, score, cooc)], best first, ties by neighbor id (as the Spark job)."""
    return dict(_row_lists(items, np.arange(m.shape[0]), m, cooc, k))
