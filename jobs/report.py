"""report: one evaluation report per run — a self-contained HTML page and its PNGs for one as-of.

    spark-submit jobs/report.py --warehouse W --as-of 1998-04-30
    recfactory report --warehouse W --as-of D --output-dir docs/reports/my-run

Reads the run log and the tables of the date (pinned, like every job: the versions it read are in
its ``_runs`` row and in the page) and writes ``index.html`` plus one PNG per chart to
``<warehouse>/_reports/report/<as-of>/`` (or ``--output-dir``), and one row per report to
``report_index``. Sections:

1. **Runs** — per job of the date: status, attempts, duration, rows written (bar chart of durations).
2. **Lineage** — every table version each job read and wrote, as a graph and as a table.
3. **Item-to-item quality** — HitRate@K per algorithm with the popularity baseline (Swing/ItemCF
   leave-last-out, graph embeddings' next item, content vs aligned embeddings).
4. **Neighbor examples** — the most-interacted items with their nearest neighbors by title.
5. **Embedding maps** — graph and aligned embeddings in 2-D (t-SNE or PCA of a seeded sample),
   coloured by category.
6. **Semantic IDs** — items per code per level, the hourglass chart (effective codes per level),
   collision rate and SID Gini before/after collision handling, per-level Gini.
7. **GBDT** — test metrics, the calibration curve (recomputed on the test split with the published
   model) and feature importance.
8. **Quarantine** — rows quarantined by reason per quarantine table, and ingest's reconciliation.

A section whose tables the warehouse does not have for the date says so (with the job to run)
instead of disappearing. Plots are matplotlib on the Agg backend; nothing is fetched at render time.

This module holds the reads: one function per section gathers its frames (Spark, pinned through the
run context) and hands them to the section's pure renderer in ``recfactory.jobs.reporting``.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_sample, uniform
from recfactory.jobs.reporting import gbdt, maps, neighbors, quality, quarantine, runs, sids
from recfactory.jobs.reporting.html import Missing, Rendered, missing_section, page, section
from recfactory.jobs.runtime.inputs import MissingInput, date_partition, latest_partition
from recfactory.jobs.runtime.job import RUNS_TABLE, Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams, Restricted
from recfactory.jobs.runtime.reports import ReportFolder

QUARANTINES = ("events_quarantine", "items_quarantine", "content_quarantine", "sid_quarantine")
INDEX_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("sections", T.ArrayType(T.StringType()), False),
        T.StructField("missing_sections", T.ArrayType(T.StringType()), False),
        T.StructField("images", T.IntegerType(), False),
        T.StructField("html_bytes", T.LongType(), False),
    ]
)


class ReportParams(JobParams):
    output_dir: str | None = Restricted(
        "path", None, description="Folder for index.html and the PNGs (default <warehouse>/_reports/report/<as-of>)."
    )
    example_items: int = Field(5, ge=1, le=50, description="Most-interacted items shown with their neighbors.")
    neighbors: int = Field(10, ge=1, le=100, description="Neighbors shown per example item and algorithm.")
    neighbor_algos: list[str] = Field(
        ["swing", "itemcf_iuf"],
        description="item_similarity algorithms shown "
        "in the neighbor examples (besides the aligned embeddings' nearest).",
    )
    map_sample: int = Field(2000, ge=50, description="Items per embedding map (seeded sample).")
    projection: Literal["tsne", "pca"] = Field("tsne", description="2-D projection of the embedding maps.")
    map_categories: int = Field(
        8, ge=1, le=20, description="Most frequent categories coloured in the maps (the rest are grey)."
    )
    calibration_rows: int = Field(
        200_000, ge=100, description="Most test rows scored for the calibration curve (seeded sample)."
    )


class Warehouse:
    """The report's reads of the date: every table read (and recorded as an input) once, so the
    sections share one pinned version of it; Missing, naming the job to run, for what is not there."""

    def __init__(self, ctx: RunContext, p: ReportParams):
        self.ctx, self.p, self.as_of = ctx, p, ctx.as_of

    @functools.cache  # noqa: B019 - one Warehouse per report run
    def table(self, name: str):
        return self.ctx.read(name)

    def partition(self, name: str, job: str, latest: bool = False):
        """The table's partition of the date (or, with latest, the latest one at or before it), ds
        dropped."""
        if not self.ctx.has(name):
            raise Missing(f"{name} does not exist (run {job})")
        try:
            return (latest_partition if latest else date_partition)(self.ctx, name, job, read=self.table)
        except MissingInput as e:
            raise Missing(str(e)) from None

    def optional(self, name: str, job: str) -> pd.DataFrame | Missing:
        """The date's partition collected, or the Missing that says why there is none."""
        try:
            return self.partition(name, job).toPandas()
        except Missing as e:
            return e

    @functools.cached_property
    def catalog(self) -> tuple[pd.Series, pd.Series]:
        """item_id → "title" (the item id when there is none) and item_id → category, from the latest
        catalog snapshot."""
        items = self.partition("items", "ingest", latest=True).select("item_id", "title", "category").toPandas()
        ids = items["item_id"].to_numpy()
        titles = pd.Series(items["title"].fillna(items["item_id"]).astype(str).to_numpy(), index=ids)
        return titles, pd.Series(items["category"].fillna("(none)").astype(str).to_numpy(), index=ids)

    @functools.cached_property
    def runs(self) -> pd.DataFrame:
        """The date's runs of the other jobs, in start order."""
        if not self.ctx.has(RUNS_TABLE):
            raise Missing(f"{RUNS_TABLE} does not exist (no job ran on this warehouse)")
        cols = ("run_id", "job", "status", "started_at", "duration_s", "inputs", "outputs", "row_counts", "error")
        log = self.table(RUNS_TABLE).where((F.col("as_of") == F.lit(self.as_of)) & (F.col("job") != ReportJob.name))
        pdf = log.select(*cols).toPandas()
        if not len(pdf):
            raise Missing(f"{RUNS_TABLE} has no run for {self.as_of}")
        return pdf.sort_values("started_at", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- the sections' reads
def _runs(w: Warehouse) -> Rendered:
    return runs.runs_section(w.runs, w.as_of)


def _lineage(w: Warehouse) -> Rendered:
    return runs.lineage_section(w.runs, skip=RUNS_TABLE)


def _quality(w: Warehouse) -> Rendered:
    return quality.quality_section(
        w.partition("similarity_metrics", "build_similarity").toPandas(),
        w.optional("graph_embedding_metrics", "build_graph_embeddings"),
        w.optional("alignment_metrics", "align_embeddings"),
    )


def _neighbors(w: Warehouse) -> Rendered:
    if not w.ctx.has("events_clean"):
        raise Missing("events_clean does not exist (run ingest)")
    titles, categories = w.catalog
    p = w.p
    events = w.table("events_clean").where(F.col("ds") <= F.lit(w.as_of))
    top = (  # the most-interacted items (distinct users, ties by id) up to the as-of
        events.groupBy("item_id")
        .agg(F.countDistinct("user_id").alias("users"))
        .orderBy(F.desc("users"), "item_id")
        .limit(p.example_items)
        .toPandas()
    )
    if not len(top):
        raise Missing("events_clean has no events up to the date (run ingest)")
    items = top["item_id"].tolist()
    got = (
        w.partition("item_similarity", "build_similarity")
        .where(F.col("item_id").isin(items) & F.col("algo").isin(p.neighbor_algos))
        .select("algo", "item_id", F.slice("neighbors", 1, p.neighbors).alias("nb"))
        .toPandas()
    )
    lists = {(r.algo, r.item_id): [n["item_id"] for n in r.nb] for r in got.itertuples()}
    columns = {a: a for a in p.neighbor_algos}
    try:
        emb = w.partition("aligned_embeddings", "align_embeddings").select("item_id", "vector")
    except Missing:
        emb = None
    if emb is not None:
        queries = emb.where(F.col("item_id").isin(items)).toPandas()
        if len(queries):  # nearest by cosine in the aligned space: a heap per query and Spark partition
            k = p.neighbors
            cand = emb.rdd.mapPartitions(lambda rows: neighbors.nearest_by_cosine(queries, rows, k)).collect()
            lists.update({("aligned", i): v for i, v in neighbors.top_k_lists(cand, k).items()})
        columns["aligned"] = "aligned embeddings (cosine)"
    return neighbors.neighbors_section(top, lists, columns, titles, categories, w.as_of, p.neighbors)


def _sample(w: Warehouse, df) -> pd.DataFrame:
    """A seeded sample of at most map_sample rows by the smallest hash of item_id (the same whatever the
    partitioning), collected."""
    ids = df.select("item_id").distinct().toPandas()["item_id"].to_numpy()
    if len(ids) > w.p.map_sample:
        ids = ids[seeded_sample(ids, w.p.seed, "report-map", w.p.map_sample)]
    return df.where(F.col("item_id").isin(ids.tolist())).toPandas()


def _maps(w: Warehouse) -> Rendered:
    _, categories = w.catalog
    found = []
    try:
        ge = w.partition("graph_embeddings", "build_graph_embeddings")
        for m in sorted(r[0] for r in ge.select("method").distinct().collect()):
            # cold-start items a walk method cannot embed carry an empty vector: not drawn
            vectors = ge.where((F.col("method") == m) & (F.size("vector") > 0)).select("item_id", "vector")
            found.append((f"graph: {m}", _sample(w, vectors)))
    except Missing:
        pass
    try:
        vectors = w.partition("aligned_embeddings", "align_embeddings").select("item_id", "vector")
        found.append(("aligned (content → behaviour)", _sample(w, vectors)))
    except Missing:
        pass
    if not found:
        raise Missing("neither graph_embeddings nor aligned_embeddings (run build_graph_embeddings, align_embeddings)")
    p = w.p
    return maps.maps_section(
        found, categories, colored=p.map_categories, projection=p.projection, seed=p.seed, sample=p.map_sample
    )


def _sids(w: Warehouse) -> Rendered:
    codes = w.partition("semantic_ids", "build_sids").where("in_catalog")
    metrics = w.partition("sid_metrics", "build_sids").toPandas()
    counts = codes.select(F.posexplode("rq_codes").alias("pos", "code")).groupBy("pos", "code").count().toPandas()
    return sids.sids_section(metrics, counts)


def _train_run(w: Warehouse, model_version: str) -> pd.Series | None:
    """The _runs row of the train_gbdt run that published the model (its version ends in the run id's
    first 12 characters)."""
    suffix = model_version.rsplit("-", 1)[-1]
    ok = (F.col("job") == "train_gbdt") & (F.col("status") == "succeeded") & F.col("run_id").startswith(suffix)
    found = w.table(RUNS_TABLE).where(ok).select("params", "as_of").toPandas()
    return None if not len(found) else found.iloc[0]


def _gbdt(w: Warehouse) -> Rendered:
    import lightgbm as lgb

    from recfactory.features.samples import recalibrate

    models = w.partition("gbdt_models", "train_gbdt", latest=True).toPandas()
    model = models.sort_values("model_version").iloc[-1]
    version = model["model_version"]
    met = w.table("gbdt_metrics").where(F.col("model_version") == version).toPandas()
    summary = json.loads(model["metrics"])
    run = _train_run(w, version)
    label = json.loads(run["params"]).get("label", "label_click") if run is not None else "label_click"
    ds = run["as_of"] if run is not None else w.as_of
    names = list(model["feature_names"])
    test = w.table("training_samples").where((F.col("ds") == F.lit(ds)) & (F.col("split") == "test"))
    lacking = [c for c in [*names, label] if c not in test.columns]
    calibration: gbdt.Calibration | str
    if lacking:
        calibration = f"training_samples of {ds} lacks {lacking}: no calibration curve."
    else:
        n = test.count()
        if n > w.p.calibration_rows:
            keep = uniform(w.p.seed, F.col("sample_id").cast("string"), salt="calibration")
            test = test.where(keep < F.lit(w.p.calibration_rows / n))
        pdf = test.select(*[F.col(c).cast("double") for c in names], F.col(label).cast("double")).toPandas()
        booster = lgb.Booster(model_str=model["model_text"])
        q = recalibrate(booster.predict(pdf[names].to_numpy()), float(summary.get("negative_rate", 1.0)))
        calibration = gbdt.Calibration(pdf[label].to_numpy(), np.asarray(q), ds)
    return gbdt.gbdt_section(version, len(names), met, summary.get("importance_gain", {}), calibration)


def _quarantine(w: Warehouse) -> Rendered:
    tables, reasons = [], []
    for name in QUARANTINES:
        if not w.ctx.has(name):
            tables.append({"table": name, "rows": None, "note": "not built"})
            continue
        q = w.table(name).where(F.col("ds") == F.lit(w.as_of))
        r = q.select(F.explode_outer("reasons").alias("reason")) if "reasons" in q.columns else q.select("reason")
        tables.append({"table": name, "rows": q.count(), "note": ""})
        reasons += [
            {"table": name, "reason": x.reason, "rows": int(x.count)}
            for x in r.groupBy("reason").count().toPandas().itertuples()
        ]
    try:
        ingest = runs.latest_succeeded(w.runs)
        ingest = ingest[ingest["job"] == "ingest"]
        counts = dict(ingest.iloc[0]["row_counts"]) if len(ingest) else None
    except Missing:
        counts = None
    return quarantine.quarantine_section(
        pd.DataFrame(tables), pd.DataFrame(reasons, columns=["table", "reason", "rows"]), counts, w.as_of
    )


SECTIONS_READ = (
    ("Runs", _runs),
    ("Lineage", _lineage),
    ("Item-to-item quality", _quality),
    ("Neighbor examples", _neighbors),
    ("Embedding maps", _maps),
    ("Semantic IDs", _sids),
    ("GBDT", _gbdt),
    ("Quarantine", _quarantine),
)
SECTIONS = tuple(title for title, _ in SECTIONS_READ)


class ReportJob(Job[ReportParams]):
    name = "report"
    Params = ReportParams
    description = (
        "One HTML report (and its PNGs) for the date: runs, lineage, i2i quality, neighbors, "
        "embedding maps, semantic IDs, GBDT, quarantine."
    )
    outputs = ("report_index",)
    inputs = (
        RUNS_TABLE,
        "events_clean",
        "items",
        "similarity_metrics",
        "item_similarity",
        "graph_embedding_metrics",
        "graph_embeddings",
        "alignment_metrics",
        "aligned_embeddings",
        "semantic_ids",
        "sid_metrics",
        "gbdt_models",
        "gbdt_metrics",
        "training_samples",
        *QUARANTINES,
    )

    def run(self, ctx: RunContext[ReportParams]) -> None:
        p = ctx.params
        folder = p.output_dir or ctx.warehouse.arrow_path("_reports", "report", ctx.as_of.isoformat())
        out = ReportFolder(folder)
        w = Warehouse(ctx, p)
        body, missing, images = [], [], 0
        for title, read in SECTIONS_READ:
            try:
                rendered = read(w)
            except Missing as e:
                missing.append(title)
                body.append(section(title, missing_section(ctx.as_of, e)))
                continue
            for name, fig in rendered.figures:
                out.put_figure(name, fig)
            images += len(rendered.figures)
            body.append(section(title, rendered.html))
        html = page(ctx.as_of, ctx.warehouse.root, ctx.run_id, list(SECTIONS), body).encode()
        out.put("index.html", html)
        ctx.row_counts.update(
            {"sections": len(SECTIONS) - len(missing), "missing_sections": len(missing), "images": images}
        )
        ctx.notes["report"] = f"{folder}/index.html"
        row = (ctx.run_id, f"{folder}/index.html", list(SECTIONS), missing, images, len(html))
        ctx.write(ctx.spark.createDataFrame([row], INDEX_SCHEMA).withColumn("ds", F.lit(ctx.as_of)), "report_index")


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("report")
