"""RQ-KMeans on Ray: the codebook fit as one task holding a node's threads, and the catalog's
nearest-code search sharded over tasks (``ShardedSearch``, the ``search`` of ``rq.encode``). Both run
on the caller's Ray (the job starts it)."""

from __future__ import annotations

import numpy as np

from recfactory.tokenizers.rq import Codebooks, RQSpec


def _fit_task(sample: np.ndarray, spec_dict: dict, cpus: int):
    """Ray task: the codebooks, with the task's CPUs as faiss / numba threads."""
    import time

    import faiss
    import numba

    from recfactory.tokenizers.rq import fit

    faiss.omp_set_num_threads(cpus)
    numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    t0 = time.time()
    return fit(sample, RQSpec(**spec_dict)).centroids, time.time() - t0


def _search_task(r: np.ndarray, c: np.ndarray, m: int):
    import faiss

    from recfactory.tokenizers.rq import ranked_candidates

    faiss.omp_set_num_threads(1)
    d, ids = ranked_candidates(r, c, m)
    return d, ids.astype(np.int32)


class ShardedSearch:
    """The nearest-code search of the catalog assignment as Ray tasks over fixed-size row shards,
    the codebook broadcast once per level through the object store. Shards are cut by row count
    (rows are in item-id order), so neither the input's partitioning nor the cluster's size
    changes a row's candidates — and ``ranked_candidates`` re-scores them in float64 per row."""

    def __init__(self, shard_rows: int):
        self.shard_rows = shard_rows
        self.tasks = 0

    def __call__(self, r: np.ndarray, c: np.ndarray, m: int):
        from recfactory.tokenizers.rq import ranked_candidates

        if len(r) <= self.shard_rows:
            return ranked_candidates(r, c, m)
        import ray

        task = ray.remote(num_cpus=1)(_search_task)
        c_ref = ray.put(np.ascontiguousarray(c))
        refs = [task.remote(r[lo : lo + self.shard_rows], c_ref, m) for lo in range(0, len(r), self.shard_rows)]
        self.tasks += len(refs)
        parts = ray.get(refs)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


def fit_on_ray(sample: np.ndarray, spec: RQSpec, cpus: int) -> tuple[Codebooks, float]:
    """The codebooks fitted on `sample` in one Ray task with `cpus` CPUs (faiss / numba threads),
    and the fit's seconds."""
    import ray

    cents, seconds = ray.get(ray.remote(num_cpus=cpus)(_fit_task).remote(sample, spec.to_dict(), cpus))
    return Codebooks(cents), seconds
