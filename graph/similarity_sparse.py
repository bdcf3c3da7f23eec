"""Item-to-item similarity as NumPy/SciPy sparse algebra: the engine of Spark's ``blocks`` mode (one
item block at a time, inside ``graph.similarity.neighbor_lists``) and, on all pairs at once, the
single-process peer the benchmark runs beside Spark (same pairs in, the same top-K lists out);
checked against the formulas in the tests. Input: the (user, item, b) pairs after the activity filter and the caps
(``apply_caps`` output). Without time decay (the default), every score is a sparse product:

- cooc = BᵀB, itemcf = XᵀX / sqrt(N_i N_j) (X: behavior weights, B: binary, N = diag XᵀX),
  itemcf_iuf = Xᵀ diag(1/log(1+|I_u|)) X / sqrt(N_i N_j), swing_simple = Bᵀ diag(1/(α+|I_u|)) B;
- swing: the user pairs u < v with |I_u ∩ I_v| ≥ 2 come from the upper triangle of BBᵀ; each
  pair's common items are the row product B_u ∘ B_v, so swing = Zᵀ diag(W) Z with Z stacking those
  products and W_uv = w_u w_v / (α + |I_u ∩ I_v|) — BBᵀ in bands of users and Z in chunks of
  user pairs, so memory stays bounded.

Users and items are coded in id order, so every sum runs in user-id order wherever it is computed
(one process or any block), and the top-K (score rounded to 1e-9 descending, then item id) is
chosen for all rows at once by one sort; lists leave as an Arrow table, never Python objects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from recfactory.graph.similarity_spec import SimilaritySpec

NEIGHBOR = pa.struct(
    [("item_id", pa.string()), ("score", pa.float64()), ("score_norm", pa.float64()), ("cooc", pa.int64())]
)
TABLE = pa.schema(
    [("algo", pa.string()), ("item_id", pa.string()), ("neighbors", pa.list_(NEIGHBOR)), ("n_neighbors", pa.int32())]
)


def _matrices(user_id, item_id, b):
    # sorted codes (pandas hashes, then sorts only the distinct values): rows in user-id order
    u_idx, users = pd.factorize(user_id, sort=True)
    i_idx, items = pd.factorize(item_id, sort=True)
    shape = (len(users), len(items))
    X = sp.csr_matrix((np.asarray(b, dtype=np.float64), (u_idx, i_idx)), shape=shape)
    B = sp.csr_matrix((np.ones(len(u_idx)), (u_idx, i_idx)), shape=shape)
    return np.asarray(items, dtype=object), i_idx, X, B


def scores(
    pairs: pd.DataFrame, spec: SimilaritySpec, chunk: int = 200_000
) -> tuple[np.ndarray, dict[str, sp.csr_matrix], sp.csr_matrix]:
    """(items, {algo: item × item score matrix}, cooc matrix); diagonals removed."""
    if spec.time_decay_days:
        raise ValueError("the sparse peer has no time decay")
    items, _, X, B = _matrices(pairs["user_id"], pairs["item_id"], pairs["b"])
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
        acc = sp.csr_matrix((B.shape[1], B.shape[1]))
        for us, vs, c in _swing_pairs(B, chunk):
            Z = B[us].multiply(B[vs]).tocsr()
            acc = acc + (Z.T @ sp.diags(w[us] * w[vs] / (spec.swing_alpha + c)) @ Z)
        out["swing"] = acc
    return items, {a: _drop_self(m, np.arange(m.shape[0])) for a, m in out.items()}, cooc


def _drop_self(m, rows: np.ndarray) -> sp.csr_matrix:
    """Zero the entries (r, rows[r]) — row r is item rows[r] — and drop them."""
    m = m.tocsr()
    own = np.repeat(rows, np.diff(m.indptr))
    m.data[m.indices == own] = 0
    m.eliminate_zeros()
    return m


def _swing_pairs(B: sp.csr_matrix, chunk: int, band: int = 2000):
    """Chunks of ≤ `chunk` user pairs u < v with |I_u ∩ I_v| ≥ 2 and their overlaps, in (u, v)
    order. The overlaps BBᵀ are computed `band` users at a time, never all users × all users."""
    for s in range(0, B.shape[0], band):
        ov = sp.triu(B[s : s + band] @ B.T, k=s + 1).tocoo()
        keep = ov.data >= 2
        us, vs, c = ov.row[keep] + s, ov.col[keep], ov.data[keep]
        order = np.lexsort((vs, us))
        us, vs, c = us[order], vs[order], c[order]
        for t in range(0, len(us), chunk):
            yield us[t : t + chunk], vs[t : t + chunk], c[t : t + chunk]


def row_top_k(m: sp.csr_matrix, k: int):
    """(rows, cols, values) of the k best entries of every row, rows ascending, each row best first:
    score rounded to 1e-9 descending, then column (= item id order) ascending — one sort for all."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    order = np.lexsort((m.indices, -np.round(m.data, 9), rows))
    order = order[np.arange(order.size) - m.indptr[rows[order]] < k]
    return rows[order], m.indices[order], m.data[order]


def neighbor_table(
    algo: str, items: np.ndarray, rows: np.ndarray, m: sp.csr_matrix, cooc: sp.csr_matrix, k: int
) -> pa.Table:
    """The lists of one algo as Arrow rows (algo, item_id, neighbors, n_neighbors): row r of `m` and
    of `cooc` is item items[rows[r]], columns are items."""
    r, c, v = row_top_k(m, k)
    cooc = cooc.tocsr()
    cooc.sort_indices()
    n = np.int64(cooc.shape[1])
    keys = np.repeat(np.arange(cooc.shape[0], dtype=np.int64), np.diff(cooc.indptr)) * n + cooc.indices
    cc = cooc.data[np.searchsorted(keys, r * n + c)].astype(np.int64)
    first, starts, counts = np.unique(r, return_index=True, return_counts=True)
    offsets = np.append(starts, r.size).astype(np.int32)
    names = pa.array(items, pa.string())
    nb = pa.StructArray.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pa.array(c, pa.int32()), names).cast(pa.string()),
            pa.array(v),
            pa.array(v / np.repeat(v[starts], counts)),
            pa.array(cc),
        ],
        fields=list(NEIGHBOR),
    )
    return pa.Table.from_arrays(
        [
            pa.array(np.full(first.size, algo, dtype=object), pa.string()),
            pa.DictionaryArray.from_arrays(pa.array(rows[first], pa.int32()), names).cast(pa.string()),
            pa.ListArray.from_arrays(pa.array(offsets), nb),
            pa.array(counts.astype(np.int32)),
        ],
        schema=TABLE,
    )


def top_k(items: np.ndarray, mats: dict[str, sp.csr_matrix], cooc: sp.csr_matrix, k: int) -> pa.Table:
    """The neighbor lists of `scores`' matrices, in the Spark job's row format."""
    rows = np.arange(len(items))
    return pa.concat_tables([neighbor_table(a, items, rows, m, cooc, k) for a, m in mats.items()])


def as_dict(table) -> dict[tuple[str, str], list[tuple[str, float, int]]]:
    """(algo, item_id) → [(neighbor, score, cooc)] from Arrow or Spark rows (comparisons, tests)."""
    rows = table.to_pylist() if isinstance(table, pa.Table) else [r.asDict(recursive=True) for r in table]
    return {(r["algo"], r["item_id"]): [(n["item_id"], n["score"], n["cooc"]) for n in r["neighbors"]] for r in rows}


def block_rows(tbl: pa.Table, spec: SimilaritySpec, k: int) -> pa.Table:
    """The rows of one item block (the Spark blocks engine): `tbl` holds the full item lists of the
    users touching the block, `in_block` flags the block's items and `nrm` is each item's global
    norm Σ_u b². Same algebra as `scores`, restricted to the block's rows."""
    items, i_idx, X, B = _matrices(
        tbl.column("user_id").to_numpy(), tbl.column("item_id").to_numpy(), tbl.column("b").to_numpy()
    )
    in_block = tbl.column("in_block").to_numpy(zero_copy_only=False)
    rows = np.unique(i_idx[in_block])
    nrm = np.empty(len(items))
    nrm[i_idx] = tbl.column("nrm").to_numpy()
    inv, inv_r = sp.diags(1.0 / np.sqrt(nrm)), sp.diags(1.0 / np.sqrt(nrm[rows]))
    n_u = np.asarray(B.sum(axis=1)).ravel()
    Bc = B.tocsc()
    Xr, Br = X.tocsc()[:, rows].T.tocsr(), Bc[:, rows].T.tocsr()
    cooc = (Br @ B).tocsr()
    mats = {}
    if "itemcf" in spec.algos:
        mats["itemcf"] = inv_r @ (Xr @ X) @ inv
    if "itemcf_iuf" in spec.algos:
        mats["itemcf_iuf"] = inv_r @ (Xr @ sp.diags(1.0 / np.log1p(n_u)) @ X) @ inv
    if "swing_simple" in spec.algos:
        mats["swing_simple"] = Br @ sp.diags(1.0 / (spec.simple_alpha + n_u)) @ B
    if "swing" in spec.algos:
        # the user pairs sharing one of the block's items (never the full BBᵀ, which every block
        # would recompute); their full overlap is the row sum of B_u ∘ B_v
        shared = sp.triu(Br.T @ Br, k=1).tocoo()
        order = np.lexsort((shared.col, shared.row))
        us, vs = shared.row[order], shared.col[order]
        Z = B[us].multiply(B[vs]).tocsr()
        c = np.diff(Z.indptr)
        keep = c >= 2
        us, vs, c, Z = us[keep], vs[keep], c[keep], Z[keep]
        w = (spec.user_alpha + n_u) ** spec.user_beta
        mats["swing"] = Z.tocsc()[:, rows].T @ sp.diags(w[us] * w[vs] / (spec.swing_alpha + c)) @ Z
    if not mats or not rows.size:
        return TABLE.empty_table()
    return pa.concat_tables([neighbor_table(a, items, rows, _drop_self(m, rows), cooc, k) for a, m in mats.items()])
