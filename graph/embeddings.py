"""Graph embeddings end to end on arrays: walks on Ray, skip-gram / EGES training in a Ray task,
nearest-neighbour evaluation with faiss. No Spark and no I/O here (the job feeds it arrays).

Methods: ``deepwalk`` (weighted walks, p = q = 1), ``node2vec`` (weighted walks biased by p, q),
``eges`` (DeepWalk's walks, the EGES model over the side-information fields); ``lightgcn`` is
trained by the job on the user-item graph (``graph.lightgcn``), not here. Each walk method trains
in one Ray task, submitted together: DeepWalk / Node2Vec on one CPU each (the skip-gram kernel is
sequential), EGES on every CPU of a node (torch's intra-op threads). The embeddings are sparse
and small, and data-parallel DDP would all-reduce dense copies of them every step — on a few
cores that costs more than it saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recfactory.graph.embedding_spec import WALK_METHODS, EmbeddingSpec, TrainSpec

if TYPE_CHECKING:
    from recfactory.graph.walks import Graph

# torch and numba (graph.skipgram, graph.walks) are imported where the training runs: what reads the
# specs or searches neighbours (``nearest``) imports this module without them.


@dataclass
class Fitted:
    vectors: np.ndarray  # n × dim float32 (rows of nodes without a vector are NaN)
    has_vector: np.ndarray  # bool
    cold: np.ndarray  # bool: no walk reached the node (a cold item)
    losses: list[float]
    attention: dict[str, float] = field(default_factory=dict)


def _train_task(
    method: str,
    walks: np.ndarray,
    n: int,
    fields: np.ndarray,
    vocab: list[int],
    field_names: list[str],
    spec: TrainSpec,
    progress: bool,
    threads: int,
) -> Fitted:
    import torch

    from recfactory.graph.skipgram import EGES, SkipGram, train

    torch.set_num_threads(threads or max(1, torch.get_num_threads()))
    seen = np.zeros(n, dtype=bool)
    seen[walks[walks >= 0]] = True
    model: SkipGram | EGES
    if method == "eges":
        model = EGES(n, spec.dim, fields, vocab, seed=spec.seed)
    else:
        model = SkipGram(n, spec.dim, seed=spec.seed)
    losses = train(model, walks, spec, progress=progress, threads=threads)
    cold = ~seen
    if method == "eges":
        vec = model.vectors(np.flatnonzero(cold))
        att = model.attention(np.flatnonzero(seen))
        attention = {name: round(float(a), 6) for name, a in zip(["item_id", *field_names], att, strict=True)}
        has = np.ones(n, dtype=bool) if vocab else seen
    else:
        vec, attention, has = model.vectors(), {}, seen.copy()
    vec[~has] = np.nan
    return Fitted(vec, has, cold, losses, attention)


def fit(
    graph: Graph,
    fields: np.ndarray,
    vocab: list[int],
    field_names: list[str],
    spec: EmbeddingSpec,
    seed: int,
    progress: bool = True,
    cpus: tuple[int, int] | None = None,
) -> dict[str, Fitted]:
    """One `Fitted` per walk method of the spec (``WALK_METHODS``). `fields` (n × F codes) and `vocab` describe the side information
    of every node (EGES); walks are shared between DeepWalk and EGES. On the caller's Ray, whose
    topology `cpus` is (as `random_walks` takes it)."""
    import ray

    from recfactory.graph.walks import local_cpus, random_walks

    # EGES trains with torch threads and takes every CPU of one node (`cpus[0]`); DeepWalk and
    # Node2Vec train with the single-threaded skip-gram kernel, one CPU each, side by side
    topology = cpus or local_cpus()
    per_node = topology[0]
    tspec = TrainSpec.of(spec)
    walks: dict[tuple[float, float], ray.ObjectRef] = {}
    futures = {}
    for m in [m for m in spec.methods if m in WALK_METHODS]:
        pq = (spec.p, spec.q) if m == "node2vec" else (1.0, 1.0)
        if pq not in walks:
            walks[pq] = ray.put(
                random_walks(
                    graph,
                    spec.walks_per_node,
                    spec.walk_length,
                    *pq,
                    seed=seed,
                    shards=spec.shards,
                    progress=progress,
                    cpus=topology,
                )
            )
        task = ray.remote(num_cpus=per_node if m == "eges" else 1)(_train_task)
        futures[m] = task.remote(m, walks[pq], graph.n, fields, vocab, field_names, tspec, progress, per_node)
    return {m: ray.get(f) for m, f in futures.items()}


def nearest(vectors: np.ndarray, valid: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """For each query node, the k nearest valid nodes by cosine (itself excluded): q × k node ids,
    −1 where fewer exist or the query has no vector. Exact search (faiss IndexFlatIP)."""
    import faiss

    out = np.full((len(queries), k), -1, dtype=np.int64)
    ids = np.flatnonzero(valid)
    if not len(ids) or not len(queries):
        return out
    x = np.ascontiguousarray(vectors[ids], dtype=np.float32)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    qv = valid[queries]
    qx = np.ascontiguousarray(vectors[queries[qv]], dtype=np.float32)
    faiss.normalize_L2(qx)
    _, found = index.search(qx, min(k + 1, len(ids)))
    found = np.where(found >= 0, ids[np.maximum(found, 0)], -1)
    found[found == queries[qv][:, None]] = -1  # drop the query itself
    rows = np.full((qv.sum(), k), -1, dtype=np.int64)
    for r in range(found.shape[0]):  # keep order, skip the removed self
        f = found[r][found[r] >= 0][:k]
        rows[r, : len(f)] = f
    out[qv] = rows
    return out
