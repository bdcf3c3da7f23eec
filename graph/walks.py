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

Randomness is counter-based: the uniforms of step s, proposal j come from a Philox stream keyed
by (seed, s, j), and walk number w (its position in the run's list of walk ids) reads position w of
it — a shard jumps straight to its first walk (Philox's ``advance``). A walk therefore depends only
on its position, so the walks are the same for the same seed whatever the number of shards or Ray
workers. Walk id = round · n + start node. When every row's weights are equal (an unweighted
graph) the draw is direct, indptr[v] + ⌊u·deg(v)⌋, without the search. A walk stops early at a
node without out-edges; the rest of its row is −1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

def uniforms(seed: int, step: int, proposal: int, start: int, count: int) -> np.ndarray:
    """U[0, 1) at positions start .. start + count − 1 of the (seed, step, proposal) stream."""
    bg = np.random.Philox(key=[seed & 0xFFFFFFFFFFFFFFFF, step * 65_537 + proposal])
    bg.advance(start // 4)                 # a Philox counter step yields four 64-bit outputs
    raw = bg.random_raw(count + start % 4)[start % 4:]
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


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
        uniform = bool(np.all(self.weights == self.weights[self.indptr[:-1][rows]])) if len(rows) else True
        return {"indptr": self.indptr, "indices": self.indices, "key": key, "ekey": ekey,
                "uniform": np.array(uniform)}


def _sorted_search(keys: np.ndarray, needles: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted with the needles sorted first: NumPy then resumes each search from the
    previous hit instead of from the whole array (measured 5× faster on 400k edges, 200k walkers)."""
    order = np.argsort(needles, kind="stable")
    out = np.empty(len(needles), dtype=np.int64)
    out[order] = np.searchsorted(keys, needles[order], side=side)
    return out


def _first_order(a: dict, cur: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The next node of walkers at `cur` (all with out-edges), drawn by the uniforms `u`."""
    lo = a["indptr"][cur]
    if a["uniform"]:
        e = lo + (u * (a["indptr"][cur + 1] - lo)).astype(np.int64)
    else:
        e = _sorted_search(a["key"], cur + u, "right")
        e = np.clip(e, lo, a["indptr"][cur + 1] - 1)
    return a["indices"][e].astype(np.int64)


def _has_edge(a: dict, t: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    k = t * n + x
    pos = np.minimum(_sorted_search(a["ekey"], k, "left"), max(len(a["ekey"]) - 1, 0))
    return a["ekey"][pos] == k if len(a["ekey"]) else np.zeros(len(k), dtype=bool)


def walk(a: dict, walk_ids: np.ndarray, length: int, p: float = 1.0, q: float = 1.0,
         seed: int = 0, offset: int = 0, max_proposals: int = 10_000) -> np.ndarray:
    """Walks (len(walk_ids) × length, int32, −1 after an early stop); walk id w starts at node
    w mod n, and walk_ids[i] is walk number offset + i of the run (its random stream position).
    `a` is ``Graph.arrays()``."""
    if p <= 0 or q <= 0 or length < 1:
        raise ValueError("p and q must be > 0, length >= 1")
    indptr = a["indptr"]
    n = len(indptr) - 1
    walk_ids = np.asarray(walk_ids, dtype=np.int64)
    m = len(walk_ids)
    out = np.full((m, length), -1, dtype=np.int32)
    cur = walk_ids % n
    out[:, 0] = cur
    prev = np.full(m, -1, dtype=np.int64)
    alive = np.arange(m)
    biased = not (p == 1.0 and q == 1.0)
    top = max(1.0 / p, 1.0, 1.0 / q)
    for step in range(1, length):
        alive = alive[indptr[cur[alive] + 1] > indptr[cur[alive]]]
        if not alive.size:
            break
        if not biased or step == 1:
            nxt = _first_order(a, cur[alive], uniforms(seed, step, 0, offset, m)[alive])
        else:
            nxt = np.empty(alive.size, dtype=np.int64)
            todo = np.arange(alive.size)
            for proposal in range(max_proposals):
                w = alive[todo]
                x = _first_order(a, cur[w], uniforms(seed, step, 2 * proposal, offset, m)[w])
                t = prev[w]
                alpha = np.where(x == t, 1.0 / p, np.where(_has_edge(a, t, x, n), 1.0, 1.0 / q))
                ok = uniforms(seed, step, 2 * proposal + 1, offset, m)[w] * top < alpha
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
    (the CSR put once in the object store). shards = 0: one per CPU (more past 1M walks each). Rows are in walk-id
    order, so the result does not depend on the shard count."""
    import ray

    from recfactory.jobs.runtime.ray_runtime import init_ray

    init_ray()
    ids = walk_ids(graph.n, walks_per_node, np.flatnonzero(graph.degree() > 0))
    if not ids.size:
        return np.zeros((0, length), dtype=np.int32)
    # one shard per CPU, more when a shard would pass 1M walks (its output is walks × length ints)
    shards = shards or max(int(ray.available_resources().get("CPU", 1)), -(-ids.size // 1_000_000))
    parts = np.array_split(np.arange(ids.size), min(shards, ids.size))
    ref = ray.put(graph.arrays())
    task = ray.remote(num_cpus=1)(walk)
    futures = [task.remote(ref, ids[part], length, p, q, seed, int(part[0])) for part in parts]
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
