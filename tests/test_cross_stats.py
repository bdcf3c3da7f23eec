"""cross_stats: the declarative spec, the Spark transform against a brute-force pandas reference
(window edges, distinct users, recency, the Beta prior and the smoothing formula), and the job."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from recfactory.features.cross_stats import CrossStatsSpec, KeyDecl, WindowDecl, beta_prior, build_cross_stats
from recfactory.jobs.runtime.job import run_job

CUTOFF = dt.datetime(2026, 11, 29)
SCHEMA = (
    "event_id long, user_id string, item_id string, event_type string, ts timestamp, "
    "dwell_ms long, context map<string,string>"
)
TYPES = ("impression", "click", "purchase")


def make_events(seed=3, n=400):
    rnd = random.Random(seed)
    edges = [dt.timedelta(days=1), dt.timedelta(days=7), dt.timedelta(days=30)]
    rows = []
    for i in range(n):
        if i % 10 == 0:  # exactly on a window edge, or one microsecond outside it
            ts = CUTOFF - rnd.choice(edges) - rnd.choice([dt.timedelta(0), dt.timedelta(microseconds=1)])
        else:
            ts = CUTOFF - dt.timedelta(seconds=rnd.randint(1, 45 * 86400))
        ctx = {"device": rnd.choice(["mobile", "desktop"])} if rnd.random() < 0.7 else {}
        rows.append(
            (i, f"u{rnd.randint(0, 7)}", f"i{rnd.randint(0, 11)}", rnd.choice(TYPES * 2 + ("click",)), ts, None, ctx)
        )
    rows.append((10**6, "u0", "i0", "click", CUTOFF, None, {}))  # at the cutoff: invisible
    rows.append((10**6 + 1, "u0", "i0", "click", CUTOFF + dt.timedelta(days=3), None, {}))
    return rows


ITEMS = [(f"i{k}", f"c{k % 3}") for k in range(12)]

SPEC = CrossStatsSpec.parse(
    keys="user=user_id,item=item_id,category=category,user_category=user_id*category,"
    "item_hour=item_id*hour,item_device=item_id*ctx:device",
    windows="1d,7d,30d,all",
    rates="ctr=click/impression,cvr=purchase/click+impression",
    event_types=TYPES,
)


def reference(rows, spec: CrossStatsSpec):
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "ts", "dwell_ms", "context"])
    df = df[df.ts < CUTOFF].merge(pd.DataFrame(ITEMS, columns=["item_id", "category"]), on="item_id", how="left")
    df["hour"] = df.ts.dt.hour.astype(str)
    df["ctx_device"] = df.context.map(lambda c: c.get("device"))
    out = []
    for key in spec.keys:
        for w in spec.windows:
            sub = df if w.seconds is None else df[df.ts >= CUTOFF - dt.timedelta(seconds=w.seconds)]
            sub = sub.dropna(subset=list(key.columns))
            for k, g in sub.groupby(list(key.columns)):
                k = k if isinstance(k, tuple) else (k,)
                rec = {
                    "key_type": key.name,
                    "window": w.name,
                    **dict(zip(key.columns, map(str, k), strict=True)),
                    "n_events": len(g),
                    **{f"n_{t}": int((g.event_type == t).sum()) for t in TYPES},
                    "n_users": None if "user_id" in key.columns else g.user_id.nunique(),
                    "days_since_last": (CUTOFF - g.ts.max()).total_seconds() / 86400,
                }
                out.append(rec)
    ref = pd.DataFrame(out)
    for r in spec.rates:
        ref[f"{r.name}_num"] = ref[f"n_{r.num}"]
        ref[f"{r.name}_den"] = sum(ref[f"n_{t}"] for t in r.den)
        for _, g in ref.groupby(["key_type", "window"]):
            raw = (g[f"{r.name}_num"] / g[f"{r.name}_den"])[g[f"{r.name}_den"] >= 1]
            m, v = raw.mean(), raw.var(ddof=0)
            m = min(max(m, 1e-6), 1 - 1e-6)
            strength = np.clip(
                m * (1 - m) / v - 1 if v > 0 else spec.max_prior_strength,
                spec.min_prior_strength,
                spec.max_prior_strength,
            )
            a, b = m * strength, (1 - m) * strength
            idx = g.index
            ref.loc[idx, r.name] = (ref.loc[idx, f"{r.name}_num"] + a) / (ref.loc[idx, f"{r.name}_den"] + a + b)
    return ref


def test_spec_parsing_and_errors():
    assert SPEC.dims == ("user_id", "item_id", "category", "hour", "ctx:device")
    assert [w.seconds for w in SPEC.windows] == [86400, 7 * 86400, 30 * 86400, None]
    assert SPEC.rates[1].den == ("click", "impression")
    for bad in (
        dict(keys="x=user_id*nope"),
        dict(windows="0d"),
        dict(windows="7w"),
        dict(rates="ctr=click"),
        dict(rates="ctr=clack/impression"),
        dict(keys="u=user_id,u=item_id"),
    ):
        with pytest.raises(ValueError):
            CrossStatsSpec.parse(**bad)
    pruned = SPEC.prune({"click", "purchase"}, set())
    assert [k.name for k in pruned.keys] == ["user", "item", "category", "user_category", "item_hour"]
    assert [r.name for r in pruned.rates] == ["cvr"] and pruned.event_types == ("click", "purchase")
    assert pruned.notes == {"dropped_event_types": "impression", "dropped_rates": "ctr", "dropped_keys": "item_device"}
    assert KeyDecl("k", ("ctx:device",)).columns == ("ctx_device",)
    assert WindowDecl.parse("6h").seconds == 21600


def test_beta_prior_method_of_moments():
    rates = np.array([0.1, 0.2, 0.3, 0.15])
    a, b = beta_prior(rates.mean(), rates.var(), 4, SPEC)
    m, v = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert m == pytest.approx(rates.mean()) and v == pytest.approx(rates.var())  # moments reproduced
    assert sum(beta_prior(0.5, 0.25, 3, SPEC)) == SPEC.min_prior_strength  # clipped below
    assert sum(beta_prior(0.5, 0.0, 3, SPEC)) == SPEC.max_prior_strength  # no spread: clipped above
    assert beta_prior(None, None, 0, SPEC) == (1.0, 1.0)


@pytest.mark.spark
def test_matches_brute_force(spark):
    rows = make_events()
    items = spark.createDataFrame(ITEMS, "item_id string, category string")
    got, priors = build_cross_stats(spark.createDataFrame(rows, SCHEMA), items, CUTOFF, SPEC)
    got = got.toPandas()
    ref = reference(rows, SPEC)
    keys = ["key_type", "window", "user_id", "item_id", "category", "hour", "ctx_device"]
    for c in keys:
        ref[c] = ref[c].astype(object).where(ref[c].notna(), None) if c in ref else None
    m = got.merge(ref, on=keys, how="outer", suffixes=("", "_ref"), indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][keys + ["_merge"]]
    for c in ["n_events", "n_impression", "n_click", "n_purchase", "days_since_last", "ctr", "cvr"]:
        np.testing.assert_allclose(m[c].astype(float), m[f"{c}_ref"].astype(float), rtol=1e-9, err_msg=c)
    nu = m[m.n_users_ref.notna()]
    assert (nu.n_users == nu.n_users_ref).all() and m[m.n_users_ref.isna()].n_users.isna().all()
    assert set(priors) == {(k.name, w.name, r.name) for k in SPEC.keys for w in SPEC.windows for r in SPEC.rates}
    # window edges: an event exactly at cutoff - 7d is in 7d, one microsecond earlier is not
    seven = got[(got.key_type == "user") & (got.window == "7d")].n_events.sum()
    assert seven == sum(1 for r in rows if CUTOFF - dt.timedelta(days=7) <= r[4] < CUTOFF)


@pytest.mark.spark
def test_job_on_the_movielens_slice_idempotent(spark, slice_ingested, tmp_path):
    wh = slice_ingested(tmp_path / "wh")
    ratings = spark.read.format("delta").load(f"{wh}/events_clean").count()
    args = ["--warehouse", wh, "--as-of", "1998-04-30"]
    ctx = run_job("build_cross_stats", args, spark=spark)
    again = run_job("build_cross_stats", args, spark=spark)
    t = spark.read.format("delta").load(f"{wh}/cross_stats")
    assert t.count() == ctx.row_counts["cross_stats"] == again.row_counts["cross_stats"]
    assert ctx.notes["dropped_keys"] == "item_device"  # MovieLens has no device
    assert {"n_like", "n_view", "like_rate", "like_rate_raw", "n_users"} <= set(t.columns)
    allt = t.where("key_type = 'item' AND window = 'all'")
    assert allt.agg(F.sum("n_events")).first()[0] == ratings  # every event counted once per key
    assert ctx.row_counts["visible_events"] == ctx.row_counts["events_counted.user"] == ratings
    # the smoothed rate lies between the raw rate and the prior mean
    a, b = ctx.metrics["prior.item.all.like_rate.alpha"], ctx.metrics["prior.item.all.like_rate.beta"]
    bad = allt.where(
        ~((F.col("like_rate") - F.col("like_rate_raw")) * (F.col("like_rate") - F.lit(a / (a + b))) <= 1e-12)
    )
    assert bad.count() == 0
