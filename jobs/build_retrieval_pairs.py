"""build_retrieval_pairs: events_clean + items + item_similarity + an item embedding →
retrieval_pairs (partition ds = as-of).

    spark-submit jobs/build_retrieval_pairs.py --warehouse W --as-of 1998-04-30 --hard-method lightgcn

One row per distinct (user, item) positive visible as of D (``--positive-types``, on catalog items),
its latest ts; each user's last ``--holdout`` positives are ``split = test`` (evaluation: no
negatives), the rest ``train``, each with a typed array of corpus negatives — (item_id, strategy,
q) — drawn by ``features.retrieval`` (uniform, popularity^0.75, exposed-not-clicked impressions,
hard negatives from a band of the positive's faiss neighbours in ``--hard-source`` /
``--hard-method``'s vectors), false negatives filtered (the user's positives, the positive's top
Swing neighbours). ``positive_q`` is the positive's share of the train positives (the in-batch
negatives' q). The draws are counter-based per (seed, strategy, row, slot): the same table on any
cluster and partitioning.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_hash
from recfactory.features.negatives import exposure_weight
from recfactory.features.retrieval import STRATEGIES, PairInputs, RetrievalSpec, plan
from recfactory.features.sequences import visible_events
from recfactory.graph.embedding_spec import Method
from recfactory.graph.embeddings import nearest
from recfactory.graph.similarity_spec import Algo
from recfactory.jobs.runtime.inputs import PositivePairs, clean_events, date_partition, item_snapshot, positive_pairs
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams

NEGATIVE = T.StructType(
    [
        T.StructField("item_id", T.StringType()),
        T.StructField("strategy", T.StringType()),
        T.StructField("q", T.DoubleType()),
    ]
)


class RetrievalParams(RetrievalSpec, JobParams):
    hard_source: Literal["graph_embeddings", "aligned_embeddings"] = Field(
        "graph_embeddings", description="Table of the item vectors the hard negatives are mined from."
    )
    hard_method: Method = Field("lightgcn", description="graph_embeddings method of the hard negatives' vectors.")
    filter_algo: Algo = Field("swing", description="item_similarity algo whose top neighbours are never negatives.")


class BuildRetrievalPairsJob(Job[RetrievalParams]):
    name = "build_retrieval_pairs"
    Params = RetrievalParams
    description = "Retrieval training pairs: (user, positive) with typed corpus negatives and their q, seeded."
    outputs = ("retrieval_pairs",)
    inputs = ("events_clean", "items", "item_similarity", "graph_embeddings", "aligned_embeddings")

    def run(self, ctx: RunContext[RetrievalParams]) -> None:
        p = ctx.params
        catalog = item_snapshot(ctx).select("item_id").distinct().orderBy("item_id").toPandas()["item_id"]
        index = pd.Series(np.arange(len(catalog)), index=catalog.to_numpy())
        events = visible_events(clean_events(ctx), ctx.cutoff)
        pos = positive_pairs(ctx, events, p.positive_types, index, "positives")
        user_index = pd.Series(np.arange(len(pos.user_ids)), index=pos.user_ids)
        inputs = PairInputs(
            users=pos.users,
            items=pos.items,
            ts=pos.ts,
            row_keys=seeded_hash(
                pd.Series(pos.user_id).astype(str) + "\x1f" + pd.Series(pos.item_id).astype(str), 0, "pair"
            ),
            n_users=len(pos.user_ids),
            n_items=len(index),
            exposures=self._exposures(ctx, p, events, index, user_index),
            swing=self._swing(ctx, p, index),
            neighbours=self._neighbours(ctx, p, index) if p.hard_negatives else None,
        )
        pairs = plan(inputs, p)
        ctx.row_counts.update({"test_rows": int(pairs.test.sum()), "train_rows": len(pairs.train_rows)})
        flat = []
        slot0 = 0
        for strategy in STRATEGIES:
            if strategy not in pairs.negatives:
                continue
            items, q = pairs.negatives[strategy]
            r, j = np.nonzero(items >= 0)
            ctx.row_counts[f"negatives.{strategy}"] = len(r)
            ctx.row_counts[f"negatives_missing.{strategy}"] = int(items.size - len(r))
            flat.append(
                pd.DataFrame(
                    {
                        "row": pairs.train_rows[r],
                        "slot": slot0 + j,
                        "item_id": catalog.to_numpy()[items[r, j]],
                        "strategy": strategy,
                        "q": q[r, j],
                    }
                )
            )
            slot0 += items.shape[1]
        self._write(ctx, pos, pairs, flat)

    @staticmethod
    def _exposures(ctx, p: RetrievalParams, events, index: pd.Series, user_index: pd.Series):
        """(user, item, weight) of the impressions of users with a positive, on catalog items: one
        row per pair, its weight the sum of its exposures' ``exposure_weight``."""
        if not p.exposed_negatives:
            return (np.zeros(0, np.int64),) * 2 + (np.zeros(0),)
        imp = (
            events.where(F.col("event_type") == "impression")
            .select("user_id", "item_id", F.expr("try_cast(context['position'] AS INT)").alias("position"))
            .toPandas()
        )
        imp = imp[imp["user_id"].isin(user_index.index) & imp["item_id"].isin(index.index)]
        imp = imp.assign(w=exposure_weight(imp["position"].fillna(-1).to_numpy(), p.exposure_discount))
        agg = imp.groupby(["user_id", "item_id"], sort=True)["w"].sum().reset_index()
        ctx.row_counts["exposed_pairs"] = len(agg)
        return (
            user_index[agg["user_id"]].to_numpy(),
            index[agg["item_id"]].to_numpy(),
            agg["w"].to_numpy(),
        )

    @staticmethod
    def _swing(ctx, p: RetrievalParams, index: pd.Series):
        """(item, neighbour) of every item's top ``--swing-filter`` neighbours in item_similarity."""
        if not p.swing_filter:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        nb = (
            date_partition(ctx, "item_similarity", "build_similarity")
            .where(F.col("algo") == p.filter_algo)
            .select("item_id", F.posexplode("neighbors").alias("rank", "nb"))
            .where(F.col("rank") < p.swing_filter)
            .select("item_id", F.col("nb.item_id").alias("neighbour"))
            .toPandas()
        )
        nb = nb[nb["item_id"].isin(index.index) & nb["neighbour"].isin(index.index)]
        ctx.row_counts["filter_pairs"] = len(nb)
        return index[nb["item_id"]].to_numpy(), index[nb["neighbour"]].to_numpy()

    @staticmethod
    def _neighbours(ctx, p: RetrievalParams, index: pd.Series) -> np.ndarray:
        """Every catalog item's ``--hard-rank-max`` nearest items by cosine in the hard source's
        vectors (faiss, exact); -1 rows for items without a vector."""
        if p.hard_source == "graph_embeddings":
            emb = date_partition(ctx, "graph_embeddings", "build_graph_embeddings").where(
                F.col("method") == p.hard_method
            )
            what = f"graph_embeddings method {p.hard_method}"
        else:
            emb, what = date_partition(ctx, "aligned_embeddings", "align_embeddings"), "aligned_embeddings"
        vec = emb.where(F.col("vector").isNotNull()).select("item_id", "vector").toPandas()
        vec = vec[vec["item_id"].isin(index.index)]
        if not len(vec):
            raise QualityGateError(f"{what} has no vector for {ctx.as_of}: no hard negatives to mine")
        x = np.zeros((len(index), len(vec["vector"].iloc[0])), dtype=np.float32)
        valid = np.zeros(len(index), dtype=bool)
        rows = index[vec["item_id"]].to_numpy()
        x[rows], valid[rows] = np.stack(vec["vector"].to_numpy()), True
        ctx.row_counts["hard_items_with_vector"] = int(valid.sum())
        return nearest(x, valid, np.arange(len(index)), p.hard_rank_max)

    @staticmethod
    def _write(ctx: RunContext, pos: PositivePairs, pairs, flat: list[pd.DataFrame]) -> None:
        spark = ctx.spark
        rows = pd.DataFrame(
            {
                "row": np.arange(len(pos)),
                "user_id": pos.user_id.astype(str),
                "item_id": pos.item_id.astype(str),
                "ts_us": pos.ts,
                "split": np.where(pairs.test, "test", "train"),
                "positive_q": pairs.positive_q,
            }
        )
        base = spark.createDataFrame(rows)
        if flat:
            neg = spark.createDataFrame(pd.concat(flat, ignore_index=True))
            arrays = neg.groupBy("row").agg(
                F.sort_array(F.collect_list(F.struct("slot", "item_id", "strategy", "q"))).alias("_n")
            )
            base = base.join(arrays, "row", "left")
            negs = F.transform("_n", lambda x: F.struct(x["item_id"], x["strategy"], x["q"])).cast(
                T.ArrayType(NEGATIVE)
            )
        else:
            negs = F.lit(None).cast(T.ArrayType(NEGATIVE))
        negs = F.coalesce(negs, F.array().cast(T.ArrayType(NEGATIVE)))  # test rows: an empty array
        out = base.select(
            "user_id",
            "item_id",
            F.timestamp_micros("ts_us").alias("ts"),
            "split",
            "positive_q",
            negs.alias("negatives"),
            F.lit(ctx.run_id).alias("run_id"),
            F.lit(ctx.as_of).alias("ds"),
        )
        ref = ctx.write(out, "retrieval_pairs")
        ctx.row_counts["retrieval_pairs"] = ref.rows
        if ref.rows != len(pos):
            raise QualityGateError(f"retrieval_pairs has {ref.rows} rows for {len(pos)} positives")


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_retrieval_pairs")
