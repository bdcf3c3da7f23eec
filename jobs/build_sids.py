"""build_sids: item embeddings → semantic IDs (+ codebooks, lookup, token features, metrics), ds = as-of.

    spark-submit jobs/build_sids.py --warehouse W --as-of 1998-04-30
    spark-submit jobs/build_sids.py --warehouse W --as-of D --new-generation        # weekly refit

Balanced RQ-KMeans (``recfactory.tokenizers.rq``) over the date's partition of an embedding table
(``aligned_embeddings`` by default; any table with an item id and a float-array column, filtered by
``--embedding-filter``), then hourglass mitigation, collision handling, metrics and quality gates
(``recfactory.tokenizers.sids``).

**Generations.** A generation is one set of codebooks. The first run, and every run with
``--new-generation``, fits new codebooks on a seeded sample (bottom-k of a hash of the item id: the
same sample whatever the partitioning) in a Ray task, encodes every item, and — when there was a
previous generation — writes ``sid_remap`` (old SID → new SID per item). Other runs keep the
current generation (its spec and codebooks are read back from ``sid_codebooks``): published items
keep their SIDs whatever their vectors do now, new items are encoded with every capacity counting
the published items, and collision handling never moves a published item. Items that left the
embedding table keep their row (``in_catalog`` false) and their SID stays reserved.

**Chains.** A date continues the state published for the previous date (``semantic_ids`` ds = D − 1),
so rerunning a date after later ones gives its first run's rows. A date with no state before it
starts a chain of its own; a date whose previous date has no state while earlier dates do fails,
naming the missing date (the DAG's ``depends_on_past`` runs dates in order). A generation's id is
``<fit date>.<hash of its spec and centroids>`` (``generation_id``): unique across dates and runs,
and a (generation, level, code) names exactly one centroid.

**Gates** (before anything is written): collision rate before handling, codebook utilization per
level, relative reconstruction error, and the level-1 prefix recall of behaviour neighbours over
its random baseline (when ``item_similarity`` has the date). SIDs are unique after handling by
construction, and the job asserts it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.filters import filter_column, parse_filter
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import TABLE_NAME, Field, JobParams, Restricted
from recfactory.jobs.runtime.ray_runtime import init_ray, node_cpus
from recfactory.tokenizers import sid_generation as G
from recfactory.tokenizers import sid_outputs as O
from recfactory.tokenizers.rq import Codebooks, RQSpec
from recfactory.tokenizers.rq_ray import ShardedSearch, fit_on_ray

WRITERS = {
    "aligned_embeddings": "align_embeddings",
    "graph_embeddings": "build_graph_embeddings",
    "content_embeddings": "build_content_embeddings",
}

SID_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("codes", T.ArrayType(T.IntegerType()), False),
        T.StructField("suffix", T.IntegerType(), False),
        T.StructField("sid", T.StringType(), False),
        T.StructField("generation", T.StringType(), False),
        T.StructField("rq_codes", T.ArrayType(T.IntegerType()), False),
        T.StructField("in_catalog", T.BooleanType(), False),
        T.StructField("assigned_ds", T.DateType(), False),
    ]
)
CODEBOOK_SCHEMA = T.StructType(
    [
        T.StructField("generation", T.StringType(), False),
        T.StructField("level", T.IntegerType(), False),
        T.StructField("code", T.IntegerType(), False),
        T.StructField("centroid", T.ArrayType(T.FloatType()), False),
        T.StructField("removed", T.BooleanType(), False),
        T.StructField("fit_items", T.LongType(), False),
        T.StructField("spec", T.StringType(), False),
    ]
)
LOOKUP_SCHEMA = T.StructType(
    [
        T.StructField("sid", T.StringType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("generation", T.StringType(), False),
        T.StructField("in_catalog", T.BooleanType(), False),
    ]
)
FEATURE_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("generation", T.StringType(), False),
        T.StructField("sid", T.StringType(), False),
        T.StructField("prefix_ngram_ids", T.ArrayType(T.LongType()), False),
        T.StructField("bigram_ids", T.ArrayType(T.LongType()), False),
        T.StructField("vocab_size", T.LongType(), False),
    ]
)
REMAP_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("old_generation", T.StringType(), False),
        T.StructField("old_sid", T.StringType(), False),
        T.StructField("new_generation", T.StringType(), False),
        T.StructField("new_sid", T.StringType()),
    ]
)
QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType()),
        T.StructField("reason", T.StringType(), False),
    ]
)
METRICS_SCHEMA = T.StructType(
    [T.StructField("generation", T.StringType(), False), T.StructField("level", T.IntegerType(), False)]
    + [T.StructField(m, T.DoubleType()) for m in G.LEVEL_METRICS + G.TOTAL_METRICS]
)


class MissingPriorDateError(ValueError):
    """The previous date's state is missing while earlier dates have some: run that date first."""


class SidParams(RQSpec, JobParams):
    embeddings: str = Field(
        "aligned_embeddings", pattern=TABLE_NAME, description="Embedding table (its ds = as-of partition)."
    )
    embedding_filter: str | None = Restricted(
        "filter",
        None,
        description="Rows selecting one embedding per item: clauses column = value, column != value, "
        "column in (a, b), column not in (a, b), joined by and — e.g. \"method = 'deepwalk'\" for graph_embeddings "
        "(checked against the table's schema; never evaluated as SQL).",
    )
    vector_column: str = Field("vector", description="The float-array column of the embedding table.")
    normalize: bool = Field(True, description="L2-normalize vectors before quantizing.")
    new_generation: bool = Field(
        False, description="Refit the codebooks into a new generation (and write sid_remap); the first run always does."
    )
    sample_size: int = Field(65536, ge=2, description="Items the codebooks are fitted on (seeded bottom-k sample).")
    encode_shard_rows: int = Field(
        131072,
        ge=1,
        description="Items per Ray task of the catalog's nearest-code "
        "search (the codebooks are broadcast; the result does not depend on it).",
    )
    drop_levels: list[int] = Field([], description="Hourglass: levels (1-based, not the last) left out of the SIDs.")
    remove_top_tokens: int = Field(
        0,
        ge=0,
        description="Hourglass: the most frequent tokens of --top-token-level "
        "removed from the SIDs of their items (variable-length SIDs).",
    )
    top_token_level: int = Field(2, ge=1, description="The level whose top tokens --remove-top-tokens removes.")
    collision: Literal["suffix", "reassign"] = Field(
        "suffix",
        description="suffix: an extra last token "
        "0..n−1; reassign: at most --max-per-sid items per SID, "
        "overflow moves to a free last-level code.",
    )
    max_per_sid: int = Field(1, ge=1, description="reassign: items per SID before moving (> 1 adds a suffix).")
    reassign_candidates: int = Field(
        16, ge=1, description="reassign: nearest last-level codes tried before a seeded random free one."
    )
    feature_vocab: int = Field(1 << 20, ge=2, description="Hash space of the SID token features.")
    eval_algo: str = Field("swing", description="item_similarity algorithm of the prefix-recall evaluation.")
    eval_k: int = Field(10, ge=1, description="Neighbours per item in the prefix-recall evaluation.")
    gate_max_collision_rate: float = Field(0.5, ge=0, le=1, description="Largest collision rate before handling.")
    gate_min_utilization: float = Field(
        0.1, ge=0, le=1, description="Smallest share of used codes on every kept level."
    )
    gate_max_relative_recon_error: float = Field(0.9, gt=0, description="Largest mean ‖e − ê‖² / ‖e‖².")
    gate_min_recall_lift: float = Field(
        1.0,
        ge=0,
        description="Level-1 prefix recall must be at least this times "
        "its random baseline (when item_similarity has the date).",
    )

    def generation_identity(self) -> dict:
        """What a generation fixes for all its daily runs."""
        return {
            "rq": RQSpec.of(self).to_dict(),
            "drop_levels": sorted(self.drop_levels),
            "remove_top_tokens": self.remove_top_tokens,
            "top_token_level": self.top_token_level,
            "collision": self.collision,
            "max_per_sid": self.max_per_sid,
            "reassign_candidates": self.reassign_candidates,
            "normalize": self.normalize,
            "embeddings": self.embeddings,
            "embedding_filter": self.embedding_filter,
            "vector_column": self.vector_column,
        }


class BuildSidsJob(Job[SidParams]):
    name = "build_sids"
    Params = SidParams
    description = "Balanced RQ-KMeans semantic IDs with collision handling, metrics, gates and stable generations."
    outputs = (
        "semantic_ids",
        "sid_codebooks",
        "sid_lookup",
        "sid_features",
        "sid_metrics",
        "sid_remap",
        "sid_quarantine",
    )

    @classmethod
    def input_tables(cls, params) -> tuple[str, ...]:
        return (params.embeddings, "item_similarity")

    def run(self, ctx: RunContext[SidParams]) -> None:
        p = ctx.params
        spark = ctx.spark
        ids, X, quarantine = self._vectors(ctx, p)
        prior, gen_prev, books_prev, spec_prev, removed_prev = self._prior(ctx, p.new_generation)
        fresh = prior is None or p.new_generation
        gspec = p.generation_identity() if fresh else spec_prev
        generation = gen_prev  # a new generation's id is its content's, known after the fit
        if not fresh and json.dumps(p.generation_identity(), sort_keys=True) != json.dumps(spec_prev, sort_keys=True):
            ctx.notes["spec"] = (
                "the run's codebook/SID parameters differ from generation "
                f"{generation}'s; its own were used (pass --new-generation to apply them)"
            )
        spec = RQSpec(**gspec["rq"])
        n = len(ids)
        if fresh and n < max(spec.codebook_sizes):
            raise ValueError(
                f"{n} items with a vector cannot fit codebooks of sizes {list(spec.codebook_sizes)}: "
                "lower --codebook-sizes"
            )

        # who keeps a published SID, who is new; fit (fresh) on Ray; encode and resolve
        plan = G.plan(ids, prior, fresh, spec.levels)
        index = pd.Series(np.arange(n), index=ids)
        kept = plan.kept
        ctx.row_counts.update(
            {
                "items": n,
                "new_items": len(plan.new_rows),
                "kept_items": len(kept),
                "kept_in_catalog": int(kept["item_id"].isin(index.index).sum()) if len(kept) else 0,
            }
        )
        fit_s = 0.0
        if fresh:
            sample = X[G.sample_rows(ids, p.sample_size, p.seed)]
            ctx.row_counts["fit_sample"] = len(sample)
            init_ray()
            books, fit_s = fit_on_ray(sample, spec, node_cpus()[0])
            generation = G.generation_id(ctx.as_of, gspec, books.centroids)
        else:
            init_ray()
            books = Codebooks(books_prev)
        t0 = time.time()
        search = ShardedSearch(p.encode_shard_rows)
        ctx.notes["generation"] = f"{generation} ({'new' if fresh else 'continued'})"
        # hourglass removal is fixed per generation: computed on its fit, read back afterwards
        a = G.assign(ids, X, plan, books, spec, gspec, None if fresh else removed_prev, p.seed, search=search)
        ctx.metrics.update(
            {"fit_seconds": round(fit_s, 3), "encode_seconds": round(time.time() - t0, 3), "search_tasks": search.tasks}
        )

        # metrics and gates (in-catalog items, their current vectors)
        items = a.item_of[a.in_catalog]
        metrics, flat = G.metrics(
            X[index.reindex(items).to_numpy()],
            a,
            books,
            self._neighbors(ctx, p, items),
            ctx.metrics["fit_seconds"],
            ctx.metrics["encode_seconds"],
        )
        ctx.metrics.update(flat)
        metrics.insert(0, "generation", generation)
        failed = G.gate_failures(
            metrics,
            a.removed,
            p.gate_max_collision_rate,
            p.gate_min_utilization,
            p.gate_max_relative_recon_error,
            p.gate_min_recall_lift,
        )
        if failed:
            raise QualityGateError("semantic IDs not published: " + "; ".join(failed))

        # publish: codebooks first (a new generation), then the state everything else derives from
        as_of = ctx.as_of
        if fresh:
            cb = O.codebook_frame(generation, books, a, spec, gspec)
            # replaces this generation's rows only: another generation fitted for the date (a rerun on
            # changed inputs) keeps its centroids, so no state that names it is ever orphaned
            ctx.write(
                spark.createDataFrame(cb, CODEBOOK_SCHEMA).withColumn("ds", F.lit(as_of)),
                "sid_codebooks",
                where={"generation": generation},
            )
        state = O.state_frame(a, plan, generation, as_of)
        ref = ctx.write(spark.createDataFrame(state, SID_SCHEMA).withColumn("ds", F.lit(as_of)), "semantic_ids")
        ctx.row_counts["semantic_ids"] = ref.rows
        lookup = state[["sid", "item_id", "generation", "in_catalog"]]
        ctx.write(spark.createDataFrame(lookup, LOOKUP_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_lookup")
        feats = O.feature_frame(a, generation, p.feature_vocab)
        ctx.write(spark.createDataFrame(feats, FEATURE_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_features")
        if fresh and prior is not None:
            remap = O.remap_frame(prior, gen_prev, a, generation)
            ref = ctx.write(spark.createDataFrame(remap, REMAP_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_remap")
            ctx.row_counts["sid_remap"] = ref.rows
        ctx.write(spark.createDataFrame(quarantine, QUARANTINE_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_quarantine")
        ctx.write(spark.createDataFrame(metrics, METRICS_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_metrics")

    # ---- inputs -----------------------------------------------------------------------------
    @staticmethod
    def _vectors(ctx: RunContext, p: SidParams):
        """(sorted item ids, vectors n × d float32, quarantine rows) of the embedding partition."""
        from recfactory.jobs.runtime.inputs import date_partition

        df = date_partition(ctx, p.embeddings, WRITERS.get(p.embeddings, f"the job that writes {p.embeddings}"))
        if p.vector_column not in df.columns or "item_id" not in df.columns:
            raise ValueError(f"{p.embeddings} needs item_id and {p.vector_column} columns; it has {df.columns}")
        if p.embedding_filter:
            df = df.where(filter_column(parse_filter(p.embedding_filter), df.schema))
        pdf = df.select(F.col("item_id").cast("string").alias("item_id"), F.col(p.vector_column).alias("v")).toPandas()
        ctx.row_counts["embedding_rows"] = len(pdf)
        if not len(pdf):
            raise ValueError(
                f"{p.embeddings} has no rows for {ctx.as_of}"
                + (f" matching {p.embedding_filter!r}" if p.embedding_filter else "")
            )
        ids, X, q = G.check_vectors(pdf["item_id"].to_numpy(dtype=object), pdf["v"].to_numpy(dtype=object), p.normalize)
        ctx.row_counts["quarantined"] = len(q)
        return ids, X, q

    def _prior(self, ctx: RunContext, new_generation: bool):
        """(state, generation, codebooks, generation spec, removed-token masks) of the state published
        for the day before the as-of, or Nones when no earlier date has state (a chain of its own).

        A date continues from the previous date only: never from an older one across a gap (that
        fails, naming the missing date, unless --new-generation starts a new chain), never from a
        later one. So rerunning a date after later dates ran gives its first run's rows."""
        if not ctx.has("semantic_ids"):
            return None, None, None, None, None
        prev = ctx.as_of - dt.timedelta(days=1)
        sids = ctx.read("semantic_ids")
        state = sids.where(F.col("ds") == F.lit(prev)).drop("ds").toPandas()
        if not len(state):
            older = sids.where(F.col("ds") < F.lit(prev)).agg(F.max("ds")).first()[0]
            if older is None:
                return None, None, None, None, None
            if new_generation:
                ctx.notes["prior"] = f"none: no state for {prev} (latest {older}); a new chain"
                return None, None, None, None, None
            # a rerun of a date that started its chain (its generation was fitted on it, with no state
            # before it at the time; an earlier date backfilled since has a chain of its own)
            own = sids.where(F.col("ds") == F.lit(ctx.as_of)).select("generation").distinct().collect()
            if own and all(str(r["generation"]).startswith(f"{ctx.as_of.isoformat()}.") for r in own):
                ctx.notes["prior"] = f"none: {ctx.as_of} started its chain (rerun)"
                return None, None, None, None, None
            raise MissingPriorDateError(
                f"build_sids for {ctx.as_of} continues the semantic IDs of {prev}, which has none, while "
                f"{older} has: run build_sids for {prev} first (dates after {older} in order), or pass "
                "--new-generation to start a new chain"
            )
        state = state.sort_values("item_id", kind="stable")
        gens = sorted(set(state["generation"]))
        if len(gens) != 1:
            raise ValueError(f"semantic_ids of {prev} mix generations {gens}")
        gen = gens[0]
        cb = ctx.read("sid_codebooks").where((F.col("generation") == F.lit(gen)) & (F.col("ds") <= F.lit(ctx.as_of)))
        cents, removed, spec = O.codebooks_from_frame(cb.toPandas(), gen)
        ctx.notes["prior"] = f"semantic_ids ds={prev}, generation {gen}"
        return state.reset_index(drop=True), gen, cents, spec, removed

    @staticmethod
    def _neighbors(ctx: RunContext, p: SidParams, items: np.ndarray) -> list[np.ndarray] | None:
        """Each item's top eval_k behaviour neighbours (row indices into `items`), or None when
        item_similarity has no partition for the as-of."""
        if not ctx.has("item_similarity"):
            ctx.notes["prefix_recall"] = "skipped: no item_similarity table"
            return None
        sims = ctx.read("item_similarity").where((F.col("ds") == F.lit(ctx.as_of)) & (F.col("algo") == p.eval_algo))
        pairs = (
            sims.select("item_id", F.posexplode("neighbors").alias("rank", "nb"))
            .where(F.col("rank") < p.eval_k)
            .select(F.col("item_id").cast("string").alias("a"), F.col("nb.item_id").cast("string").alias("b"))
            .toPandas()
        )
        if not len(pairs):
            ctx.notes["prefix_recall"] = f"skipped: item_similarity has no {p.eval_algo} rows for {ctx.as_of}"
            return None
        ctx.row_counts["eval_pairs"] = int((pairs["a"].isin(items) & pairs["b"].isin(items)).sum())
        return O.neighbor_rows(pairs, items)


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sids")
