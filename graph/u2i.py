"""Retrieval evaluation on arrays (no Spark, no I/O): a leave-last-out split, top-K
recommendations with the user's seen items filtered, Recall@K and NDCG@K, and the two baselines
every U2I model is measured beside — popularity and item-neighbour (ItemCF / Swing) scoring; and
``hit_rate``, the metric the item-to-item evaluations (graph embeddings, alignment) report.

One held-out item per user (the user's last positive by time), so Recall@K is the hit rate of that
item in the top K and NDCG@K is 1 / log2(rank + 2) when it is there (0 otherwise): the
leave-one-out protocol of NCF (He et al., WWW 2017) and most sequential-recommendation papers.
The rows are distinct (user, item) positives (one row per pair, its latest time), so the held-out
item is never also a training positive of its user.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def leave_last_out(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train mask, test row indices): each user with at least two positives loses the last one
    (by ts, ties by item index, so the split is a function of the rows, not of their order);
    users with one positive keep it for training and are not evaluated (``last_per_user`` with 1)."""
    from recfactory.features.retrieval import last_per_user

    held = last_per_user(users, items, ts, 1)
    return ~held, np.flatnonzero(held)


def seen_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The users' training positives as a binary CSR matrix (n_users x n_items)."""
    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first, ties by the smaller index (a stable
    sort: never argpartition's internals); -1 where a row has fewer than k finite scores."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
    out = order.astype(np.int64)
    out[~np.isfinite(np.take_along_axis(scores, order, axis=1))] = -1
    return out


def recommend_dot(
    user_vecs: np.ndarray, item_vecs: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, k: int, batch: int = 4096
) -> np.ndarray:
    """Top-k items per user by inner product (LightGCN's score), the user's seen items excluded."""
    out = []
    for lo in range(0, len(users), batch):
        u = users[lo : lo + batch]
        s = user_vecs[u].astype(np.float64) @ item_vecs.T.astype(np.float64)
        s[seen[u].toarray() > 0] = -np.inf
        out.append(_top_k(s, k))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def recommend_popular(counts: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, k: int, batch: int = 4096):
    """Top-k of the training popularity per user, the user's seen items excluded."""
    out = []
    for lo in range(0, len(users), batch):
        u = users[lo : lo + batch]
        s = np.tile(np.asarray(counts, np.float64), (len(u), 1))
        s[seen[u].toarray() > 0] = -np.inf
        out.append(_top_k(s, k))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def recommend_neighbours(
    neighbours: sp.csr_matrix, users: np.ndarray, seen: sp.csr_matrix, k: int, batch: int = 4096
) -> np.ndarray:
    """Item-neighbour U2I: an item's score is the sum of its similarities to the user's seen items
    (``neighbours``: n_items x n_items, row i = item i's neighbour list and weights, e.g. ItemCF's
    top-K), seen items excluded; items no seen item points to are not recommended."""
    out = []
    for lo in range(0, len(users), batch):
        u = users[lo : lo + batch]
        s = (seen[u] @ neighbours).toarray().astype(np.float64)
        s[s <= 0] = -np.inf
        s[seen[u].toarray() > 0] = -np.inf
        out.append(_top_k(s, k))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def itemcf_neighbours(users: np.ndarray, items: np.ndarray, n_items: int, k: int) -> sp.csr_matrix:
    """ItemCF's top-k neighbours of every item from the (user, item) positives, as the n_items x
    n_items matrix ``recommend_neighbours`` scores with: the factory's ``itemcf`` (cosine of the
    items' user vectors, unit weights; ``graph.similarity_sparse``, the algebra of build_similarity's
    blocks engine), each row cut to its k best (score, then item index)."""
    import pandas as pd

    from recfactory.graph.similarity_sparse import row_top_k, scores
    from recfactory.graph.similarity_spec import SimilaritySpec

    pairs = pd.DataFrame({"user_id": np.asarray(users), "item_id": np.asarray(items), "b": 1.0})
    codes, mats, _ = scores(pairs, SimilaritySpec(algos=("itemcf",)))
    r, c, v = row_top_k(mats["itemcf"].tocsr(), k)
    codes = np.asarray(codes, np.int64)
    return sp.csr_matrix((v, (codes[r], codes[c])), shape=(n_items, n_items))


def hit_rate(recs: np.ndarray, targets: np.ndarray, ks) -> dict[int, float]:
    """HitRate@K of recommendation rows (q × kmax, best first) against one target per row (the
    item-to-item evaluations' metric; with one held-out item per user it is Recall@K)."""
    if not len(targets):
        return {k: 0.0 for k in ks}
    return {k: float((recs[:, :k] == np.asarray(targets)[:, None]).any(1).mean()) for k in ks}


def recall_ndcg(recs: np.ndarray, targets: np.ndarray, ks) -> dict[int, tuple[float, float]]:
    """{K: (Recall@K, NDCG@K)} of one held-out target per row."""
    hit = recs == np.asarray(targets)[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), recs.shape[1])
    recall = hit_rate(recs, targets, ks)
    ndcg = {k: float(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean()) if len(rank) else 0.0 for k in ks}
    return {int(k): (recall[k], ndcg[k]) for k in ks}
