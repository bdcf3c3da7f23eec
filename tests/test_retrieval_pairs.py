"""Retrieval training pairs: the plan on arrays against brute force (features.retrieval), and the
build_retrieval_pairs job on synthetic impressions (real Spark, Ray, Delta): one row per distinct
positive, the held-out last positives, every negative of its strategy's support with its q, no
false negative, the same table from another partitioning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sparkconf import shuffle_partitions

from recfactory.features.retrieval import PairInputs, RetrievalSpec, last_per_user, plan


def test_last_per_user_keeps_each_users_last_rows_when_the_user_has_more():
    rng = np.random.default_rng(0)
    users, items, ts = rng.integers(0, 25, 300), rng.integers(0, 40, 300), rng.integers(0, 9, 300)
    for n in (1, 2, 3):
        got = last_per_user(users, items, ts, n)
        df = pd.DataFrame({"u": users, "i": items, "t": ts})
        want = np.zeros(len(df), dtype=bool)
        for _, g in df.groupby("u"):
            if len(g) > n:
                want[g.sort_values(["t", "i"], kind="stable").index[-n:]] = True
        assert np.array_equal(got, want), n


def test_the_plan_draws_only_for_train_rows_and_gives_in_batch_q():
    rng = np.random.default_rng(1)
    n_users, n_items = 20, 50
    pairs = np.unique(np.stack([rng.integers(0, n_users, 400), rng.integers(0, n_items, 400)], 1), axis=0)
    users, items = pairs[:, 0], pairs[:, 1]
    ts = rng.integers(0, 1000, len(users))
    nb = np.stack([np.roll(np.arange(n_items), -s) for s in range(1, 31)], 1)  # item i's neighbours i+1, i+2, ...
    inp = PairInputs(
        users,
        items,
        ts,
        np.arange(len(users)) * 31,
        n_users,
        n_items,
        (users[:50], (items[:50] + 7) % n_items, np.ones(50)),
        (items, (items + 1) % n_items),
        nb,
    )
    spec = RetrievalSpec(hard_rank_min=2, hard_rank_max=10, swing_filter=1)
    out = plan(inp, spec)
    assert np.array_equal(out.test, last_per_user(users, items, ts, 1))
    assert np.array_equal(out.train_rows, np.flatnonzero(~out.test))
    tr = out.train_rows
    counts = np.bincount(items[tr], minlength=n_items)
    assert np.allclose(out.positive_q, counts[items] / len(tr))
    mine = {(u, i) for u, i in zip(users, items, strict=True)}
    for strategy, (neg, q) in out.negatives.items():
        assert neg.shape[0] == len(tr) and neg.shape[1] == getattr(spec, f"{strategy}_negatives")
        for r, row in enumerate(neg):
            u, p = users[tr[r]], items[tr[r]]
            for j, x in enumerate(row):
                if x < 0:
                    continue
                assert (u, x) not in mine and x != (p + 1) % n_items, (strategy, u, p, x)  # positives, Swing filter
                if strategy == "hard":  # ranks [2, 10) of p's neighbours: p+3 .. p+10
                    assert (x - p) % n_items in range(3, 11) and q[r, j] == pytest.approx(1 / 8)
                if strategy == "uniform":
                    assert q[r, j] == pytest.approx(1 / n_items)
    with pytest.raises(ValueError, match="must exceed"):
        RetrievalSpec(hard_rank_min=5, hard_rank_max=5)


@pytest.mark.spark
@pytest.mark.ray
def test_build_retrieval_pairs_on_synthetic_impressions(spark, tmp_path):
    from pyspark.sql import functions as F

    from recfactory.jobs.runtime.job import run_job

    wh = str(tmp_path / "wh")
    base = ["--warehouse", wh, "--as-of", "2026-11-28"]
    run_job("ingest", [*base, "--dataset", "synthetic", "--synthetic", "events=20000"], spark=spark)
    run_job("build_sessions", base, spark=spark)
    run_job("build_similarity", [*base, "--algos", "swing", "--no-evaluate"], spark=spark)
    graph = ["--methods", "deepwalk", "--no-evaluate", "--epochs", "1", "--walks-per-node", "4"]
    run_job("build_graph_embeddings", [*base, *graph], spark=spark)
    args = [*base, "--hard-method", "deepwalk", "--hard-rank-min", "2", "--hard-rank-max", "12"]
    ctx = run_job("build_retrieval_pairs", args, spark=spark)
    rc = ctx.row_counts
    got = spark.read.format("delta").load(f"{wh}/retrieval_pairs").toPandas()
    ev = spark.read.format("delta").load(f"{wh}/events_clean").where(F.col("ds") <= "2026-11-28").toPandas()
    pos = ev[ev["event_type"].isin(["click", "like", "cart", "purchase", "share"])]
    want = pos.groupby(["user_id", "item_id"])["ts"].max()
    assert len(got) == len(want) == rc["retrieval_pairs"] == rc["positives"]
    g = got.set_index(["user_id", "item_id"])
    assert (g["ts"].sort_index() == want.sort_index()).all()
    # the test rows: each user's last positive, when the user has two or more
    n_pos = want.groupby(level=0).size()
    test = got[got["split"] == "test"]
    assert set(test["user_id"]) == set(n_pos[n_pos > 1].index) and test["user_id"].is_unique
    assert (test["negatives"].map(len) == 0).all()
    last = want.reset_index().sort_values(["ts", "item_id"]).groupby("user_id").tail(1).set_index("user_id")["item_id"]
    assert (test.set_index("user_id")["item_id"] == last[test["user_id"]].to_numpy()).all()
    # the negatives: no false negative, each strategy within its support, q as its definition
    mine = set(zip(pos["user_id"], pos["item_id"], strict=True))
    sims = spark.read.format("delta").load(f"{wh}/item_similarity").where("algo = 'swing'").toPandas()
    top = {r.item_id: {n["item_id"] for n in r.neighbors[:20]} for r in sims.itertuples()}
    imp = ev[ev["event_type"] == "impression"].groupby("user_id")["item_id"].agg(set)
    train = got[got["split"] == "train"]
    counts = train["item_id"].value_counts()
    pop = counts**0.75 / (counts**0.75).sum()
    n_items = spark.read.format("delta").load(f"{wh}/items").select("item_id").distinct().count()
    seen = {s: 0 for s in ("uniform", "popularity", "exposed", "hard")}
    for r in train.itertuples():
        assert np.isclose(r.positive_q, counts[r.item_id] / len(train))
        for n in r.negatives:
            seen[n["strategy"]] += 1
            assert (r.user_id, n["item_id"]) not in mine and n["item_id"] not in top.get(r.item_id, set())
            if n["strategy"] == "uniform":
                assert n["q"] == pytest.approx(1 / n_items)
            elif n["strategy"] == "popularity":
                assert n["q"] == pytest.approx(pop[n["item_id"]])
            elif n["strategy"] == "exposed":
                assert n["item_id"] in imp[r.user_id] and 0 < n["q"] <= 1
            else:
                assert n["q"] == pytest.approx(1 / 10)
    assert all(seen.values()) and seen == {s: rc[f"negatives.{s}"] for s in seen}
    assert rc["negatives.uniform"] == 4 * len(train)  # 20,000 events: nothing too popular to draw
    # the same table from another partitioning of the same inputs
    with shuffle_partitions(spark, 3):
        run_job("build_retrieval_pairs", args, spark=spark)
    again = spark.read.format("delta").load(f"{wh}/retrieval_pairs").toPandas()
    key = lambda df: df.drop(columns=["run_id"]).sort_values(["user_id", "item_id"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(again), key(got))
