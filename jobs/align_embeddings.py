"""align_embeddings: content_embeddings + item_similarity + graph_embeddings + events_clean →
aligned_embeddings (+ aligned_models, alignment_metrics, simtier_features), ds = as-of.

    spark-submit jobs/align_embeddings.py --warehouse W --as-of 1998-04-30

QARM item alignment (``recfactory.tokenizers.qarm``): a projector over the frozen content vectors
and learned side-information embeddings, trained on Ray Train (DDP on CPU workers) with in-batch
InfoNCE on behaviour pairs — I2I: items and their top Swing neighbours; U2I: each user's positive
target and its trigger, the most similar (in the graph-embedding ID space) of the user's latest
positives before it. A seeded share of source items' Swing pairs and every user's last positive
(after the one before it) are held out; the **quality gate** compares recall@K of those pairs in
the raw content space and in the aligned space, records both, and publishes nothing unless the
aligned space wins on both. SimTier features (the histogram of cos(target, history) over
buckets of [−1, 1]) are written for the date's training samples when they exist, from an earlier
date's aligned embeddings only (`point_in_time_simtier`: no feature from a model that saw the label).
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_share
from recfactory.features.schema import POSITIVE_EVENT_TYPES
from recfactory.features.sequences import visible_events
from recfactory.graph.embedding_spec import Method
from recfactory.graph.item_graph import SideInfoSpec, side_field_columns
from recfactory.jobs.runtime.inputs import clean_events, date_partition, item_snapshot
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams
from recfactory.jobs.runtime.ray_runtime import init_ray
from recfactory.tokenizers.qarm_spec import AlignSpec

METRICS_SCHEMA = T.StructType(
    [
        T.StructField("split", T.StringType(), False),
        T.StructField("space", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("recall", T.DoubleType()),
        T.StructField("pairs", T.LongType()),
        T.StructField("ds", T.DateType()),
    ]
)
EMB_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("vector", T.ArrayType(T.FloatType())),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("content_encoder", T.StringType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)
MODEL_SCHEMA = T.StructType(
    [
        T.StructField("model_version", T.StringType(), False),
        T.StructField("weights", T.BinaryType(), False),
        T.StructField("config", T.StringType(), False),
        T.StructField("checkpoint", T.StringType()),
    ]
)
SIMTIER_SCHEMA = T.StructType(
    [
        T.StructField("sample_id", T.StringType(), False),
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("simtier", T.ArrayType(T.IntegerType())),
        T.StructField("history", T.IntegerType()),
        T.StructField("model_ds", T.DateType()),
    ]
)


class AlignParams(AlignSpec, SideInfoSpec, JobParams):
    content_encoder: str = Field("minilm-onnx", description="Which content_embeddings encoder to align.")
    i2i_algo: str = Field("swing", description="item_similarity algorithm of the I2I positives.")
    i2i_top_n: int = Field(10, ge=1, description="Neighbours per item taken as I2I positives (highest scores).")
    i2i_min_score: float = Field(0.0, ge=0, description="I2I positives need a score above this.")
    id_method: Method = Field(
        "deepwalk",
        description="graph_embeddings method of the ID space that picks U2I triggers (lightgcn: LightGCN's item vectors).",
    )
    u2i_window: int = Field(
        50, ge=1, description="A U2I trigger is chosen among the user's latest this many positives before the target."
    )
    event_types: list[str] = Field(list(POSITIVE_EVENT_TYPES), description="Event types that count as positives.")
    holdout: float = Field(
        0.1, gt=0, lt=1, description="Share of source items whose Swing pairs are held out for the gate (seeded hash)."
    )
    eval_k: list[int] = Field([10, 50], description="K values of recall@K.")
    gate_k: int = Field(50, ge=1, description="K of the quality gate's recall@K.")
    gate_min_gain: float = Field(
        0.0, ge=0, description="The aligned recall must exceed the raw one by more than this, on both held-out splits."
    )
    simtier_buckets: int = Field(10, ge=2, description="SimTier buckets over [−1, 1].")
    simtier_history: int = Field(50, ge=1, description="SimTier: the user's latest positives before the sample.")


class AlignEmbeddingsJob(Job[AlignParams]):
    name = "align_embeddings"
    Params = AlignParams
    description = "QARM alignment of content vectors to behaviour (Swing I2I + ID-space U2I pairs) on Ray Train, gated."
    outputs = ("aligned_embeddings", "aligned_models", "alignment_metrics", "simtier_features")
    inputs = ("content_embeddings", "items", "item_similarity", "graph_embeddings", "events_clean", "training_samples")

    def run(self, ctx: RunContext[AlignParams]) -> None:
        from recfactory.tokenizers.qarm import fit, project, recall_at_k  # torch: where the model trains

        p = ctx.params
        spark = ctx.spark
        content = date_partition(ctx, "content_embeddings", "build_content_embeddings").where(
            F.col("encoder") == p.content_encoder
        )
        cpdf = content.select("item_id", "vector").orderBy("item_id").toPandas()
        if not len(cpdf):
            raise ValueError(f"content_embeddings has no {p.content_encoder} vectors for {ctx.as_of}")
        n = len(cpdf)
        index = pd.Series(np.arange(n), index=cpdf["item_id"].to_numpy())
        X = np.stack(cpdf["vector"].to_numpy()).astype(np.float32)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        items = item_snapshot(ctx)
        side, fields, notes = side_field_columns(items, SideInfoSpec.of(p))
        for i, note in enumerate(notes):
            ctx.notes[f"side_fields.{i}"] = note
        spdf = side.toPandas().set_index("item_id").reindex(cpdf["item_id"])
        codes, vocab = np.zeros((n, len(fields)), dtype=np.int64), []
        for j, f in enumerate(fields):  # an item missing from the catalog snapshot: its own code
            c, u = pd.factorize(spdf[f].fillna("__MISSING__"), sort=True)
            codes[:, j] = c
            vocab.append(len(u))
        ctx.row_counts["items"] = n

        # I2I positives from the Swing table; a seeded share of source items held out
        sims = date_partition(ctx, "item_similarity", "build_similarity").where(F.col("algo") == p.i2i_algo)
        i2i = (
            sims.select("item_id", F.posexplode("neighbors").alias("rank", "nb"))
            .where((F.col("rank") < p.i2i_top_n) & (F.col("nb.score") > p.i2i_min_score))
            .select(F.col("item_id").alias("a"), F.col("nb.item_id").alias("b"))
            .toPandas()
        )
        known = i2i["a"].isin(index.index) & i2i["b"].isin(index.index)
        ctx.row_counts.update({"i2i_pairs": len(i2i), "i2i_pairs_without_content": int((~known).sum())})
        i2i = i2i[known]
        ia, ib = index[i2i["a"]].to_numpy(), index[i2i["b"]].to_numpy()
        held = seeded_share(i2i["a"].to_numpy(), p.seed, "qarm", p.holdout)
        ctx.row_counts.update({"i2i_train_pairs": int((~held).sum()), "i2i_heldout_pairs": int(held.sum())})

        # U2I positives: triggers in the ID space; each user's last positive held out (next-item)
        ids = date_partition(ctx, "graph_embeddings", "build_graph_embeddings").where(F.col("method") == p.id_method)
        gpdf = ids.select("item_id", "vector").toPandas()
        gpdf = gpdf[gpdf["item_id"].isin(index.index) & gpdf["vector"].notna()]
        idv = np.zeros((n, max([len(v) for v in gpdf["vector"]] + [1])), dtype=np.float32)
        has_id = np.zeros(n, dtype=bool)
        if len(gpdf):
            rows = index[gpdf["item_id"]].to_numpy()
            idv[rows], has_id[rows] = np.stack(gpdf["vector"].to_numpy()), True
        pos = (
            visible_events(clean_events(ctx), ctx.cutoff)
            .where(F.col("event_type").isin(*p.event_types))
            .join(content.select("item_id"), "item_id", "left_semi")
            .select("user_id", "item_id", "ts", "event_id")
        )
        u2i, nxt = self._u2i(spark, pos, index, idv, has_id, p.u2i_window)
        ctx.row_counts.update({"u2i_pairs": len(u2i), "next_item_pairs": len(nxt)})
        train = np.concatenate([np.stack([ia[~held], ib[~held]], 1), u2i]).astype(np.int64)
        # one canonical order: Spark's collect order follows file names and shuffles, and the
        # seeded epochs batch pairs in the order given (same inputs → same model, on any cluster)
        train = train[np.lexsort((train[:, 1], train[:, 0]))]
        ctx.row_counts["train_pairs"] = len(train)
        if len(train) < 2:
            raise QualityGateError(f"only {len(train)} training pairs: nothing to align")

        spec = AlignSpec.of(p)
        storage = ctx.warehouse.arrow_path("_checkpoints", "align_embeddings")
        init_ray()
        res = fit(X, codes, vocab, train, spec, storage, ctx.checkpoint_name())
        # the aligned embeddings published before this run (SimTier's previous-date model), pinned now
        # (after the checkpoint key: they do not change the training; before this run's own write:
        # the lineage would have it read what it wrote)
        published = ctx.read("aligned_embeddings") if ctx.has("aligned_embeddings") else None
        for e in res.history:
            ctx.metrics[f"loss.epoch{int(e['epoch']) + 1}"] = round(float(e["loss"]), 6)
        ctx.metrics["temperature"] = (
            round(float(res.history[-1]["temperature"]), 6) if res.history else spec.temperature
        )
        Z = project(res.model, X, codes)

        # the gate: held-out pairs, raw content space vs aligned space
        ks = tuple(sorted(set(p.eval_k) | {p.gate_k}))
        valid = np.ones(n, dtype=bool)
        rows, rec = [], {}
        for split, (a, b) in {"i2i": (ia[held], ib[held]), "next_item": (nxt[:, 0], nxt[:, 1])}.items():
            for space, vec in (("content", X), ("aligned", Z)):
                r = recall_at_k(vec, valid, a, b, ks)
                rec[(split, space)] = r[p.gate_k]
                for k in ks:
                    rows.append((split, space, k, r[k], len(a), ctx.as_of))
                    ctx.metrics[f"recall@{k}.{split}.{space}"] = round(r[k], 6)
        worse = [s for s in ("i2i", "next_item") if not rec[(s, "aligned")] > rec[(s, "content")] + p.gate_min_gain]
        if worse:
            raise QualityGateError(
                "alignment did not beat the raw content space on "
                + ", ".join(
                    f"{s} (recall@{p.gate_k} aligned {rec[(s, 'aligned')]:.4f} vs content {rec[(s, 'content')]:.4f})"
                    for s in worse
                )
                + ": aligned_embeddings not published"
            )
        ctx.write(spark.createDataFrame(rows, METRICS_SCHEMA), "alignment_metrics")

        version = f"{ctx.as_of.isoformat()}-{ctx.run_id[:12]}"
        ctx.notes["model_version"] = version
        emb = pd.DataFrame(
            {
                "item_id": cpdf["item_id"],
                "vector": list(Z),
                "dim": Z.shape[1],
                "content_encoder": p.content_encoder,
                "model_version": version,
                "run_id": ctx.run_id,
            }
        )
        ref = ctx.write(spark.createDataFrame(emb, EMB_SCHEMA).withColumn("ds", F.lit(ctx.as_of)), "aligned_embeddings")
        ctx.row_counts["aligned_embeddings"] = ref.rows
        from safetensors.torch import save

        config = {
            "spec": spec.to_dict(),
            "in_dim": int(X.shape[1]),
            "fields": fields,
            "vocab": vocab,
            "content_encoder": p.content_encoder,
        }
        ctx.write(
            spark.createDataFrame(
                [(version, bytearray(save(res.model.state_dict())), json.dumps(config), res.checkpoint)], MODEL_SCHEMA
            ).withColumn("ds", F.lit(ctx.as_of)),
            "aligned_models",
        )
        self._simtier(ctx, p, pos, published)

    @staticmethod
    def _u2i(spark, pos, index: pd.Series, idv: np.ndarray, has_id: np.ndarray, window: int):
        """(U2I training pairs (trigger, target), next-item test pairs (previous positive, last
        positive)) over every user's positives in time order."""
        from recfactory.tokenizers.qarm import u2i_pairs

        schema = T.StructType(
            [T.StructField("kind", T.StringType()), T.StructField("a", T.LongType()), T.StructField("b", T.LongType())]
        )
        lookup = index.to_dict()

        def per_user(pdf: pd.DataFrame) -> pd.DataFrame:
            pdf = pdf.sort_values(["ts", "event_id"], kind="stable")
            seq = np.array([lookup[i] for i in pdf["item_id"] if i in lookup], dtype=np.int64)
            if len(seq) < 2:
                # typed: an untyped empty frame is float64, which Arrow 26 turns into a chunked
                # string column that Spark then fails to batch (any user with < 2 positives)
                return pd.DataFrame(
                    {
                        "kind": pd.Series([], dtype=object),
                        "a": pd.Series([], dtype="int64"),
                        "b": pd.Series([], dtype="int64"),
                    }
                )
            rows = u2i_pairs(seq, idv, has_id, window)
            last = len(seq) - 1
            train = rows[rows[:, 2] != last]
            return pd.DataFrame(
                {
                    "kind": ["u2i"] * len(train) + ["next"],
                    "a": [*train[:, 0], seq[last - 1]],
                    "b": [*train[:, 1], seq[last]],
                }
            )

        out = pos.groupBy("user_id").applyInPandas(per_user, schema).toPandas()
        u2i = out[out["kind"] == "u2i"][["a", "b"]].to_numpy(dtype=np.int64).reshape(-1, 2)
        nxt = out[out["kind"] == "next"][["a", "b"]].to_numpy(dtype=np.int64).reshape(-1, 2)
        return u2i, nxt

    @staticmethod
    def _simtier(ctx: RunContext, p: AlignParams, pos, published) -> None:
        """SimTier per training sample of the date (when build_training_samples ran for it), from the
        previous date's aligned embeddings only (`point_in_time_simtier`)."""
        if not ctx.has("training_samples"):
            ctx.notes["simtier"] = "skipped: no training_samples table"
            return
        samples = ctx.read("training_samples").where(F.col("ds") == F.lit(ctx.as_of))
        if samples.limit(1).count() == 0:
            ctx.notes["simtier"] = f"skipped: training_samples has no partition ds={ctx.as_of}"
            return
        if published is None:
            published = ctx.spark.createDataFrame([], "item_id string, vector array<float>, ds date")
        aligned = (
            published.where(F.col("content_encoder") == p.content_encoder)
            if "content_encoder" in published.columns
            else published
        )
        s = samples.select(F.col("sample_id").cast("string"), "user_id", "item_id", "ts")
        feats, model_ds = point_in_time_simtier(s, pos, aligned, ctx.as_of, p.simtier_buckets, p.simtier_history)
        ctx.notes["simtier_model"] = (
            f"aligned_embeddings ds={model_ds}"
            if model_ds
            else "none for the previous date: every sample's simtier is null"
        )
        feats = feats.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n_feats, n_samples = feats.count(), samples.count()
            ctx.row_counts.update(
                {
                    "training_samples": n_samples,
                    "simtier_without_model": feats.where(F.col("model_ds").isNull()).count(),
                    "simtier_without_vector": feats.where(
                        F.col("model_ds").isNotNull() & F.col("simtier").isNull()
                    ).count(),
                }
            )
            if n_feats != n_samples:
                raise QualityGateError(f"simtier_features has {n_feats} rows for {n_samples} training samples")
            ref = ctx.write(feats.withColumn("ds", F.lit(ctx.as_of)), "simtier_features")
            ctx.row_counts["simtier_features"] = ref.rows
        finally:
            feats.unpersist()


def point_in_time_simtier(samples, pos, aligned, as_of, buckets: int, history: int):
    """(SimTier features of every sample, the date of the model used or None).

    A sample's label is an event at or after its ts; embeddings trained on pairs that include that
    event would put the label into the feature (a planted label-only signal would leak). So the
    vectors are those published for the previous date (``aligned``: item_id, vector, ds; ds =
    as-of − 1), whose training saw only events before that date's end, and only samples at or after
    that end — the as-of's own day — are scored: for them the model never saw the label. Earlier
    samples, and every sample when the previous date has no model, get a row with a null simtier
    and null model_ds (counted), so a trainer joins each date's features to that date's new
    samples. Like the semantic IDs, the features of a date depend on the previous date's run (never
    on a later one, never on an older one across a gap).

    samples: sample_id, user_id, item_id, ts; pos: the users' positives (user_id, item_id, ts,
    event_id), the history is the last `history` of them strictly before the sample."""
    from recfactory.features.instants import day_end
    from recfactory.tokenizers.qarm import simtier

    prev = as_of - dt.timedelta(days=1)
    earlier = aligned.where((F.col("ds") == F.lit(prev)) & F.col("vector").isNotNull())
    model_ds = prev if earlier.limit(1).count() else None
    if model_ds is None:
        out = samples.select(
            "sample_id",
            "user_id",
            "item_id",
            F.lit(None).cast("array<int>").alias("simtier"),
            F.lit(0).alias("history"),
            F.lit(None).cast("date").alias("model_ds"),
        )
        return out, None
    zp = earlier.select("item_id", "vector").toPandas()
    lookup = {i: r for r, i in enumerate(zp["item_id"])}
    Z = np.stack(zp["vector"].to_numpy()).astype(np.float32) if len(zp) else np.zeros((0, 1), dtype=np.float32)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    start = np.datetime64(day_end(model_ds).replace(tzinfo=None))  # pandas gives UTC-naive (session UTC)

    def per_user(s: pd.DataFrame, h: pd.DataFrame) -> pd.DataFrame:
        h = h.sort_values(["ts", "event_id"], kind="stable")
        hts = h["ts"].to_numpy()
        hrow = np.array([lookup.get(i, -1) for i in h["item_id"]], dtype=np.int64)
        out = []
        for sid, uid, iid, ts in zip(s["sample_id"], s["user_id"], s["item_id"], s["ts"], strict=True):
            t = np.datetime64(ts)
            if t < start:
                out.append((sid, uid, iid, None, 0, None))
                continue
            end = np.searchsorted(hts, t, side="left") if len(hts) else 0
            rows = hrow[max(0, end - history) : end]
            rows = rows[rows >= 0]
            target = lookup.get(iid)
            tier = None if target is None else simtier(Z[target], Z[rows], buckets).tolist()
            out.append((sid, uid, iid, tier, int(len(rows)), model_ds))
        return pd.DataFrame(out, columns=["sample_id", "user_id", "item_id", "simtier", "history", "model_ds"])

    feats = samples.groupBy("user_id").cogroup(pos.groupBy("user_id")).applyInPandas(per_user, SIMTIER_SCHEMA)
    return feats, model_ds


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("align_embeddings")
