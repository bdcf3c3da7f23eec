"""build_similarity: events_clean → item_similarity (+ similarity_metrics, similarity_cap_report), ds = as-of.

    spark-submit jobs/build_similarity.py --warehouse W --as-of 1998-04-30 --algos swing,itemcf --top-k 100

Swing (the paper's form and the simplified per-user form) and ItemCF (cosine, IUF) from one
interaction pass, with seeded caps against the pair explosion; see recfactory.graph.similarity.
The run also evaluates every algorithm (next-item HitRate@K and coverage on a leave-last-out split,
with a popularity baseline) and reports how much co-occurrence mass the caps removed per item.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.frames import one_row
from recfactory.features.sequences import visible_events
from recfactory.graph.similarity import build_similarity, evaluate, user_items
from recfactory.graph.similarity_spec import SimilaritySpec
from recfactory.jobs.runtime.inputs import clean_events
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams

METRICS_SCHEMA = T.StructType(
    [
        T.StructField("algo", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("hit_rate", T.DoubleType()),
        T.StructField("coverage", T.DoubleType()),
        T.StructField("users", T.LongType()),
        T.StructField("ds", T.DateType()),
    ]
)


class SimilarityParams(SimilaritySpec, JobParams):
    evaluate: bool = Field(
        True, description="Evaluate on a leave-last-out split (a second similarity pass on the training pairs)."
    )
    eval_k: list[int] = Field([10, 50], description="K values of HitRate@K and coverage@K.")


class BuildSimilarityJob(Job[SimilarityParams]):
    name = "build_similarity"
    Params = SimilarityParams
    description = "Item-to-item neighbors: Swing (two forms) and ItemCF (cosine, IUF), top-K per item, evaluated."
    outputs = ("item_similarity", "similarity_metrics", "similarity_cap_report")
    inputs = ("events_clean",)

    def run(self, ctx: RunContext[SimilarityParams]) -> None:
        p = ctx.params
        spec = SimilaritySpec.of(p)
        ui_all = user_items(visible_events(clean_events(ctx), ctx.cutoff), spec).persist(StorageLevel.MEMORY_AND_DISK)
        sims = rep = ui_all
        try:
            sims, report = build_similarity(ui_all, spec)
            sims = sims.persist(StorageLevel.MEMORY_AND_DISK)
            check = one_row(
                sims,
                F.count(F.lit(1)).alias("rows"),
                F.sum(F.array_contains(F.col("neighbors.item_id"), F.col("item_id")).cast("int")).alias("self"),
                F.max("n_neighbors").alias("kmax"),
            )
            if (check["self"] or 0) > 0 or (check["kmax"] or 0) > spec.top_k:
                raise QualityGateError(
                    f"similarity output broken: {check['self']} self-pairs, max {check['kmax']} neighbors"
                )
            ctx.row_counts["pairs"] = ui_all.count()
            for r in sims.groupBy("algo").count().collect():
                ctx.row_counts[f"items_with_neighbors.{r['algo']}"] = r["count"]
            evals = evaluate(ui_all, spec, tuple(sorted(set(p.eval_k)))) if p.evaluate else []
            for m in evals:
                ctx.metrics[f"hr@{m['k']}.{m['algo']}"] = round(m["hit_rate"], 6)
                ctx.metrics[f"coverage@{m['k']}.{m['algo']}"] = round(m["coverage"], 6)
                ctx.row_counts["eval_users"] = m["users"]
            rep = report.persist(StorageLevel.MEMORY_AND_DISK)
            tot = one_row(
                rep,
                F.sum("cooc_mass").alias("m"),
                F.sum("cooc_mass_kept").alias("k"),
                F.sum((F.col("removed_fraction") > 0).cast("int")).alias("n"),
            )
            ctx.metrics["caps.removed_mass_fraction"] = round(1 - (tot["k"] or 0) / tot["m"], 6) if tot["m"] else 0.0
            ctx.row_counts["caps.items_affected"] = tot["n"] or 0
            ref = ctx.write(sims.withColumn("ds", F.lit(ctx.as_of)), "item_similarity")
            ctx.row_counts["item_similarity"] = ref.rows
            ctx.write(rep.withColumn("ds", F.lit(ctx.as_of)), "similarity_cap_report")
            if evals:
                rows = [(m["algo"], m["k"], m["hit_rate"], m["coverage"], m["users"], ctx.as_of) for m in evals]
                ctx.write(ctx.spark.createDataFrame(rows, METRICS_SCHEMA), "similarity_metrics")
        finally:
            for df in (ui_all, sims, rep):
                df.unpersist()


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_similarity")
