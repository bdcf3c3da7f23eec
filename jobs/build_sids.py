"""build_sids: item embeddings → semantic IDs (+ codebooks, lookup, token features, metrics), ds = as-of.

    spark-submit jobs/build_sids.py --warehouse W --as-of 1998-04-30
    spark-submit jobs/build_sids.py --warehouse W --as-of D --new-generation        # weekly refit

Balanced RQ-KMeans over the date's partition of an embedding table (``aligned_embeddings`` by
default; any table with an item id and a float-array column, filtered by ``--embedding-filter``),
hourglass mitigation, collision handling, metrics and quality gates — the pure core in
``tokenizers/sid_generation.py`` and ``sid_outputs.py``, the fit and the catalog's search on Ray
(``tokenizers/rq_ray.py``). This module reads the tables, calls them, and writes.

A generation (one set of codebooks, id ``<fit date>.<hash of spec and centroids>``) is fitted by
the first run and every ``--new-generation`` run, and continued by every other: published items
keep their SIDs, new items are encoded around them. A date continues the state of the day before
only (``sid_generation.prior_date``). The gates run before anything is written. How it is
computed: docs/design/semantic-ids.md; the chain and backfill rules: docs/conventions.md.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from recfactory.features.filters import filter_column, parse_filter
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import TABLE_NAME, Field, JobParams, Restricted
from recfactory.jobs.runtime.ray_runtime import init_ray, node_cpus
from recfactory.tokenizers import sid_generation as G
from recfactory.tokenizers import sid_outputs as O
from recfactory.tokenizers.rq import Codebooks, RQSpec
from recfactory.tokenizers.rq_ray import ShardedSearch, fit_on_ray
from recfactory.tokenizers.sid_generation import SidGates, SidSpec

WRITERS = {
    "aligned_embeddings": "align_embeddings",
    "graph_embeddings": "build_graph_embeddings",
    "content_embeddings": "build_content_embeddings",
}


class SidParams(SidSpec, SidGates, JobParams):
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
    feature_vocab: int = Field(1 << 20, ge=2, description="Hash space of the SID token features.")
    eval_algo: str = Field("swing", description="item_similarity algorithm of the prefix-recall evaluation.")
    eval_k: int = Field(10, ge=1, description="Neighbours per item in the prefix-recall evaluation.")

    def generation_identity(self) -> dict:
        """What a generation fixes for all its daily runs."""
        return {
            "rq": RQSpec.of(self).to_dict(),
            **SidSpec.of(self).rules(),
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
        ids, X, quarantine = self._vectors(ctx, p)
        prior = self._prior(ctx, p.new_generation)
        continued = None if p.new_generation else prior  # the generation this run keeps, if any
        fresh = continued is None
        gspec = p.generation_identity() if continued is None else continued.spec
        if continued and json.dumps(p.generation_identity(), sort_keys=True) != json.dumps(gspec, sort_keys=True):
            ctx.notes["spec"] = (
                f"the run's codebook/SID parameters differ from generation {continued.generation}'s; its own were used "
                "(pass --new-generation to apply them)"
            )
        spec = RQSpec(**gspec["rq"])
        n = len(ids)
        if fresh and n < max(spec.codebook_sizes):
            raise ValueError(
                f"{n} items with a vector cannot fit codebooks of sizes {list(spec.codebook_sizes)}: "
                "lower --codebook-sizes"
            )

        # who keeps a published SID, who is new; fit (fresh) on Ray; encode and resolve
        plan = G.plan(ids, None if prior is None else prior.state, fresh, spec.levels)
        kept = plan.kept["item_id"]
        ctx.row_counts.update(
            {
                "items": n,
                "new_items": len(plan.new_rows),
                "kept_items": len(kept),
                "kept_in_catalog": int(kept.isin(ids).sum()),
            }
        )
        init_ray()
        fit_s = 0.0
        if continued is None:
            sample = X[G.sample_rows(ids, p.sample_size, p.seed)]
            ctx.row_counts["fit_sample"] = len(sample)
            books, fit_s = fit_on_ray(sample, spec, node_cpus()[0])
            generation = G.generation_id(ctx.as_of, gspec, books.centroids)
        else:
            books, generation = Codebooks(continued.centroids), continued.generation
        ctx.notes["generation"] = f"{generation} ({'new' if fresh else 'continued'})"
        t0 = time.time()
        search = ShardedSearch(p.encode_shard_rows)
        # hourglass removal is fixed per generation: computed on its fit, read back afterwards
        a = G.assign(
            ids, X, plan, books, spec, gspec, None if continued is None else continued.removed, p.seed, search=search
        )
        ctx.metrics.update({"fit_seconds": round(fit_s, 3), "encode_seconds": round(time.time() - t0, 3)})
        ctx.metrics["search_tasks"] = search.tasks

        # metrics and gates (in-catalog items, their current vectors), before anything is written
        items = a.item_of[a.in_catalog]
        rows = pd.Series(np.arange(n), index=ids).reindex(items).to_numpy()
        secs = ctx.metrics["fit_seconds"], ctx.metrics["encode_seconds"]
        metrics, flat = G.metrics(X[rows], a, books, self._neighbors(ctx, p, items), *secs)
        ctx.metrics.update(flat)
        failed = G.gate_failures(metrics, a.removed, SidGates.of(p))
        if failed:
            raise QualityGateError("semantic IDs not published: " + "; ".join(failed))

        # publish: a new generation's codebooks first, then the state everything else derives from
        before = None if prior is None else (prior.state, prior.generation)
        frames = O.outputs(
            fresh, a, plan, generation, ctx.as_of, books, spec, gspec, before, quarantine, metrics, p.feature_vocab
        )
        for table, frame in frames.items():
            df = ctx.spark.createDataFrame(frame, O.SCHEMAS[table]).withColumn("ds", F.lit(ctx.as_of))
            # codebooks: this generation's rows only — another generation fitted for the date (a rerun
            # on changed inputs) keeps its centroids, so no state that names it is ever orphaned
            ref = ctx.write(df, table, where={"generation": generation} if table == "sid_codebooks" else None)
            if table in ("semantic_ids", "sid_remap"):
                ctx.row_counts[table] = ref.rows

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

    def _prior(self, ctx: RunContext, new_generation: bool) -> G.Prior | None:
        """The published state the run continues (``sid_generation.prior_date``: the day before the
        as-of), or None."""
        if not ctx.has("semantic_ids"):
            return None
        sids = ctx.read("semantic_ids")
        published = sids.select("ds", "generation").distinct().toPandas()
        prev, note = G.prior_date(ctx.as_of, published, new_generation)
        if note:
            ctx.notes["prior"] = note
        if prev is None:
            return None
        state = sids.where(F.col("ds") == F.lit(prev)).drop("ds").toPandas().sort_values("item_id", kind="stable")
        gens = sorted(set(state["generation"]))
        if len(gens) != 1:
            raise ValueError(f"semantic_ids of {prev} mix generations {gens}")
        gen = gens[0]
        cb = ctx.read("sid_codebooks").where((F.col("generation") == F.lit(gen)) & (F.col("ds") <= F.lit(ctx.as_of)))
        cents, removed, spec = O.codebooks_from_frame(cb.toPandas(), gen)
        ctx.notes["prior"] += f", generation {gen}"
        return G.Prior(state.reset_index(drop=True), gen, cents, spec, removed)

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
