"""build_graph_embeddings: sessions + events_clean + items → item_graph, graph_embeddings,
user_embeddings, graph_embedding_metrics.

    spark-submit jobs/build_graph_embeddings.py --warehouse W --as-of 1998-04-30 --methods deepwalk,node2vec,eges,lightgcn

The item graph (Spark) is built from the valid sessions of the as-of (``build_sessions``), walks and
training run on Ray (``graph.walks``, ``graph.skipgram``), and every catalog item gets one row per
method: DeepWalk / Node2Vec items that no walk reached have a NULL vector, EGES gives them a vector
from their side information; both are flagged ``is_cold_start``. LightGCN (``graph.lightgcn``, on
Ray Train) trains on the user-item graph of the positives visible as of D (``--positive-types``;
distinct pairs, on catalog items): its item vectors go to graph_embeddings (NULL and
``is_cold_start`` for an item without a positive), its user vectors to user_embeddings.

Evaluation (``--evaluate``, on by default) trains the same models on a held-out graph first:
- next item: each user's last valid session loses its last item, (second-to-last → last) is the
  user's test pair; HitRate@K of the trigger's K nearest items (faiss, cosine), next to Swing
  neighbors computed on the same training sessions and a popularity baseline;
- cold items: a seeded ``--cold-holdout`` share of the graph's items loses every edge; the held-out
  transitions warm → cold score EGES's side-information vectors (DeepWalk and Node2Vec cannot
  place them: their HitRate is 0 by construction), next to a random baseline (K / items);
- U2I (LightGCN): each user's last positive held out (``graph.u2i``), Recall@K and NDCG@K of the
  top K with seen items filtered, beside popularity and ItemCF U2I on the same training positives;
  LightGCN's next-item row scores the held-out model's item vectors on the same (trigger, target)
  pairs, its training positives without the test users' (user, target) pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_share
from recfactory.features.schema import POSITIVE_EVENT_TYPES
from recfactory.features.sequences import visible_events
from recfactory.graph.embedding_spec import WALK_METHODS, EmbeddingSpec
from recfactory.graph.embeddings import Fitted, fit, nearest
from recfactory.graph.item_graph import (
    GraphSpec,
    build_edges,
    build_nodes,
    in_catalog,
    leave_last_transition,
)
from recfactory.graph.lightgcn_spec import LightGCNSpec
from recfactory.graph.u2i import hit_rate
from recfactory.jobs.runtime.inputs import PositivePairs, clean_events, date_partition, item_snapshot, positive_pairs
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams
from recfactory.jobs.runtime.ray_runtime import init_ray, node_cpus

METRICS_SCHEMA = T.StructType(
    [
        T.StructField("split", T.StringType(), False),
        T.StructField("method", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("hit_rate", T.DoubleType()),
        T.StructField("coverage", T.DoubleType()),
        T.StructField("pairs", T.LongType()),
        T.StructField("ds", T.DateType()),
        T.StructField("ndcg", T.DoubleType()),  # split u2i only (hit_rate is its Recall@K, pairs its users)
    ]
)
USER_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("method", T.StringType(), False),
        T.StructField("vector", T.ArrayType(T.FloatType()), False),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)
EMB_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("method", T.StringType(), False),
        T.StructField("vector", T.ArrayType(T.FloatType())),
        T.StructField("is_cold_start", T.BooleanType(), False),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)


class GraphEmbeddingParams(GraphSpec, EmbeddingSpec, LightGCNSpec, JobParams):
    evaluate: bool = Field(True, description="Train on a held-out graph first and record HitRate@K.")
    eval_k: list[int] = Field([10, 20, 50], description="K values of HitRate@K.")
    cold_holdout: float = Field(
        0.05, ge=0, lt=1, description="Share of graph items held out as cold in the evaluation."
    )
    positive_types: list[str] = Field(
        list(POSITIVE_EVENT_TYPES), min_length=1, description="LightGCN: event types that count as positives."
    )


class BuildGraphEmbeddingsJob(Job[GraphEmbeddingParams]):
    name = "build_graph_embeddings"
    Params = GraphEmbeddingParams
    description = (
        "Session item graph, weighted DeepWalk / Node2Vec walks on Ray, skip-gram and EGES embeddings with cold start."
    )
    outputs = ("item_graph", "graph_embeddings", "user_embeddings", "graph_embedding_metrics")
    inputs = ("sessions", "items", "events_clean")

    def run(self, ctx: RunContext[GraphEmbeddingParams]) -> None:
        p = ctx.params
        gspec, espec = GraphSpec.of(p), EmbeddingSpec.of(p)
        sessions = date_partition(ctx, "sessions", "build_sessions").persist(StorageLevel.MEMORY_AND_DISK)
        items = item_snapshot(ctx)
        edges = build_edges(sessions, ctx.cutoff, gspec)
        known = in_catalog(edges, items)
        edges = edges.persist(StorageLevel.MEMORY_AND_DISK)
        known = known.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n_edges, n_known = edges.count(), known.count()
            ctx.row_counts.update({"edges": n_edges, "edges_unknown_item": n_edges - n_known})
            if n_edges > n_known:
                ctx.notes["unknown_items"] = (
                    f"{n_edges - n_known} edges touch items missing from the catalog "
                    "snapshot: written to item_graph with kept = false"
                )
            nodes, fields, notes = build_nodes(items, known, gspec)
            for i, note in enumerate(notes):
                ctx.notes[f"side_fields.{i}"] = note
            npdf = nodes.orderBy("item_id").toPandas()
            n = len(npdf)
            index = pd.Series(np.arange(n), index=npdf["item_id"].to_numpy())
            codes = [pd.factorize(npdf[f], sort=True) for f in fields]
            field_codes = np.stack([c for c, _ in codes], axis=1) if codes else np.zeros((n, 0), dtype=np.int64)
            vocab = [len(u) for _, u in codes]
            kept = known.where("kept").select("src", "dst", "weight").toPandas()
            ctx.row_counts.update({"nodes": n, "edges_kept": len(kept), "cold_items": int(npdf["is_cold"].sum())})
            if len(kept) == 0:
                raise QualityGateError("the item graph has no edge: no valid session with two distinct items")
            pos = (
                positive_pairs(ctx, visible_events(clean_events(ctx), ctx.cutoff), p.positive_types, index, "u2i_pairs")
                if "lightgcn" in p.methods
                else None
            )
            if p.evaluate:
                self._evaluate(ctx, p, sessions, items, index, field_codes, vocab, fields, espec, gspec, pos)
            from recfactory.graph.walks import Graph  # numba: where the walks run, not where Params are read

            init_ray()
            fitted = (
                fit(Graph.from_labelled(kept, index), field_codes, vocab, fields, espec, seed=p.seed, cpus=node_cpus())
                if any(m in WALK_METHODS for m in p.methods)
                else {}
            )
            if pos is not None:
                fitted["lightgcn"] = self._lightgcn(ctx, p, pos, n)
            for m, f in fitted.items():
                for i, loss in enumerate(f.losses):
                    ctx.metrics[f"loss.{m}.epoch{i + 1}"] = round(loss, 6)
                for name, a in f.attention.items():
                    ctx.metrics[f"eges_attention.{name}"] = a
                ctx.row_counts[f"vectors.{m}"] = int(f.has_vector.sum())
            graph_out = edges.join(known.select("src", "dst", F.lit(True).alias("_known")), ["src", "dst"], "left")
            graph_out = graph_out.withColumn("kept", F.col("kept") & F.col("_known").isNotNull()).drop("_known")
            ref = ctx.write(graph_out.withColumn("ds", F.lit(ctx.as_of)), "item_graph")
            ctx.row_counts["item_graph"] = ref.rows
            ref = ctx.write(
                self._vectors(ctx, npdf, fitted, {"*": p.dim, "lightgcn": p.lightgcn_dim}), "graph_embeddings"
            )
            ctx.row_counts["graph_embeddings"] = ref.rows
            if ref.rows != n * len(fitted):
                raise QualityGateError(
                    f"graph_embeddings has {ref.rows} rows, expected {n} items × {len(fitted)} methods"
                )
        finally:
            for df in (sessions, edges, known):
                df.unpersist()

    def _lightgcn(self, ctx: RunContext, p: GraphEmbeddingParams, pos: PositivePairs, n: int) -> Fitted:
        """The final LightGCN on every positive: item vectors (NULL for items without a positive)
        returned as a method's, user vectors written to user_embeddings."""
        from recfactory.graph import lightgcn  # torch: imported where LightGCN trains, not where Params are read

        storage = ctx.warehouse.arrow_path("_checkpoints", self.name)
        tr = lightgcn.fit(
            pos.users, pos.items, len(pos.user_ids), n, LightGCNSpec.of(p), storage, ctx.checkpoint_name()
        )
        has = np.zeros(n, dtype=bool)
        has[pos.items] = True
        vec = tr.items.copy()
        vec[~has] = np.nan
        version = f"{ctx.as_of.isoformat()}-{ctx.run_id[:12]}"
        ctx.notes["lightgcn_model_version"] = version
        users = pd.DataFrame(
            {
                "user_id": pos.user_ids,
                "method": "lightgcn",
                "vector": list(tr.users),
                "dim": p.lightgcn_dim,
                "model_version": version,
                "run_id": ctx.run_id,
            }
        )
        out = ctx.spark.createDataFrame(users, USER_SCHEMA).withColumn("ds", F.lit(ctx.as_of))
        ref = ctx.write(out, "user_embeddings")
        ctx.row_counts["user_embeddings"] = ref.rows
        if ref.rows != len(pos.user_ids):
            raise QualityGateError(f"user_embeddings has {ref.rows} rows for {len(pos.user_ids)} users")
        return Fitted(vec, has, ~has, [float(h["loss"]) for h in tr.history])

    def _evaluate_lightgcn(self, ctx, p, pos: PositivePairs, n: int, users: np.ndarray, targets: np.ndarray, ks):
        """LightGCN's U2I evaluation (``lightgcn.evaluate``), its training positives also without
        the next-item test pairs' (user, target): ``users`` (user_id) and ``targets`` (item index)."""
        from recfactory.graph import lightgcn

        code = np.minimum(np.searchsorted(pos.user_ids, users), len(pos.user_ids) - 1)
        found = pos.user_ids[code] == users
        return lightgcn.evaluate(
            pos.users,
            pos.items,
            pos.ts,
            len(pos.user_ids),
            n,
            LightGCNSpec.of(p),
            ctx.warehouse.arrow_path("_checkpoints", self.name),
            ctx.checkpoint_name("-eval"),
            ks,
            also_held=np.isin(pos.users * n + pos.items, code[found] * n + targets[found]),
        )

    @staticmethod
    def _vectors(ctx: RunContext, npdf: pd.DataFrame, fitted: dict[str, Fitted], dims: dict[str, int]):
        frames = []
        for m, f in fitted.items():
            dim = dims.get(m, dims["*"])
            vec = [None if not h else v for v, h in zip(f.vectors.tolist(), f.has_vector, strict=True)]
            frames.append(
                pd.DataFrame(
                    {
                        "item_id": npdf["item_id"],
                        "method": m,
                        "vector": vec,
                        "is_cold_start": f.cold,
                        "dim": dim,
                        "run_id": ctx.run_id,
                    }
                )
            )
        out = ctx.spark.createDataFrame(pd.concat(frames, ignore_index=True), EMB_SCHEMA)
        return out.withColumn("ds", F.lit(ctx.as_of))

    def _evaluate(self, ctx, p, sessions, items, index, field_codes, vocab, fields, espec, gspec, pos) -> None:
        from recfactory.graph.similarity import SimilaritySpec, apply_caps, neighbor_lists

        ks = tuple(sorted(set(p.eval_k)))
        kmax = max(ks)
        train, test = leave_last_transition(sessions)
        tr_edges = (
            in_catalog(build_edges(train, ctx.cutoff, gspec).where("kept"), items)
            .select("src", "dst", "weight", "transitions")
            .toPandas()
        )
        graph_items = np.union1d(tr_edges["src"].to_numpy(dtype=object), tr_edges["dst"].to_numpy(dtype=object))
        cold = set(graph_items[seeded_share(graph_items, p.seed, "cold", p.cold_holdout)])
        touches = tr_edges["src"].isin(cold) | tr_edges["dst"].isin(cold)
        cold_pairs = tr_edges[~tr_edges["src"].isin(cold) & tr_edges["dst"].isin(cold)][["src", "dst"]]
        warm_edges = tr_edges[~touches]
        from recfactory.graph.walks import Graph

        init_ray()
        fitted = fit(
            Graph.from_labelled(warm_edges, index),
            field_codes,
            vocab,
            fields,
            espec,
            seed=p.seed,
            progress=False,
            cpus=node_cpus(),
        )  # the walk methods of the spec (none: {})
        tp = test.toPandas()
        tp = tp[
            tp["trigger"].isin(index.index)
            & tp["target"].isin(index.index)
            & ~tp["trigger"].isin(cold)
            & ~tp["target"].isin(cold)
        ]
        trig, targ = index[tp["trigger"]].to_numpy(), index[tp["target"]].to_numpy()
        ctrig, ctarg = index[cold_pairs["src"]].to_numpy(), index[cold_pairs["dst"]].to_numpy()
        rows = []

        def record(split, method, recs, targets, n_items):
            hr = hit_rate(recs, targets, ks)
            for k in ks:
                cov = len(np.unique(recs[:, :k][recs[:, :k] >= 0])) / n_items if n_items else 0.0
                rows.append((split, method, k, hr[k], cov, len(targets), ctx.as_of, None))
                prefix = "hr" if split == "next_item" else "cold_hr"
                ctx.metrics[f"{prefix}@{k}.{method}"] = round(hr[k], 6)

        n_warm = len(np.union1d(warm_edges["src"], warm_edges["dst"]))
        for m, f in fitted.items():  # coverage over the items the method can recommend (has a vector for)
            record("next_item", m, nearest(f.vectors, f.has_vector, trig, kmax), targ, int(f.has_vector.sum()))
            record("cold_item", m, nearest(f.vectors, f.has_vector, ctrig, kmax), ctarg, int(f.has_vector.sum()))
        if pos is not None:
            ev = self._evaluate_lightgcn(ctx, p, pos, len(index), tp["user_id"].to_numpy(dtype=object), targ, ks)
            for method, k, recall, ndcg, cov, users in ev.rows:
                rows.append(("u2i", method, k, recall, cov, users, ctx.as_of, ndcg))
                ctx.metrics[f"u2i_recall@{k}.{method}"] = round(recall, 6)
                ctx.metrics[f"u2i_ndcg@{k}.{method}"] = round(ndcg, 6)
            has = ev.has_item
            record("next_item", "lightgcn", nearest(ev.trained.items, has, trig, kmax), targ, int(has.sum()))
        # baselines on the same training sessions: Swing neighbors and popularity (in-weight)
        ui = (
            train.select("user_id", F.explode("items").alias("item_id"))
            .distinct()
            .where(~F.col("item_id").isin(list(cold)) if cold else F.lit(True))
            .select("user_id", "item_id", F.lit(1.0).alias("b"), F.lit(0.0).alias("t"))
        )
        sspec = SimilaritySpec(algos=("swing",), top_k=kmax, seed=p.seed)
        sw = {
            r["item_id"]: [x["item_id"] for x in r["neighbors"]]
            for r in neighbor_lists(apply_caps(ui, sspec), sspec, k=kmax).collect()
        }
        inv = index.index.to_numpy()
        srecs = np.full((len(trig), kmax), -1, dtype=np.int64)
        for r, t in enumerate(inv[trig]):
            nb = [index[x] for x in sw.get(t, [])][:kmax]
            srecs[r, : len(nb)] = nb
        record("next_item", "swing", srecs, targ, n_warm)
        pop = warm_edges.groupby("dst")["weight"].sum().sort_values(ascending=False, kind="stable").index[:kmax]
        prow = np.full(kmax, -1, dtype=np.int64)
        prow[: len(pop)] = index[pop].to_numpy()
        record("next_item", "popularity", np.tile(prow, (len(trig), 1)), targ, n_warm)
        for k in ks:  # expected HitRate of K random items among the warm and held-out items
            val = min(1.0, k / max(1, n_warm + len(cold) - 1))
            rows.append(("cold_item", "random", k, val, None, len(ctarg), ctx.as_of, None))
            ctx.metrics[f"cold_hr@{k}.random"] = round(val, 6)
        ctx.row_counts.update({"eval_pairs": len(targ), "eval_cold_pairs": len(ctarg), "eval_cold_items": len(cold)})
        ctx.write(ctx.spark.createDataFrame(rows, METRICS_SCHEMA), "graph_embedding_metrics")


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_graph_embeddings")
