"""Weighted random walks — DeepWalk (p = q = 1) and Node2Vec (return p, in-out q) — in O(E) memory.

The graph is a CSR (``Graph``): row v lists v's out-neighbours in increasing order with their
weights. A walk from v draws its next node with probability w(v, x) / Σ_x w(v, x) (first order),
and — Node2Vec, after a first step from t to v — with probability ∝ w(v, x) · α(t, x), where
α = 1/p if x = t, 1 if the edge t → x exists, 1/q otherwise (Grover & Leskovec 2016, on weighted
edges). No O(Σ deg²) table of second-order transitions is ever built:

- first-order draws use the row's normalised cumulative weights stored once for the whole graph,
  shifted by the row number (key[e] = v + cumsum_v(w)[e] / Σ_v w ∈ (v, v + 1]), so one
  ``searchsorted`` over the global key array draws the next node of every walker at once — the
  inverse-CDF equivalent of per-node alias tables (O(E) memory, O(log deg) per draw, vectorised
  in NumPy instead of a Python loop per node);
- the p/q bias by rejection (KnightKing, SOSP 2019): propose x first-order, accept with
  probability α(t, x) / max(1/p, 1, 1/q); "t → x exists" is a ``searchsorted`` over the sorted
  edge keys t·n + x. The expected number of proposals per step is at most max(1/p,1,1/q)/min(…).

Randomness is counter-based: every uniform is a hash (SplitMix64) of (seed, walk id, step,
proposal), so a walk depends only on its id — the same walks for the same seed whatever the
number of shards or Ray workers. Walk id = round · n + start node. A walk stops early at a node
without out-edges; the rest of its row is −1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, vectorised (uint64 arithmetic wraps modulo 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, walk: np.ndarray, step: int, proposal: int) -> np.ndarray:
    """U[0, 1) for each walk id, a pure function of (seed, walk, step, proposal)."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLD * np.uint64(1 + step * 65_537 + proposal))
        x = _mix(x ^ (walk.astype(np.uint64) * _GOLD))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


@dataclass(frozen=True)
class Graph:
    """A weighted directed graph in CSR form, plus the keys the walker searches."""

    indptr: np.ndarray   # int64, n + 1
    indices: np.ndarray  # int32, E, increasing within each row
    weights: np.ndarray  # float64, E, > 0

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_edges(cls, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int) -> "Graph":
        """From edge arrays over nodes 0..n−1 (duplicate edges are summed, self-loops dropped)."""
        import scipy.sparse as sp

        src, dst, weight = np.asarray(src), np.asarray(dst), np.asarray(weight, dtype=np.float64)
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
            raise ValueError(f"edge endpoints must be in [0, {n})")
        if (weight <= 0).any() or not np.isfinite(weight).all():
            raise ValueError("edge weights must be finite and > 0")
        keep = src != dst
        m = sp.csr_matrix((weight[keep], (src[keep], dst[keep])), shape=(n, n))
        m.sum_duplicates()
        m.sort_indices()
        return cls(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float64))

    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def arrays(self) -> dict[str, np.ndarray]:
        """What a walker needs (put once in Ray's object store, read zero-copy by every task)."""
        deg = self.degree()
        rows = np.repeat(np.arange(self.n, dtype=np.int64), deg)
        # cumulative weight within each row, normalised to (0, 1], shifted by the row number
        csum = np.cumsum(self.weights)
        start = self.indptr[:-1][rows]
        local = csum - (csum[start] - self.weights[start])
        total = local[self.indptr[1:][rows] - 1]
        key = rows + np.minimum(local / total, 1.0)
        ekey = rows * self.n + self.indices
        return {"indptr": self.indptr, "indices": self.indices, "key": key, "ekey": ekey}


def _first_order(a: dict, cur: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The next node of walkers at `cur` (all with out-edges), drawn by the uniforms `u`."""
    e = np.searchsorted(a["key"], cur + u, side="right")
    e = np.clip(e, a["indptr"][cur], a["indptr"][cur + 1] - 1)
    return a["indices"][e].astype(np.int64)


def _has_edge(a: dict, t: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    k = t * n + x
    pos = np.minimum(np.searchsorted(a["ekey"], k), max(len(a["ekey"]) - 1, 0))
    return a["ekey"][pos] == k if len(a["ekey"]) else np.zeros(len(k), dtype=bool)


def walk(a: dict, walk_ids: np.ndarray, length: int, p: float = 1.0, q: float = 1.0,
         seed: int = 0, max_proposals: int = 10_000) -> np.ndarray:
    """Walks (len(walk_ids) × length, int32, −1 after an early stop) for the given walk ids; walk
    id w starts at node w mod n. `a` is ``Graph.arrays()``."""
    if p <= 0 or q <= 0 or length < 1:
        raise ValueError("p and q must be > 0, length >= 1")
    indptr = a["indptr"]
    n = len(indptr) - 1
    walk_ids = np.asarray(walk_ids, dtype=np.int64)
    out = np.full((len(walk_ids), length), -1, dtype=np.int32)
    cur = walk_ids % n
    out[:, 0] = cur
    prev = np.full(len(walk_ids), -1, dtype=np.int64)
    alive = np.arange(len(walk_ids))
    biased = not (p == 1.0 and q == 1.0)
    top = max(1.0 / p, 1.0, 1.0 / q)
    for step in range(1, length):
        alive = alive[indptr[cur[alive] + 1] > indptr[cur[alive]]]
        if not alive.size:
            break
        nxt = np.empty(alive.size, dtype=np.int64)
        todo = np.arange(alive.size)
        for proposal in range(max_proposals):
            w = walk_ids[alive[todo]]
            x = _first_order(a, cur[alive[todo]], uniforms(seed, w, step, 2 * proposal))
            if not biased or step == 1:
                nxt[todo] = x
                break
            t = prev[alive[todo]]
            alpha = np.where(x == t, 1.0 / p, np.where(_has_edge(a, t, x, n), 1.0, 1.0 / q))
            ok = uniforms(seed, w, step, 2 * proposal + 1) * top < alpha
            nxt[todo[ok]] = x[ok]
            todo = todo[~ok]
            if not todo.size:
                break
        else:
            raise RuntimeError(f"rejection sampling did not converge in {max_proposals} proposals")
        prev[alive] = cur[alive]
        cur[alive] = nxt
        out[alive, step] = nxt
    return out


def walk_ids(n: int, walks_per_node: int, nodes: np.ndarray | None = None) -> np.ndarray:
    """Walk ids round·n + start for every start node (all nodes with out-edges by default)."""
    starts = np.arange(n, dtype=np.int64) if nodes is None else np.asarray(nodes, dtype=np.int64)
    return (np.arange(walks_per_node, dtype=np.int64)[:, None] * n + starts[None, :]).ravel()


def random_walks(graph: Graph, walks_per_node: int, length: int, p: float = 1.0, q: float = 1.0,
                 seed: int = 0, shards: int = 0, progress: bool = True) -> np.ndarray:
    """All walks of the graph's nodes with out-edges, computed by Ray tasks over shards of walk ids
    (the CSR put once in the object store). shards = 0: 4 per available CPU. Rows are in walk-id
    order, so the result does not depend on the shard count."""
    import ray

    from recfactory.jobs.runtime.ray_runtime import init_ray

    init_ray()
    ids = walk_ids(graph.n, walks_per_node, np.flatnonzero(graph.degree() > 0))
    if not ids.size:
        return np.zeros((0, length), dtype=np.int32)
    shards = shards or max(1, 4 * int(ray.available_resources().get("CPU", 1)))
    parts = np.array_split(ids, min(shards, ids.size))
    ref = ray.put(graph.arrays())
    task = ray.remote(num_cpus=1)(walk)
    futures = [task.remote(ref, part, length, p, q, seed) for part in parts]
    _progress(ray, futures, progress, "walks")
    return np.concatenate(ray.get(futures))


def _progress(ray, futures: list, enabled: bool, what: str) -> None:
    """Wait for Ray futures with a tqdm bar (tqdm ships with Ray)."""
    from tqdm.auto import tqdm

    pending = list(futures)
    with tqdm(total=len(pending), desc=what, disable=not enabled, mininterval=2.0) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
