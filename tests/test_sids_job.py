"""build_sids on real local Spark + Ray + Delta: DeepWalk vectors of the MovieLens slice (users 1..200,
every item) → semantic IDs,
then a day with catalog changes, a new generation, the other collision strategy, hourglass options
and a failing gate."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.ray]

D1, D2, D3 = "1998-04-30", "1998-05-01", "1998-05-02"
SMALL = [
    "--embeddings",
    "graph_embeddings",
    "--embedding-filter",
    "method = 'deepwalk'",
    "--codebook-sizes",
    "16,16,16",
    "--sample-size",
    "1000",
]


@pytest.fixture(scope="module")
def sid_warehouse(spark, slice_ingested, tmp_path_factory):
    """The MovieLens slice: ingest → sessions → Swing → DeepWalk (lean), then build_sids for D1."""
    from recfactory.jobs.runtime.job import run_job

    wh = slice_ingested(tmp_path_factory.mktemp("sids") / "wh")  # the MovieLens slice as of D1
    base = ["--warehouse", wh, "--as-of", D1]
    run_job("build_sessions", base, spark=spark)
    run_job("build_similarity", [*base, "--algos", "swing", "--no-evaluate"], spark=spark)
    run_job("build_graph_embeddings", [*base, "--methods", "deepwalk", "--no-evaluate", "--epochs", "2"], spark=spark)
    ctx = run_job("build_sids", [*base, *SMALL], spark=spark)
    return wh, ctx


def _table(spark, wh, name, ds):
    return spark.read.format("delta").load(f"{wh}/{name}").where(f"ds = '{ds}'").toPandas()


def test_first_run_publishes_unique_balanced_sids_with_metrics(spark, sid_warehouse):
    wh, ctx = sid_warehouse
    rc, m = ctx.row_counts, ctx.metrics
    emb = _table(spark, wh, "graph_embeddings", D1)
    emb = emb[emb["method"] == "deepwalk"]
    # every embedding row is either encoded or quarantined (DeepWalk leaves unreached items NULL)
    assert rc["embedding_rows"] == len(emb) == rc["items"] + rc["quarantined"]
    q = _table(spark, wh, "sid_quarantine", D1)
    assert len(q) == rc["quarantined"] == int(emb["vector"].isna().sum()) > 0
    assert set(q["reason"]) == {"null vector"}
    sids = _table(spark, wh, "semantic_ids", D1)
    gen1 = sids["generation"].iloc[0]
    assert len(sids) == rc["items"] and sids["sid"].is_unique and (sids["generation"] == gen1).all()
    assert gen1.startswith(f"{D1}.") and ctx.notes["generation"] == f"{gen1} (new)"
    assert sids["in_catalog"].all() and (sids["codes"].map(len) == 3).all()
    codes = np.stack(sids["rq_codes"].to_numpy())
    n = len(sids)
    assert np.bincount(codes[:, 0]).max() <= int(np.ceil(2 * n / 16))  # balance 1.0 on level 1
    look = _table(spark, wh, "sid_lookup", D1)
    assert dict(zip(look["sid"], look["item_id"], strict=True)) == dict(zip(sids["sid"], sids["item_id"], strict=True))
    feats = _table(spark, wh, "sid_features", D1)
    assert len(feats) == n and (feats["prefix_ngram_ids"].map(len) == 3).all()
    assert (feats["bigram_ids"].map(len) == 2).all()
    cb = _table(spark, wh, "sid_codebooks", D1)
    assert len(cb) == 48 and (cb["generation"] == gen1).all()
    met = _table(spark, wh, "sid_metrics", D1).sort_values("level")
    assert met["level"].tolist() == [0, 1, 2, 3]
    total = met.iloc[0]
    assert total["collision_rate_after"] == 0.0 and total["items"] == n
    assert total["collision_rate_before"] == pytest.approx(m["collision_rate_before"], abs=1e-6)
    lv = met.iloc[1:]
    assert (lv["recon_error"].diff().dropna() < 0).all()  # each level refines
    assert lv["prefix_recall"].iloc[0] > 2 * lv["prefix_recall_random"].iloc[0]  # level 1 groups neighbours
    # the codebooks reproduce the published codes' reconstruction error
    vec = emb.dropna(subset=["vector"]).set_index("item_id")["vector"]
    X = np.stack(vec.reindex(sids["item_id"]).to_numpy()).astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rec = sum(
        np.stack(cb[cb["level"] == lvl].sort_values("code")["centroid"].to_numpy())[codes[:, lvl - 1]]
        for lvl in (1, 2, 3)
    )
    assert np.linalg.norm(X - rec, axis=1).mean() == pytest.approx(total["recon_error"], rel=1e-4)


def _next_day(spark, wh, src, dst, drop, add):
    """The DeepWalk partition of `src` again as `dst`, without `drop` items and with `add` new ones
    (perturbed copies of existing vectors under new ids)."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(f"{wh}/graph_embeddings").where(f"ds = '{src}' and method = 'deepwalk'")
    pdf = df.toPandas()
    keep = pdf[~pdf["item_id"].isin(drop)]
    rng = np.random.default_rng(0)
    base = pdf.dropna(subset=["vector"]).iloc[:add].copy()
    base["item_id"] = [f"new{i}" for i in range(add)]
    base["vector"] = [list(np.asarray(v) + 0.05 * rng.normal(size=len(v))) for v in base["vector"]]
    import pandas as pd

    from recfactory.jobs.runtime.job import Job, JobParams, execute

    out = spark.createDataFrame(pd.concat([keep, base]).drop(columns=["ds"]), df.drop("ds").schema)

    class NextDay(Job):
        """Published as a run of the table's producer for dst publishes it (its _runs row names the
        version): readers inside the factory read published versions only."""

        name = "build_graph_embeddings"
        outputs = ("graph_embeddings",)

        def run(self, ctx):
            ctx.write(out.withColumn("ds", F.lit(ctx.as_of)), "graph_embeddings")

    execute(NextDay, JobParams(warehouse=wh, as_of=dst), spark=spark)


def test_daily_runs_keep_published_sids_and_a_new_generation_remaps(spark, sid_warehouse):
    from recfactory.jobs.runtime.job import run_job

    wh, _ = sid_warehouse
    day1 = _table(spark, wh, "semantic_ids", D1).set_index("item_id")
    gone = list(day1.index[:5])
    _next_day(spark, wh, D1, D2, gone, 40)
    ctx = run_job("build_sids", ["--warehouse", wh, "--as-of", D2, *SMALL], spark=spark)
    day2 = _table(spark, wh, "semantic_ids", D2).set_index("item_id")
    assert ctx.row_counts["new_items"] == 40 and ctx.row_counts["kept_items"] == len(day1)
    # published SIDs never move; removed items keep their row, flagged
    assert (day2.loc[day1.index, "sid"] == day1["sid"]).all()
    assert not day2.loc[gone, "in_catalog"].any() and day2.drop(index=gone)["in_catalog"].all()
    assert day2["sid"].is_unique and len(day2) == len(day1) + 40
    assert (day2.loc[[f"new{i}" for i in range(40)], "assigned_ds"] == dt.date.fromisoformat(D2)).all()
    assert spark.read.format("delta").load(f"{wh}/sid_codebooks").where(f"ds = '{D2}'").count() == 0
    # rerunning the date gives the same state (prior = the previous date's partition)
    run_job("build_sids", ["--warehouse", wh, "--as-of", D2, *SMALL], spark=spark)
    again = _table(spark, wh, "semantic_ids", D2).set_index("item_id")
    assert (again.sort_index()["sid"] == day2.sort_index()["sid"]).all()

    # a new generation: refit, every catalog item re-encoded, remap old → new
    _next_day(spark, wh, D2, D3, [], 0)
    ctx = run_job("build_sids", ["--warehouse", wh, "--as-of", D3, *SMALL, "--new-generation"], spark=spark)
    day3 = _table(spark, wh, "semantic_ids", D3).set_index("item_id")
    gen1, gen2 = day2["generation"].iloc[0], day3["generation"].iloc[0]
    assert (day2["generation"] == day1["generation"].iloc[0]).all() and gen2 != gen1 and gen2.startswith(f"{D3}.")
    assert (day3["generation"] == gen2).all() and day3["sid"].is_unique
    remap = _table(spark, wh, "sid_remap", D3).set_index("item_id")
    assert (
        len(remap) == len(day2) and (remap["old_generation"] == gen1).all() and (remap["new_generation"] == gen2).all()
    )
    assert (remap.loc[day3.index, "new_sid"] == day3["sid"]).all()
    assert (remap.loc[day3.index, "old_sid"] == day2.loc[day3.index, "sid"]).all()
    assert remap.loc[gone, "new_sid"].isna().all()  # they had no vector any more
    cb = spark.read.format("delta").load(f"{wh}/sid_codebooks").where(f"generation = '{gen2}'").count()
    assert cb == 48


def test_same_seed_same_sids_whatever_the_partitioning(spark, sid_warehouse, tmp_path):
    """The embedding table rewritten into 7 files in another warehouse, and the catalog's search
    spread over Ray tasks of 300 items: identical SIDs."""
    from recfactory.jobs.runtime.job import run_job

    wh, _ = sid_warehouse
    other = str(tmp_path / "wh")
    spark.read.format("delta").load(f"{wh}/graph_embeddings").where(f"ds = '{D1}'").repartition(7).write.format(
        "delta"
    ).partitionBy("ds").save(f"{other}/graph_embeddings")
    ctx = run_job(
        "build_sids", ["--warehouse", other, "--as-of", D1, *SMALL, "--encode-shard-rows", "300"], spark=spark
    )
    assert ctx.metrics["search_tasks"] >= 3 * 5
    a = _table(spark, wh, "semantic_ids", D1).set_index("item_id").sort_index()
    b = _table(spark, other, "semantic_ids", D1).set_index("item_id").sort_index()
    assert (a["sid"] == b["sid"]).all()


def test_reassign_and_hourglass_options(spark, sid_warehouse, tmp_path):
    from recfactory.jobs.runtime.job import run_job

    wh, _ = sid_warehouse
    other = str(tmp_path / "wh")
    spark.read.format("delta").load(f"{wh}/graph_embeddings").where(f"ds = '{D1}'").write.format("delta").partitionBy(
        "ds"
    ).save(f"{other}/graph_embeddings")
    # reassign after a plain last level (collisions to resolve): 4 × 8 prefixes, 256 last codes
    ctx = run_job(
        "build_sids",
        [
            "--warehouse",
            other,
            "--as-of",
            D1,
            *SMALL[:4],
            "--codebook-sizes",
            "4,8,256",
            "--prefix-balance",
            "none",
            "--collision",
            "reassign",
            "--reassign-candidates",
            "4",
            "--remove-top-tokens",
            "1",
            "--gate-max-collision-rate",
            "1",
        ],
        spark=spark,
    )
    sids = _table(spark, other, "semantic_ids", D1)
    assert sids["sid"].is_unique and not sids["sid"].str.contains("<s_").any()
    _, counts = np.unique(np.stack(sids["rq_codes"].to_numpy()), axis=0, return_counts=True)
    assert counts.max() == 1  # σ = 1: one item per code row
    assert ctx.metrics["moved"] > 0 and 0 <= ctx.metrics["fell_back_fraction"] <= 1
    # the most frequent level-2 token is gone from its items' SIDs (variable length)
    lens = sids["codes"].map(len)
    assert set(lens) == {2, 3}
    assert (~sids["sid"].str.contains("<b_")).sum() == (lens == 2).sum()


def test_a_failing_gate_publishes_nothing(spark, sid_warehouse):
    from recfactory.jobs.runtime.delta_io import Warehouse
    from recfactory.jobs.runtime.job import QualityGateError, run_job

    wh, _ = sid_warehouse
    before = {t: Warehouse(spark, wh).latest_version(t) for t in ("semantic_ids", "sid_codebooks", "sid_metrics")}
    with pytest.raises(QualityGateError, match="collision rate before handling"):
        run_job(
            "build_sids",
            [
                "--warehouse",
                wh,
                "--as-of",
                D1,
                "--new-generation",
                *SMALL[:4],
                "--codebook-sizes",
                "4,4",
                "--gate-max-collision-rate",
                "0.01",
            ],
            spark=spark,
        )
    assert {t: Warehouse(spark, wh).latest_version(t) for t in before} == before
    runs = spark.read.format("delta").load(f"{wh}/_runs").where("job = 'build_sids' and status = 'failed'")
    assert "collision_rate_before" in runs.orderBy("started_at", ascending=False).first()["metrics"]


def _embeddings_as(spark, src_wh, dst_wh, dates_drop_add: dict[str, tuple[int, int]]):
    """The DeepWalk partition of D1 in `src_wh`, written to `dst_wh` as each date's partition: the
    first `drop` items left out, `add` perturbed copies under new ids added."""
    import pandas as pd
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(f"{src_wh}/graph_embeddings").where(f"ds = '{D1}' and method = 'deepwalk'")
    pdf = df.toPandas().dropna(subset=["vector"]).sort_values("item_id")
    rng = np.random.default_rng(0)
    for ds, (drop, add) in dates_drop_add.items():
        extra = pdf.iloc[:add].copy()
        extra["item_id"] = [f"new{i}" for i in range(add)]
        extra["vector"] = [list(np.asarray(v) + 0.05 * rng.normal(size=len(v))) for v in extra["vector"]]
        part = pd.concat([pdf.iloc[drop:], extra]).drop(columns=["ds"])
        spark.createDataFrame(part, df.drop("ds").schema).withColumn(
            "ds", F.lit(dt.date.fromisoformat(ds))
        ).write.format("delta").mode("overwrite").option("replaceWhere", f"ds = '{ds}'").partitionBy("ds").save(
            f"{dst_wh}/graph_embeddings"
        )


def test_a_backfill_starts_its_own_chain_and_a_gap_is_refused(spark, sid_warehouse, tmp_path):
    """SIDs for 04-22, a backfill of 03-01 (no state before it: a chain of its own), then 04-23 (continues
    04-22, never the backfill): no (generation, level, code) with two centroids, the unchanged items of
    04-23 keep 04-22's SIDs, a rerun of 04-22 after 04-23 gives its first rows, and a date after a gap
    fails naming the missing date."""
    from recfactory.jobs.runtime.job import run_job
    from recfactory.tokenizers.sid_generation import MissingPriorDateError

    src, _ = sid_warehouse
    wh = str(tmp_path / "wh")
    _embeddings_as(
        spark, src, wh, {"1998-04-22": (0, 0), "1998-03-01": (200, 0), "1998-04-23": (0, 30), "1998-04-25": (0, 0)}
    )

    def sids(ds):
        return _table(spark, wh, "semantic_ids", ds).set_index("item_id").sort_index()

    def run(ds):
        return run_job("build_sids", ["--warehouse", wh, "--as-of", ds, *SMALL], spark=spark)

    run("1998-04-22")
    first = sids("1998-04-22")
    run("1998-03-01")
    ctx = run("1998-04-23")
    back, d23 = sids("1998-03-01"), sids("1998-04-23")
    g22, g01 = first["generation"].iloc[0], back["generation"].iloc[0]
    assert g01 != g22 and g01.startswith("1998-03-01.") and g22.startswith("1998-04-22.")
    assert (d23["generation"] == g22).all() and ctx.notes["prior"].startswith("semantic_ids ds=1998-04-22")
    assert ctx.row_counts["new_items"] == 30
    assert (d23.loc[first.index, "sid"] == first["sid"]).all()
    cb = spark.read.format("delta").load(f"{wh}/sid_codebooks")
    assert cb.groupBy("generation", "level", "code").count().where("count > 1").count() == 0
    assert {r.generation for r in cb.select("generation").distinct().collect()} == {g22, g01}

    run("1998-04-22")  # a rerun after later dates: its first run's rows
    again = sids("1998-04-22")
    rows = lambda df: [
        (i, r.sid, r.generation, list(r.rq_codes), r.suffix, r.in_catalog, r.assigned_ds)  # noqa: E731
        for i, r in df.iterrows()
    ]
    assert rows(again) == rows(first)
    with pytest.raises(MissingPriorDateError, match="1998-04-24"):
        run("1998-04-25")
