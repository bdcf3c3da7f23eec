"""QARM alignment: pair mining, the masked InfoNCE, SimTier, Ray Train fitting with resume, and
the align_embeddings job with its quality gate."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch
from subproc import result_of

from recfactory.tokenizers.qarm import info_nce, pair_keys, simtier, u2i_pairs


def test_u2i_triggers_match_a_hand_computation():
    # ID space: items 0 and 1 point the same way, 2 is orthogonal, 3 opposite to 0; 4 has no vector
    idv = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [0, 0]], dtype=np.float32)
    has = np.array([True, True, True, True, False])
    seq = np.array([2, 0, 3, 1, 4, 1])
    got = u2i_pairs(seq, idv, has, window=50).tolist()
    # t=1 target 0: candidates [2] → 2; t=2 target 3: [2, 0] → cos 0 vs −1 → 2;
    # t=3 target 1: [2, 0, 3] → 0; t=4 target 4: no vector; t=5 target 1: [2, 0, 3, 4] minus 4 → 0
    assert got == [[2, 0, 1], [2, 3, 2], [0, 1, 3], [0, 1, 5]]
    # a window of 1: only the previous positive (excluding the target itself)
    assert u2i_pairs(seq, idv, has, window=1).tolist() == [[2, 0, 1], [0, 3, 2], [3, 1, 3]]


@pytest.mark.spark
def test_u2i_pairs_on_spark_with_users_too_short_to_pair(spark):
    """Users with fewer than two positives give no rows (the 1M synthetic set has many); the others
    give u2i_pairs' rows and their last pair as the next-item pair."""
    import datetime as dt

    import pandas as pd

    from recfactory.jobs.align_embeddings import AlignEmbeddingsJob

    index = pd.Series(np.arange(4), index=["i0", "i1", "i2", "i3"])
    idv = np.eye(4, dtype=np.float32)
    idv[2] = idv[1]  # i2's nearest earlier item is i1
    t0 = dt.datetime(2026, 1, 1)
    rows = [
        ("u1", "i0", t0, 1),
        ("u1", "i1", t0 + dt.timedelta(1), 2),
        ("u1", "i2", t0 + dt.timedelta(2), 3),
        ("u2", "i3", t0, 4),
    ]  # u2: a single positive
    pos = spark.createDataFrame(rows, "user_id string, item_id string, ts timestamp, event_id long")
    u2i, nxt = AlignEmbeddingsJob._u2i(spark, pos, index, idv, np.ones(4, bool), 50)
    ref = u2i_pairs(np.array([0, 1, 2]), idv, np.ones(4, bool), 50)
    assert u2i.tolist() == ref[ref[:, 2] != 2][:, :2].tolist() and nxt.tolist() == [[1, 2]]


def test_info_nce_masks_known_pairs_and_repeated_items():
    torch.manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    zb = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    a, b = torch.tensor([0, 1, 2]), torch.tensor([5, 6, 5])  # b_0 == b_2: the same item
    keys = torch.as_tensor(pair_keys(np.array([0]), np.array([6]), 10))  # (0, 6) is also a positive
    scale = torch.tensor(10.0)
    got = info_nce(za, zb, a, b, keys, 10, scale)
    logits = (za @ zb.T * 10).numpy().astype(np.float64)
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 1] = True  # (a_0, b_1) = (0, 6): a known pair
    mask[0, 2] = mask[2, 0] = True  # b_2 == b_0 and b_0 == b_2
    lg = np.where(mask, -np.inf, logits)

    def ce(m):
        return np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(3)])

    assert float(got) == pytest.approx(0.5 * (ce(lg) + ce(lg.T)), rel=1e-5)


def test_simtier_histogram():
    t = np.array([1.0, 0.0])
    h = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [2.0, 0.0]])  # cos 1, 0, −1, 0.6, 1
    assert simtier(t, h, 4).tolist() == [1, 0, 1, 3]  # [−1,−.5) [−.5,0) [0,.5) [.5,1]
    assert simtier(t, h[:0], 4).tolist() == [0, 0, 0, 0]


FIT_SCRIPT = r"""
import json, sys
import numpy as np
from recfactory.jobs.runtime.ray_runtime import init_ray
from recfactory.tokenizers.qarm import AlignSpec, fit, project, recall_at_k

init_ray()
rng = np.random.default_rng(0)
n, k, d = 300, 15, 24                      # a planted partition, weakly visible in the content
cl = rng.integers(0, k, n)
content = rng.normal(size=(n, d)) + 0.3 * rng.normal(size=(k, d))[cl]
content = (content / np.linalg.norm(content, axis=1, keepdims=True)).astype(np.float32)
pairs = []
for i in range(n):
    same = np.flatnonzero(cl == cl[i])
    pairs += [(i, j) for j in rng.choice(same[same != i], 3)]
pairs = np.array(pairs)
codes = np.zeros((n, 1), dtype=np.int64)
test = np.arange(len(pairs)) % 5 == 0
spec = AlignSpec(epochs=4, batch_size=64, out_dim=24, hidden=64, lr=5e-3, checkpoint_every=2, seed=3)
first = fit(content, codes, [1], pairs[~test], spec, sys.argv[1], "run")
more = AlignSpec(**{**spec.to_dict(), "epochs": 24, "checkpoint_every": 24})
res = fit(content, codes, [1], pairs[~test], more, sys.argv[1], "run")
valid = np.ones(n, dtype=bool)
raw = recall_at_k(content, valid, pairs[test, 0], pairs[test, 1], (10,))[10]
aligned = recall_at_k(project(res.model, content, codes), valid, pairs[test, 0], pairs[test, 1], (10,))[10]
print("RESULT " + json.dumps({"first": first.history, "second": res.history, "raw": raw, "aligned": aligned}))
"""


@pytest.mark.ray
def test_fit_on_ray_train_aligns_a_planted_fixture_and_resumes_from_its_checkpoint(tmp_path):
    """In a fresh interpreter: Ray Train V2 in 2.60 can stall a third TorchTrainer started by one
    driver process (its controller never starts the worker group), and the job tests below start
    two; a job runs one per process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RECFACTORY_TMP=str(tmp_path / "t"))
    out = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(tmp_path / "ckpt")], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = result_of(out.stdout)
    assert [e["epoch"] for e in res["first"]] == [0, 1, 2, 3]
    # the same run name with more epochs resumes after epoch 3 instead of starting over
    assert res["second"][:4] == res["first"] and len(res["second"]) == 24
    assert res["second"][-1]["loss"] < res["second"][0]["loss"]
    assert res["aligned"] > 2 * res["raw"]


@pytest.fixture(scope="module")
def aligned_warehouse(spark, slice_ingested, tmp_path_factory):
    """The MovieLens slice (users 1..200, every item) through every input of align_embeddings
    (lean settings)."""
    from recfactory.jobs.runtime.job import run_job

    wh = slice_ingested(tmp_path_factory.mktemp("align") / "wh")  # the slice as of 1998-04-30
    base = ["--warehouse", wh, "--as-of", "1998-04-30"]
    run_job("build_sessions", base, spark=spark)
    run_job("build_similarity", [*base, "--algos", "swing", "--no-evaluate"], spark=spark)
    graph = ["--methods", "deepwalk,lightgcn", "--no-evaluate", "--epochs", "2", "--lightgcn-epochs", "5"]
    run_job("build_graph_embeddings", [*base, *graph, "--lightgcn-workers", "1"], spark=spark)
    run_job("build_content_embeddings", base, spark=spark)
    # the samples the SimTier features are written for (their own features are not read here)
    run_job(
        "build_training_samples", [*base, "--keys", "user=user_id,item=item_id", "--windows", "7d,all"], spark=spark
    )
    return wh, base


@pytest.mark.spark
@pytest.mark.ray
def test_align_embeddings_job_beats_raw_content_and_writes_simtier(spark, aligned_warehouse):
    from recfactory.jobs.runtime.job import run_job

    wh, base = aligned_warehouse
    # the U2I triggers picked in LightGCN's item space (the daily DAG test aligns with the default, DeepWalk's)
    ctx = run_job("align_embeddings", [*base, "--epochs", "6", "--id-method", "lightgcn"], spark=spark)
    m, rc = ctx.metrics, ctx.row_counts
    for split in ("i2i", "next_item"):
        assert m[f"recall@50.{split}.aligned"] > m[f"recall@50.{split}.content"]
    assert rc["aligned_embeddings"] == rc["items"] == 1682
    assert rc["train_pairs"] == rc["i2i_train_pairs"] + rc["u2i_pairs"] and rc["u2i_pairs"] > 0
    assert rc["i2i_train_pairs"] + rc["i2i_heldout_pairs"] + rc["i2i_pairs_without_content"] == rc["i2i_pairs"]
    emb = spark.read.format("delta").load(f"{wh}/aligned_embeddings").toPandas()
    v = np.stack(emb["vector"].to_numpy())
    assert v.shape == (1682, 128) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # no aligned model of the previous date: one row per sample, none scored (this date's model saw the labels)
    st = spark.read.format("delta").load(f"{wh}/simtier_features")
    assert st.count() == rc["training_samples"] == rc["simtier_features"] == rc["simtier_without_model"]
    assert st.where("simtier is not null or model_ds is not null").count() == 0
    # with a model published for the previous date, the samples after its end are scored with it:
    # as of the data's last day (1998-04-22), a model of 04-21
    from pyspark.sql import functions as F

    from recfactory.jobs.align_embeddings import point_in_time_simtier

    earlier = spark.read.format("delta").load(f"{wh}/aligned_embeddings").withColumn("ds", F.lit(dt.date(1998, 4, 21)))
    samples = (
        spark.read.format("delta")
        .load(f"{wh}/training_samples")
        .select(F.col("sample_id").cast("string"), "user_id", "item_id", "ts")
    )
    pos = (
        spark.read.format("delta")
        .load(f"{wh}/events_clean")
        .where(F.col("event_type") == "like")
        .select("user_id", "item_id", "ts", "event_id")
    )
    feats, model_ds = point_in_time_simtier(samples, pos, earlier, dt.date(1998, 4, 22), 10, 50)
    assert model_ds == dt.date(1998, 4, 21)
    f = feats.join(samples.select("sample_id", "ts"), "sample_id").toPandas()
    scored = f["model_ds"].notna()
    assert scored.any() and (~scored).any()
    assert (f.loc[scored, "ts"] >= pd.Timestamp("1998-04-22")).all() and (
        f.loc[~scored, "ts"] < pd.Timestamp("1998-04-22")
    ).all()
    row = f[scored & (f["history"] > 0)].iloc[0]
    assert len(row["simtier"]) == 10 and sum(row["simtier"]) == row["history"] <= 50
    model = spark.read.format("delta").load(f"{wh}/aligned_models").first()
    from safetensors.torch import load

    assert "skip.weight" in load(bytes(model["weights"]))


@pytest.mark.spark
@pytest.mark.ray
def test_a_failed_alignment_gate_publishes_nothing(spark, aligned_warehouse):
    from recfactory.jobs.runtime.delta_io import Warehouse
    from recfactory.jobs.runtime.job import QualityGateError, run_job

    wh, base = aligned_warehouse
    before = Warehouse(spark, wh).latest_version("aligned_embeddings")
    with pytest.raises(QualityGateError, match="did not beat the raw content space"):
        run_job("align_embeddings", [*base, "--epochs", "1", "--gate-min-gain", "1.0"], spark=spark)
    assert Warehouse(spark, wh).latest_version("aligned_embeddings") == before
    runs = spark.read.format("delta").load(f"{wh}/_runs").where("job = 'align_embeddings' and status = 'failed'")
    last = runs.orderBy("started_at", ascending=False).first()
    assert "recall@50.i2i.content" in last["metrics"] and "recall@50.i2i.aligned" in last["metrics"]


@pytest.mark.spark
def test_simtier_never_carries_a_planted_label_only_signal(spark):
    """Labels drawn at random, independent of every feature; the aligned model of the samples' own date
    is planted with the labels (a positive's target vector = its user's history vector, a negative's =
    its opposite), as a model trained on the samples' positive pairs would be. SimTier must come from
    the previous date's model only: its top-bucket share does not predict the label, where the planted
    model's would perfectly."""
    from pyspark.sql import functions as F

    from recfactory.features.instants import ts_lit
    from recfactory.jobs.align_embeddings import point_in_time_simtier
    from recfactory.tokenizers.qarm import simtier

    rng = np.random.default_rng(7)
    n, d = 300, 16
    labels = rng.integers(0, 2, n)
    hist = rng.normal(size=(n, d))
    noise = rng.normal(size=(n, d))
    rows = []
    for u in range(n):
        rows.append((f"h{u}", hist[u].tolist(), dt.date(1998, 4, 29)))  # the previous date's model
        rows.append((f"t{u}", noise[u].tolist(), dt.date(1998, 4, 29)))
        rows.append((f"h{u}", hist[u].tolist(), dt.date(1998, 4, 30)))  # the samples' date: planted
        rows.append((f"t{u}", (hist[u] if labels[u] else -hist[u]).tolist(), dt.date(1998, 4, 30)))
    aligned = spark.createDataFrame(rows, "item_id string, vector array<float>, ds date")
    at = lambda h: ts_lit(dt.datetime(1998, 4, 30, h, tzinfo=dt.UTC))  # noqa: E731
    samples = spark.createDataFrame(
        [(f"s{u}", f"u{u}", f"t{u}") for u in range(n)], "sample_id string, user_id string, item_id string"
    ).withColumn("ts", at(12))
    pos = spark.createDataFrame(
        [(f"u{u}", f"h{u}", u) for u in range(n)], "user_id string, item_id string, event_id long"
    ).withColumn("ts", at(1))
    feats, model_ds = point_in_time_simtier(samples, pos, aligned, dt.date(1998, 4, 30), 4, 50)
    assert model_ds == dt.date(1998, 4, 29)
    f = feats.toPandas().set_index("sample_id").loc[[f"s{u}" for u in range(n)]]
    assert (f["history"] == 1).all() and f["simtier"].notna().all()
    top = np.array([t[-1] + t[-2] for t in f["simtier"]], dtype=float)  # cos >= 0: "similar"

    def auc(score, y):
        order = np.argsort(score, kind="stable")
        ranks = np.empty(len(score))
        ranks[order] = np.arange(1, len(score) + 1)
        for v in np.unique(score):  # ties share their mean rank
            ranks[score == v] = ranks[score == v].mean()
        pos_ = y == 1
        return (ranks[pos_].sum() - pos_.sum() * (pos_.sum() + 1) / 2) / (pos_.sum() * (~pos_).sum())

    assert abs(auc(top, labels) - 0.5) < 0.1
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    leaky = np.array(
        [simtier(unit(hist[u] if labels[u] else -hist[u]), unit(hist[u])[None, :], 4)[-2:].sum() for u in range(n)],
        dtype=float,
    )
    assert auc(leaky, labels) == 1.0  # the planted signal is real
    # the same samples one day later: the planted model is now "earlier", but the samples are before its end
    later, ds = point_in_time_simtier(samples, pos, aligned, dt.date(1998, 5, 1), 4, 50)
    assert ds == dt.date(1998, 4, 30) and later.where(F.col("simtier").isNotNull()).count() == 0
