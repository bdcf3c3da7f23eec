"""The item graph of the session-based embeddings (DeepWalk on sessions, EGES): Spark, no I/O.

Edges are directed and weighted: every consecutive pair of distinct items i → j within a valid
session counts once (a repeated item, i → i, is not an edge), times exp(−age / τ) when
``time_decay_days`` = τ > 0, age = cutoff − the session's end. Edges lighter than ``min_weight``
are pruned (and counted). Nodes are the catalog items with their side information (the EGES
fields); an item on no kept edge is a cold item.

Side information: ``category``, ``brand`` and ``price_bucket`` (price in ``price_buckets``
log-spaced quantile buckets, fit on the catalog) by default; a value absent from the catalog row
is the field's own "missing" value, and a field absent from every item is dropped (named in the
notes), as an all-missing field carries no information.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recfactory.features.instants import epoch_micros
from recfactory.features.spec import Field, Spec

SIDE_FIELDS = ("category", "brand", "price_bucket")
MISSING = "<missing>"


class SideInfoSpec(Spec):
    """The items' side information: EGES embeds it, and so does the alignment's projector."""

    side_fields: tuple[str, ...] = Field(
        SIDE_FIELDS, description="Side-information fields (catalog columns, price_bucket derived from price)."
    )
    price_buckets: int = Field(10, ge=1, description="Log-price quantile buckets of price_bucket.")


class GraphSpec(SideInfoSpec):
    min_weight: float = Field(1.0, ge=0, description="Edges with a smaller (decayed) transition weight are pruned.")
    time_decay_days: float = Field(0.0, ge=0, description="Edge weight decay exp(-age/τ) by session end; 0: counts.")


def transitions(sessions: DataFrame, cutoff: dt.datetime, spec: GraphSpec) -> DataFrame:
    """(src, dst, w): one row per consecutive distinct-item step of the valid sessions."""
    s = sessions.where(F.col("is_valid") & (F.size("items") >= 2))
    w = F.lit(1.0)
    if spec.time_decay_days > 0:
        age_days = (F.lit(epoch_micros(cutoff) / 1e6) - F.col("end_ts").cast("double")) / 86400.0
        w = F.exp(-F.greatest(age_days, F.lit(0.0)) / F.lit(spec.time_decay_days))
    steps = F.arrays_zip(
        F.slice("items", 1, F.size("items") - 1).alias("src"), F.slice("items", 2, F.size("items")).alias("dst")
    )
    return (
        s.select(F.explode(steps).alias("e"), w.alias("w"))
        .select(F.col("e.src").alias("src"), F.col("e.dst").alias("dst"), "w")
        .where(F.col("src") != F.col("dst"))
    )


def build_edges(sessions: DataFrame, cutoff: dt.datetime, spec: GraphSpec) -> DataFrame:
    """(src, dst, weight, transitions, kept): every edge, the pruned ones flagged kept = false."""
    e = (
        transitions(sessions, cutoff, spec)
        .groupBy("src", "dst")
        .agg(F.sum("w").alias("weight"), F.count(F.lit(1)).alias("transitions"))
    )
    return e.withColumn("kept", F.col("weight") >= F.lit(spec.min_weight))


def side_field_columns(items: DataFrame, spec: SideInfoSpec) -> tuple[DataFrame, list[str], list[str]]:
    """(items with a string column per usable side field — a missing value is its own MISSING
    token —, the fields used, notes on the fields dropped). price_bucket is derived from price."""
    notes: list[str] = []
    df = items
    if "price_bucket" in spec.side_fields and "price" in items.columns:
        # log-spaced quantile buckets of the catalog's prices (exact for these sizes: approxQuantile
        # with relative error 0 is the exact "lower" quantile)
        probs = [i / spec.price_buckets for i in range(1, spec.price_buckets)]
        cuts = sorted(
            set(items.where(F.col("price") > 0).select(F.log("price").alias("lp")).approxQuantile("lp", probs, 0.0))
        )
        bucket = F.lit(0)
        for c in cuts:
            bucket = bucket + (F.log("price") > F.lit(c)).cast("int")
        df = df.withColumn("price_bucket", F.when(F.col("price") > 0, F.format_string("p%02d", bucket)))
    fields = []
    for f in spec.side_fields:
        if f not in df.columns:
            notes.append(f"side field {f} dropped: the catalog has no such column")
        elif df.where(F.col(f).isNotNull()).limit(1).count() == 0:
            notes.append(f"side field {f} dropped: no item has a value")
        else:
            fields.append(f)
    out = df.select("item_id", *[F.coalesce(F.col(f).cast("string"), F.lit(MISSING)).alias(f) for f in fields])
    return out, fields, notes


def build_nodes(items: DataFrame, edges: DataFrame, spec: SideInfoSpec) -> tuple[DataFrame, list[str], list[str]]:
    """(nodes, side fields used, notes). nodes: item_id, one string column per side field, in/out
    degree and weight over kept edges, is_cold (on no kept edge)."""
    df, fields, notes = side_field_columns(items, spec)
    kept = edges.where("kept")
    outd = kept.groupBy(F.col("src").alias("item_id")).agg(
        F.count(F.lit(1)).alias("out_degree"), F.sum("weight").alias("out_weight")
    )
    ind = kept.groupBy(F.col("dst").alias("item_id")).agg(
        F.count(F.lit(1)).alias("in_degree"), F.sum("weight").alias("in_weight")
    )
    nodes = (
        df.join(outd, "item_id", "left")
        .join(ind, "item_id", "left")
        .fillna({"out_degree": 0, "in_degree": 0, "out_weight": 0.0, "in_weight": 0.0})
    )
    nodes = nodes.withColumn("is_cold", (F.col("out_degree") + F.col("in_degree")) == 0)
    return nodes, fields, notes


def in_catalog(edges: DataFrame, items: DataFrame) -> DataFrame:
    """The edges whose two endpoints are catalog items."""
    ids = items.select("item_id")
    return edges.join(ids.withColumnRenamed("item_id", "src"), "src", "left_semi").join(
        ids.withColumnRenamed("item_id", "dst"), "dst", "left_semi"
    )


def leave_last_transition(sessions: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(training sessions, test pairs) for next-item evaluation: each user's last valid session
    (latest end, ties by session_id) loses its last item; (second-to-last → last) is the user's test
    pair (trigger, target), unless both are the same item."""
    valid = sessions.where(F.col("is_valid") & (F.size("items") >= 2))
    last = F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("end_ts"), F.desc("session_id")))
    s = valid.withColumn("_last", last == 1)
    size = F.size("items")
    test = (
        s.where("_last")
        .select("user_id", F.get("items", size - 2).alias("trigger"), F.get("items", size - 1).alias("target"))
        .where(F.col("trigger") != F.col("target"))
    )
    train = s.select(
        "user_id",
        "end_ts",
        "session_id",
        F.lit(True).alias("is_valid"),
        F.when(F.col("_last"), F.slice("items", 1, size - 1)).otherwise(F.col("items")).alias("items"),
    )
    return train, test
