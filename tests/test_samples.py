"""training samples: labels, point-in-time features and history against brute-force references,
leakage (events after a sample's ts or after the as-of never reach it), subsampling, the jobs."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pytest
from pyspark.sql import functions as F

from recfactory.features.cross_stats import CrossStatsSpec
from recfactory.features.samples import SampleSpec, SplitBounds, build_training_samples, recalibrate, subsample
from recfactory.jobs.runtime.job import run_job

CUTOFF = dt.datetime(2026, 11, 29)
T0 = CUTOFF - dt.timedelta(days=12)
SCHEMA = (
    "event_id long, user_id string, item_id string, event_type string, ts timestamp, "
    "dwell_ms long, context map<string,string>"
)
ITEMS = [(f"i{k}", f"c{k % 2}") for k in range(6)]
STATS = CrossStatsSpec.parse(
    keys="user=user_id,item=item_id,item_device=item_id*ctx:device,category=category",
    windows="1d,all",
    rates="ctr=click/impression",
    event_types=("impression", "click"),
)
PRIORS = {("item", "1d", "ctr"): (1.0, 9.0), ("item", "all", "ctr"): (2.0, 8.0)}
SPEC = SampleSpec(warmup_days=2, val_days=2, test_days=2, history_len=3, bounce_ms=5000)


def make_events(seed=11, n_imp=160):
    rnd = random.Random(seed)
    rows, eid = [], 0
    for _ in range(n_imp):
        u, i = f"u{rnd.randint(0, 3)}", f"i{rnd.randint(0, 5)}"
        ts = T0 + dt.timedelta(seconds=rnd.randint(0, 12 * 86400 - 1))
        ts = ts.replace(second=0) if rnd.random() < 0.3 else ts  # ties between users' events
        ctx = {"device": rnd.choice(["mobile", "desktop"])} if rnd.random() < 0.8 else {}
        rows.append((eid, u, i, "impression", ts, None, ctx))
        eid += 1
        r = rnd.random()
        if r < 0.35:  # a click (sometimes a quick bounce), maybe late, maybe a purchase
            delay = rnd.choice([0, 1, 60, 1799, 1800, 1801, 4000])
            rows.append(
                (eid, u, i, "click", ts + dt.timedelta(seconds=delay), rnd.choice([None, 1200, 4999, 5000, 60_000]), {})
            )
            eid += 1
            if rnd.random() < 0.3:
                rows.append((eid, u, i, "purchase", ts + dt.timedelta(seconds=delay + 5), None, {}))
                eid += 1
    rows.append((eid, "u0", "i0", "click", CUTOFF, 9000, {}))  # at the cutoff
    rows.append((eid + 1, "u0", "i0", "impression", CUTOFF + dt.timedelta(hours=2), None, {}))
    return rows


def _frames(spark, rows):
    return (spark.createDataFrame(rows, SCHEMA), spark.createDataFrame(ITEMS, "item_id string, category string"))


def _build(spark, rows):
    events, items = _frames(spark, rows)
    bounds = SplitBounds.of(min(r[4] for r in rows), CUTOFF, SPEC)
    df, names = build_training_samples(events, items, CUTOFF, SPEC, STATS, bounds, PRIORS, "impressions")
    return df, names, bounds


def ref_labels(rows, spec=SPEC):
    vis = [r for r in rows if r[4] < CUTOFF]
    imps = [r for r in vis if r[3] == "impression"]
    out = {r[0]: [0, None] for r in imps}
    for p in (r for r in vis if r[3] in spec.positive_types):
        before = [r for r in imps if r[1:3] == p[1:3] and (r[4], 0, r[0]) < (p[4], 1, p[0])]
        if not before:
            continue
        imp = max(before, key=lambda r: (r[4], r[0]))
        if (p[4] - imp[4]).total_seconds() <= spec.attribution_minutes * 60:
            out[imp[0]][0] = 1
            if p[5] is not None:
                out[imp[0]][1] = (out[imp[0]][1] or 0) + p[5]
    return out


def ref_features(rows, sample):
    cat = dict(ITEMS)
    vis = [r for r in rows if r[4] < CUTOFF]
    counted = [r for r in vis if r[3] in STATS.counted_types]
    t = sample[4]
    dims = {
        "user": lambda r: (r[1],),
        "item": lambda r: (r[2],),
        "category": lambda r: (cat[r[2]],),
        "item_device": lambda r: (r[2], r[6].get("device")) if r[6].get("device") else None,
    }
    f = {}
    for key, dim in dims.items():
        k = dim(sample)
        for w, sec in (("1d", 86400), ("all", None)):
            ev = [
                r
                for r in counted
                if r[4] < t and (sec is None or r[4] >= t - dt.timedelta(seconds=sec)) and dim(r) == k
            ]
            for typ in ("impression", "click"):
                f[f"f_{key}_{w}_{typ}"] = None if k is None else sum(r[3] == typ for r in ev)
            if (key, w, "ctr") in PRIORS:
                a, b = PRIORS[(key, w, "ctr")]
                f[f"f_{key}_{w}_ctr"] = (
                    None if k is None else (f[f"f_{key}_{w}_click"] + a) / (f[f"f_{key}_{w}_impression"] + a + b)
                )
            elif k is not None:
                f[f"f_{key}_{w}_ctr"] = (f[f"f_{key}_{w}_click"] + 1) / (f[f"f_{key}_{w}_impression"] + 2)
        prev = [r[4] for r in counted if r[4] < t and dim(r) == k]
        f[f"f_{key}_days_since_last"] = None if k is None or not prev else (t - max(prev)).total_seconds() / 86400
    inter = sorted(
        (r for r in vis if r[1] == sample[1] and r[3] != "impression" and r[4] < t), key=lambda r: (r[4], r[0])
    )
    f["hist_items"] = [r[2] for r in inter][-SPEC.history_len :]
    f["hist_len"] = len(inter)
    return f


@pytest.mark.spark
def test_labels_features_history_match_brute_force(spark):
    rows = make_events()
    df, names, bounds = _build(spark, rows)
    got = {r.sample_id: r for r in df.collect()}
    labels = ref_labels(rows)
    in_range = {r[0]: r for r in rows if r[3] == "impression" and bounds.sample_start <= r[4] < CUTOFF}
    assert set(got) == set(in_range)  # every impression in range, nothing else
    n_checked = 0
    for sid, s in in_range.items():
        g = got[sid]
        assert [g.label_click, g.dwell_ms] == labels[sid], sid
        sig = 1 / (1 + np.exp(-((g.dwell_ms or 0) - SPEC.dwell_tau_ms) / SPEC.dwell_scale_ms))
        assert g.label_dwell == pytest.approx(g.label_click * (sig if g.dwell_ms is not None else 1.0))
        assert g.hard_negative == (g.label_click == 1 and g.dwell_ms is not None and g.dwell_ms < SPEC.bounce_ms)
        assert g.split == (
            "test" if s[4] >= bounds.test_start else "validation" if s[4] >= bounds.val_start else "train"
        )
        for k, v in ref_features(rows, s).items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-9), (sid, k)
            else:
                assert (list(g[k]) if k == "hist_items" else g[k]) == v, (sid, k)
        n_checked += 1
    assert n_checked > 100 and {g.label_click for g in got.values()} == {0, 1}
    assert any(g.hard_negative for g in got.values())
    assert set(names) >= {"f_item_all_ctr", "f_item_device_1d_click", "f_category_days_since_last"}


@pytest.mark.spark
def test_no_leakage_from_later_events(spark):
    rows = make_events()
    base, names, bounds = _build(spark, rows)
    split_ts = sorted(r[4] for r in rows if r[3] == "impression")[100]
    eid = 10**7
    injected = []
    for k, (u, i) in enumerate([("u0", "i0"), ("u1", "i3"), ("u2", "i5"), ("u3", "i1")] * 5):
        for typ in ("impression", "click", "purchase"):
            injected.append((eid, u, i, typ, split_ts + dt.timedelta(seconds=k * 37), 100_000, {"device": "mobile"}))
            eid += 1
    injected += [(eid + k, "u1", "i1", "click", CUTOFF + dt.timedelta(minutes=k), 100, {}) for k in range(5)]
    after, _, _ = _build(spark, rows + injected)
    cols = ["sample_id", *names, "hist_items", "hist_len", "split"]
    early = lambda df: {
        r.sample_id: r.asDict() for r in df.where(F.col("ts") <= F.lit(split_ts)).select(cols).collect()
    }  # noqa: E731
    b, a = early(base), early(after)
    # samples at or before the injection time (the injected impressions are new samples themselves)
    assert len(b) > 50 and b == {k: v for k, v in a.items() if k < 10**7}
    # nothing after the cutoff reaches any sample
    out = after.collect()
    assert all(r.ts < CUTOFF for r in out)
    assert not {eid + k for k in range(5)} & {r.sample_id for r in out}


@pytest.mark.spark
def test_subsample_is_deterministic_and_weighted(spark):
    df, _, _ = _build(spark, make_events(seed=4, n_imp=400))
    spec = SampleSpec(warmup_days=2, val_days=2, test_days=2, sample_rate=0.8, negative_rate=0.3, seed=7)
    a = subsample(df, spec).select("sample_id", "_drop", "split", "label_click", "negative_rate", "weight").toPandas()
    b = subsample(df.repartition(7), spec).select("sample_id", "_drop").toPandas()
    assert a.set_index("sample_id")._drop.to_dict() == b.set_index("sample_id")._drop.to_dict()
    kept = a[a._drop.isna()]
    assert (kept[kept.split != "train"].negative_rate == 1.0).all() and (
        kept[kept.split == "train"].negative_rate == 0.3
    ).all()
    assert not ((a.split != "train") & (a._drop == "negative_downsampled")).any()
    assert not ((a.label_click == 1) & (a._drop == "negative_downsampled")).any()
    neg = kept[(kept.split == "train") & (kept.label_click == 0)]
    assert np.allclose(neg.weight, 1 / (0.8 * 0.3))


def test_recalibration_inverts_downsampling():
    p0 = np.array([0.001, 0.02, 0.3, 0.9])
    for w in (0.01, 0.1, 0.5, 1.0):
        p = p0 / (p0 + (1 - p0) * w)  # the rate among kept rows when negatives are kept at rate w
        np.testing.assert_allclose(recalibrate(p, w), p0)


@pytest.mark.spark
def test_job_on_the_movielens_slice_idempotent(spark, slice_ingested, tmp_path):
    wh = slice_ingested(tmp_path / "wh")  # MovieLens users 1..200, every item, ingested as of 1998-04-30
    # lean features (the defaults: test_job_on_synthetic_impressions), the two the checks below read
    lean = ["--keys", "user=user_id,item=item_id", "--windows", "7d,all"]
    args = ["--warehouse", wh, "--as-of", "1998-04-30", "--val-days", "14", "--test-days", "14", *lean]
    ctx = run_job("build_training_samples", args, spark=spark)
    again = run_job("build_training_samples", args, spark=spark)
    t = spark.read.format("delta").load(f"{wh}/training_samples")
    n = ctx.row_counts["training_samples"]
    assert t.count() == n == again.row_counts["training_samples"] == ctx.row_counts["candidates"]
    ratings = spark.read.format("delta").load(f"{wh}/events_clean").count()
    assert n + ctx.row_counts["history_only_events"] == ratings  # every rating is a sample or history
    assert ctx.notes["mode"] == "interactions" and ctx.row_counts["test_rows"] > 0
    # two independent point-in-time computations agree: interactions before the sample
    assert t.where(F.col("f_user_all_view") + F.col("f_user_all_like") != F.col("hist_len")).count() == 0
    assert t.where(F.col("ts") < F.lit(ctx.notes["sample_start"]).cast("timestamp")).count() == 0
    q = spark.read.format("delta").load(f"{wh}/feature_quantiles")
    assert q.where("feature = 'f_item_all_like_rate'").count() == 1


@pytest.mark.spark
def test_job_on_synthetic_impressions(spark, tmp_path):
    wh = str(tmp_path / "wh")
    as_of = ["--warehouse", wh, "--as-of", "2026-11-28"]
    run_job("ingest", [*as_of, "--dataset", "synthetic", "--synthetic", "events=20000"], spark=spark)
    ctx = run_job(
        "build_training_samples",
        [*as_of, "--warmup-days", "5", "--negative-rate", "0.5", "--sample-rate", "0.9"],
        spark=spark,
    )
    assert ctx.notes["mode"] == "impressions" and "dropped_keys" not in ctx.notes  # device present
    t = spark.read.format("delta").load(f"{wh}/training_samples")
    rc = ctx.row_counts
    assert rc["candidates"] == rc["kept"] + rc["dropped_subsampled"] + rc["dropped_negative_downsampled"]
    assert rc["dropped_negative_downsampled"] > 0 and t.where("hard_negative").count() > 0
    assert ctx.metrics["train_label_rate"] > ctx.metrics["test_label_rate"]  # negatives thinned in train only
    assert {r.negative_rate for r in t.where("split = 'train'").select("negative_rate").distinct().collect()} == {0.5}
    assert "f_item_device_7d_ctr" in t.columns and "f_user_category_30d_click" in t.columns
