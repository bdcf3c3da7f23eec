"""Benchmark (`make bench`, never CI): balanced RQ-KMeans against faiss, side by side on the same
embeddings, in one run.

- ours: ``tokenizers.rq`` (capacity per code on levels 1..L−1 with balance 1.0 — the job's default —
  and 0.5, one item per last code within each prefix), before any collision handling;
- faiss ``ResidualQuantizer`` (beam search, its defaults), 8 bits per level;
- plain RQ: faiss k-means per level on the residuals (20 iterations), nearest-code assignment.

All fit on the same seeded sample (at most 65,536 items) and encode every item, with 2 threads.
Datasets: MovieLens-100K aligned embeddings (``align_embeddings`` on the pipeline's outputs;
codebooks 16 × 16 × 16 for 1,682 items) and synthetic 64-d embeddings with Zipf-sized Gaussian
clusters (N / 500 clusters; codebooks 256 × 256 × 256) at BENCH_SIZE (small: 100k, 1m: 1M).

Writes docs/bench/sids-<size>.{json,md}. Nothing here asserts a time.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import pytest

from recfactory.jobs.runtime.bench import SIZES, bench_size, write_results
from recfactory.tokenizers.rq import RQSpec, capacity, encode, fit, reconstruct
from recfactory.tokenizers.sids import collision_rate, gini, row_ids

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.ray]

SAMPLE = 65536
THREADS = 2


def zipf_blobs(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = max(n // 500, 2)
    p = 1 / np.arange(1, k + 1)
    cl = rng.choice(k, n, p=p / p.sum())
    return (rng.normal(size=(k, d))[cl] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _stats(x: np.ndarray, codes: np.ndarray, recon: np.ndarray, seconds: float) -> dict:
    _, per_sid = row_ids(codes)
    return {
        "collision_rate": collision_rate(codes),
        "sid_gini": gini(per_sid),
        "max_per_sid": int(per_sid.max()),
        "recon_error": float(np.linalg.norm(x - recon, axis=1).mean()),
        "relative_recon_error": float((((x - recon) ** 2).sum(1) / np.maximum((x * x).sum(1), 1e-12)).mean()),
        "max_code_size": [int(np.bincount(codes[:, lv]).max()) for lv in range(codes.shape[1])],
        "mean_code_size": [round(len(x) / int(codes[:, lv].max() + 1), 1) for lv in range(codes.shape[1])],
        "seconds": round(seconds, 2),
    }


def _ours(x, sample, sizes, balance):
    spec = RQSpec(codebook_sizes=sizes, balance=balance)
    t0 = time.time()
    books = fit(sample, spec)
    codes = encode(x, books, spec).codes
    return _stats(x, codes, reconstruct(codes, books), time.time() - t0)


def _faiss_rq(x, sample, sizes):
    import faiss

    bits = [int(np.log2(k)) for k in sizes]
    assert len(set(bits)) == 1 and 2 ** bits[0] == sizes[0], "faiss's Python constructor takes one bit width"
    t0 = time.time()
    rq = faiss.ResidualQuantizer(x.shape[1], len(bits), bits[0])
    rq.train(sample)
    packed = rq.compute_codes(x)
    seconds = time.time() - t0
    codes = np.zeros((len(x), len(sizes)), dtype=np.int64)
    bitpos = 0
    raw = np.unpackbits(packed, axis=1, bitorder="little").astype(np.int64)
    for lv, b in enumerate(bits):
        codes[:, lv] = (raw[:, bitpos : bitpos + b] << np.arange(b)).sum(1)
        bitpos += b
    return _stats(x, codes, rq.decode(packed), seconds)


def _faiss_kmeans_rq(x, sample, sizes):
    import faiss

    t0 = time.time()
    r, rs = x.copy(), sample.copy()
    codes = np.zeros((len(x), len(sizes)), dtype=np.int64)
    recon = np.zeros_like(x)
    for lv, k in enumerate(sizes):
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=1 + lv)
        km.train(rs)
        codes[:, lv] = km.index.search(r, 1)[1][:, 0]
        rs -= km.centroids[km.index.search(rs, 1)[1][:, 0]]
        recon += km.centroids[codes[:, lv]]
        r -= km.centroids[codes[:, lv]]
    return _stats(x, codes, recon, time.time() - t0)


def _movielens_aligned(spark, tmp_path) -> np.ndarray:
    from recfactory.jobs.runtime.job import run_job

    wh = str(tmp_path / "ml")
    base = ["--warehouse", wh, "--as-of", "1998-04-30"]
    for job, extra in [
        ("ingest", []),
        ("build_sessions", []),
        ("build_similarity", ["--algos", "swing"]),
        ("build_graph_embeddings", ["--methods", "deepwalk", "--no-evaluate"]),
        ("build_content_embeddings", []),
        ("align_embeddings", []),
    ]:
        run_job(job, [*base, *extra], spark=spark)
    pdf = spark.read.format("delta").load(f"{wh}/aligned_embeddings").orderBy("item_id").toPandas()
    return np.stack(pdf["vector"].to_numpy()).astype(np.float32)


def test_bench_sids(spark, tmp_path):
    import faiss

    size = bench_size()
    faiss.omp_set_num_threads(THREADS)
    import numba

    numba.set_num_threads(THREADS)
    n = SIZES.get(size, SIZES["small"])
    datasets = {
        "movielens-aligned": (_movielens_aligned(spark, tmp_path), (16, 16, 16)),
        f"zipf-{size}": (zipf_blobs(n), (256, 256, 256)),
    }
    warm = zipf_blobs(3000, 8)  # JIT caches and imports out of the timings
    _ours(warm, warm, (16, 16, 16), 1.0)
    _faiss_rq(warm, warm, (16, 16, 16))
    res = {"size": size, "threads": THREADS, "cpu": platform.processor() or platform.machine(), "datasets": {}}
    for name, (x, sizes) in datasets.items():
        x = x / np.linalg.norm(x, axis=1, keepdims=True) if name.startswith("movielens") else x
        x = np.ascontiguousarray(x, dtype=np.float32)
        rng = np.random.default_rng(0)
        sample = x[np.sort(rng.choice(len(x), min(len(x), SAMPLE), replace=False))]
        rows = {
            "ours (balance 1.0)": _ours(x, sample, sizes, 1.0),
            "ours (balance 0.5)": _ours(x, sample, sizes, 0.5),
            "faiss ResidualQuantizer": _faiss_rq(x, sample, sizes),
            "faiss k-means per level": _faiss_kmeans_rq(x, sample, sizes),
        }
        ours, peer = rows["ours (balance 1.0)"], rows["faiss ResidualQuantizer"]
        ratios = {
            "collision_faiss_rq_over_ours": peer["collision_rate"] / max(ours["collision_rate"], 1e-9),
            "gini_faiss_rq_over_ours": peer["sid_gini"] / max(ours["sid_gini"], 1e-9),
            "recon_ours_over_faiss_rq": ours["recon_error"] / peer["recon_error"],
            "time_ours_over_faiss_rq": ours["seconds"] / peer["seconds"],
        }
        res["datasets"][name] = {
            "items": len(x),
            "dim": x.shape[1],
            "codebooks": list(sizes),
            "rows": rows,
            "ratios": ratios,
        }
    md = [
        f"# Semantic IDs: balanced RQ-KMeans vs faiss ({size})",
        "",
        f"{THREADS} threads; every method fits on the same seeded sample (≤ {SAMPLE:,} items) and encodes every "
        "item; collision rate = 1 − distinct SIDs / items, before collision handling; Gini over the items per "
        "distinct SID; recon error = mean ‖e − ê‖. Generated by `tests/test_bench_sids.py`.",
        "",
    ]
    for name, d in res["datasets"].items():
        md += [
            f"## {name}: {d['items']:,} × {d['dim']}-d, codebooks {' × '.join(map(str, d['codebooks']))}",
            "",
            "| method | collision rate | SID Gini | max items/SID | recon error | relative recon | max code "
            "size per level | time (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, r in d["rows"].items():
            md.append(
                f"| {m} | {r['collision_rate']:.4f} | {r['sid_gini']:.4f} | {r['max_per_sid']} | "
                f"{r['recon_error']:.4f} | {r['relative_recon_error']:.4f} | "
                f"{' / '.join(map(str, r['max_code_size']))} | {r['seconds']} |"
            )
        q = d["ratios"]
        md += [
            "",
            f"faiss RQ / ours: collision rate {q['collision_faiss_rq_over_ours']:.1f}×, Gini "
            f"{q['gini_faiss_rq_over_ours']:.1f}× (target ≥ 2×); recon error ours / faiss RQ "
            f"{q['recon_ours_over_faiss_rq']:.3f} (target ≤ 1.10); time ours / faiss RQ "
            f"{q['time_ours_over_faiss_rq']:.2f} (target ≤ 2).",
            "",
        ]
    write_results(f"sids-{size}", res, md)
    # correctness beside the speed figures: the balanced first level holds its capacity, and every
    # method reconstructs better than nothing (relative error < 1)
    for name, d in res["datasets"].items():
        for method, balance in (("ours (balance 1.0)", 1.0), ("ours (balance 0.5)", 0.5)):
            r = d["rows"][method]
            assert r["max_code_size"][0] <= capacity(d["items"], d["codebooks"][0], balance), (name, method, r)
        assert all(r["relative_recon_error"] < 1 for r in d["rows"].values()), name
