"""Benchmark (`make bench`, never CI): content-encoder throughput on real catalog text.

The clothing-reviews catalog (1,206 items; title, class and up to three reviews each) encoded by
the int8 ONNX path and the float32 sentence-transformers path, in process at 1 and 2 threads,
with their agreement (cosine per item), and by the build_content_embeddings job on Spark (its
encode throughput metric). Writes docs/bench/content-clothing.{json,md}; asserts no time.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import pytest

from recfactory.jobs.runtime.bench import write_results

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_bench_content(spark, tmp_path):
    from recfactory.features.sources import load_dataset
    from recfactory.jobs.runtime.job import run_job
    from recfactory.tokenizers.encoders import get_encoder, item_text

    os.environ["HF_HUB_OFFLINE"] = "1"
    texts = item_text(load_dataset("clothing-reviews").items).tolist()
    res = {
        "items": len(texts),
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "in_process": {},
    }
    vecs = {}
    for threads in (1, 2):
        for name in ("minilm-onnx", "minilm-st"):
            enc = get_encoder(name, threads=threads)
            enc.encode(texts[:16])  # warm
            best = float("inf")
            for _ in range(2):
                t0 = time.time()
                vecs[name] = enc.encode(texts)
                best = min(best, time.time() - t0)
            res["in_process"][f"{name}@{threads}"] = round(len(texts) / best, 1)
    cos = (vecs["minilm-onnx"] * vecs["minilm-st"]).sum(1)
    res["cosine_onnx_vs_st"] = {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}
    wh = str(tmp_path / "wh")
    base = ["--warehouse", wh, "--as-of", "2019-01-31"]
    run_job("ingest", [*base, "--dataset", "clothing-reviews"], spark=spark)
    ctx = run_job("build_content_embeddings", [*base, "--encoders", "minilm-onnx,minilm-st"], spark=spark)
    res["job_items_per_s"] = {
        k.split(".", 1)[1]: v for k, v in ctx.metrics.items() if k.startswith("encode_items_per_s")
    }
    res["job_rows"] = ctx.row_counts
    ip = res["in_process"]
    md = [
        f"Content encoders on the clothing-reviews catalog: {len(texts):,} items, {res['mean_chars']} characters "
        f"of text on average, {res['machine']['cpus']} cores.",
        "",
        "| encoder | items/s, 1 thread | items/s, 2 threads | items/s, build_content_embeddings (Spark, 2 tasks) |",
        "|---|---|---|---|",
        *[
            f"| {n} | {ip[n + '@1']} | {ip[n + '@2']} | {res['job_items_per_s'].get(n)} |"
            for n in ("minilm-onnx", "minilm-st")
        ],
        "",
        f"int8 ONNX / float32 sentence-transformers, 1 thread: {ip['minilm-onnx@1'] / ip['minilm-st@1']:.2f}×; "
        f"cosine between their vectors: min {res['cosine_onnx_vs_st']['min']}, mean {res['cosine_onnx_vs_st']['mean']}.",
        "",
    ]
    write_results("content-clothing", res, md)
    # correctness beside the speed figures: the int8 model within quantisation error of float32, and
    # the job encoded every item with each encoder (unit vectors)
    assert cos.mean() > 0.999 and cos.min() > 0.99, res["cosine_onnx_vs_st"]
    assert all(v.shape == (len(texts), 384) for v in vecs.values())
    out = spark.read.format("delta").load(f"{wh}/content_embeddings").toPandas()
    assert sorted(out.groupby("encoder").size().to_dict().items()) == [
        ("minilm-onnx", len(texts)),
        ("minilm-st", len(texts)),
    ]
    assert np.allclose([np.linalg.norm(v) for v in out["vector"]], 1.0, atol=1e-4)
    print(json.dumps(res, indent=2))
