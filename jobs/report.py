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
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_sample, uniform
from recfactory.jobs.runtime.inputs import MissingInput, date_partition, latest_partition
from recfactory.jobs.runtime.job import RUNS_TABLE, Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams, Restricted
from recfactory.jobs.runtime.reports import ReportFolder, calibration_figure, importance_figure, pyplot

SECTIONS = (
    "Runs",
    "Lineage",
    "Item-to-item quality",
    "Neighbor examples",
    "Embedding maps",
    "Semantic IDs",
    "GBDT",
    "Quarantine",
)
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


def _esc(x) -> str:
    return html.escape(str(x))


def _table(df: pd.DataFrame, floats: int = 4) -> str:
    """A pandas frame as an HTML table (escaped; floats rounded, float columns holding only whole
    numbers as integers; thousands separators)."""
    whole = {
        c
        for c in df.columns
        if df[c].dtype.kind == "f" and df[c].notna().any() and np.all(np.mod(df[c].dropna().to_numpy(), 1) == 0)
    }

    def fmt(v, col):
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                return "–"
            return f"{v:,.0f}" if col in whole else f"{v:,.{floats}f}"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v:,}"
        return _esc(v)

    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v, c)}</td>" for v, c in zip(row, df.columns, strict=True)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}"><figcaption>{_esc(alt)}</figcaption></figure>'


def _layered_layout(g) -> dict:
    """Positions for a DAG drawn top to bottom: y = topological generation, x = rank within it, ordered
    by the barycenter of the neighbors in the adjacent layers (a few sweeps of the Sugiyama heuristic,
    which keeps edge crossings down; networkx's multipartite layout keeps insertion order)."""
    import networkx as nx

    g = g.copy()
    while not nx.is_directed_acyclic_graph(g):  # a job that read a version it wrote: lay it out anyway
        g.remove_edge(*nx.find_cycle(g)[-1][:2])
    layers = [sorted(nodes) for nodes in nx.topological_generations(g)]
    rank = {n: i for layer in layers for i, n in enumerate(layer)}
    for sweep in range(8):
        order = range(1, len(layers)) if sweep % 2 == 0 else range(len(layers) - 2, -1, -1)
        for k in order:
            nbrs = g.predecessors if sweep % 2 == 0 else g.successors

            def key(n, nbrs=nbrs):
                r = [rank[m] for m in nbrs(n)]
                return (sum(r) / len(r) if r else rank[n], n)

            layers[k].sort(key=key)
            rank.update({n: i for i, n in enumerate(layers[k])})
    widest = max(len(layer) for layer in layers)
    # each layer spread over the whole width: the few, wide job labels get the room
    return {n: ((i + 0.5) * widest / len(layer), y) for y, layer in enumerate(layers) for i, n in enumerate(layer)}


class Missing(Exception):
    """A section's input is not in the warehouse for the date: the message says which job builds it."""


class ReportJob(Job):
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

    def run(self, ctx: RunContext) -> None:
        p: ReportParams = ctx.params
        folder = p.output_dir or ctx.warehouse.arrow_path("_reports", "report", ctx.as_of.isoformat())
        self.out = ReportFolder(folder)
        self.ctx, self.p = ctx, p
        self.images: list[str] = []
        self._titles: pd.Series | None = None
        self._tables: dict = {}
        body, missing = [], []
        for title in SECTIONS:
            method = getattr(self, "_" + title.lower().replace("-", "_").replace(" ", "_"))
            anchor = title.lower().replace(" ", "-")
            try:
                content = method()
            except Missing as e:
                missing.append(title)
                content = f'<p class="missing">Not in this warehouse for {ctx.as_of}: {_esc(e)}</p>'
            body.append(f'<section id="{anchor}"><h2>{_esc(title)}</h2>{content}</section>')
        page = self._page(body)
        self.out.put("index.html", page.encode())
        ctx.row_counts.update(
            {"sections": len(SECTIONS) - len(missing), "missing_sections": len(missing), "images": len(self.images)}
        )
        ctx.notes["report"] = f"{folder}/index.html"
        row = (ctx.run_id, f"{folder}/index.html", list(SECTIONS), missing, len(self.images), len(page.encode()))
        ctx.write(ctx.spark.createDataFrame([row], INDEX_SCHEMA).withColumn("ds", F.lit(ctx.as_of)), "report_index")

    # ---------------------------------------------------------------- helpers
    def _load(self, name: str):
        """The table, read (and recorded as an input) once per report: sections share the pinned version."""
        if name not in self._tables:
            self._tables[name] = self.ctx.read(name)
        return self._tables[name]

    def _read(self, name: str, job: str, latest: bool = False):
        """The table's partition of the date (or, with latest, the latest one at or before it), ds kept
        out; Missing naming the job when there is none."""
        if not self.ctx.has(name):
            raise Missing(f"{name} does not exist (run {job})")
        try:
            return (latest_partition if latest else date_partition)(self.ctx, name, job, read=self._load)
        except MissingInput as e:
            raise Missing(str(e)) from None

    def _figure(self, name: str, fig, alt: str) -> str:
        self.images.append(self.out.put_figure(name, fig))
        return _img(name, alt)

    def titles(self) -> pd.Series:
        """item_id → "title (category)" from the latest catalog snapshot (item id when there is none)."""
        if self._titles is None:
            items = self._read("items", "ingest", latest=True).select("item_id", "title", "category").toPandas()
            label = items["title"].fillna(items["item_id"]).astype(str)
            self._titles = pd.Series(label.to_numpy(), index=items["item_id"].to_numpy())
            self._categories = pd.Series(
                items["category"].fillna("(none)").astype(str).to_numpy(), index=items["item_id"].to_numpy()
            )
        return self._titles

    def _runs_of_date(self) -> pd.DataFrame:
        """The date's runs of the other jobs, in start order (collected once; three sections use them)."""
        if getattr(self, "_runs_pdf", None) is None:
            self._runs_pdf = self._collect_runs()
        return self._runs_pdf

    def _collect_runs(self) -> pd.DataFrame:
        if not self.ctx.has(RUNS_TABLE):
            raise Missing(f"{RUNS_TABLE} does not exist (no job ran on this warehouse)")
        runs = (
            self._load(RUNS_TABLE)
            .where((F.col("as_of") == F.lit(self.ctx.as_of)) & (F.col("job") != self.name))
            .select("run_id", "job", "status", "started_at", "duration_s", "inputs", "outputs", "row_counts", "error")
        )
        pdf = runs.toPandas()
        if not len(pdf):
            raise Missing(f"{RUNS_TABLE} has no run for {self.ctx.as_of}")
        return pdf.sort_values("started_at", kind="stable").reset_index(drop=True)

    def _latest_runs(self) -> pd.DataFrame:
        """The latest succeeded run per job of the date, in start order."""
        runs = self._runs_of_date()
        ok = runs[runs["status"] == "succeeded"]
        return ok.drop_duplicates("job", keep="last").sort_values("started_at", kind="stable").reset_index(drop=True)

    # ---------------------------------------------------------------- sections
    def _runs(self) -> str:
        runs = self._runs_of_date()
        latest = self._latest_runs()
        attempts = runs.groupby("job").size()
        failed = runs[runs["status"] != "succeeded"]
        rows = []
        for r in latest.itertuples():
            outs = list(r.outputs) if r.outputs is not None else []
            rows.append(
                {
                    "job": r.job,
                    "run": r.run_id[:12],
                    "started (UTC)": str(r.started_at)[:19],
                    "seconds": float(r.duration_s),
                    "attempts": int(attempts[r.job]),
                    "rows written": int(sum(int(o["rows"]) for o in outs)),
                    "tables": ", ".join(f"{o['name']} ({int(o['rows']):,})" for o in outs),
                }
            )
        tab = pd.DataFrame(rows)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 0.32 * len(tab) + 1.2))
        ax.barh(tab["job"][::-1], tab["seconds"][::-1], color="#4c72b0")
        for y, v in enumerate(tab["seconds"][::-1]):
            ax.text(v, y, f" {v:.0f}s", va="center", fontsize=8)
        ax.set(xlabel="seconds (latest succeeded run)", title=f"stage durations, {self.ctx.as_of}")
        total = float(tab["seconds"].sum())
        out = [
            f"<p>{len(tab)} jobs succeeded for {self.ctx.as_of}, {total:,.0f} s in all; "
            f"{len(runs)} attempts recorded in <code>_runs</code>, {len(failed)} not succeeded.</p>",
            self._figure("runs_durations.png", fig, "seconds per stage"),
            _table(tab, 1),
        ]
        if len(failed):
            f = failed[["job", "run_id", "status", "error"]].assign(error=failed["error"].fillna("").str[:200])
            out += ["<h3>Attempts that did not succeed</h3>", _table(f)]
        return "".join(out)

    def _lineage(self) -> str:
        import networkx as nx

        latest = self._latest_runs()
        g = nx.DiGraph()
        rows = []
        for r in latest.itertuples():
            ins = [i for i in (r.inputs if r.inputs is not None else []) if i["name"] != RUNS_TABLE]
            outs = list(r.outputs) if r.outputs is not None else []
            g.add_node(r.job, kind="job")
            for i in ins:
                node = (
                    f"{i['name']}\nv{i['version']}"
                    if i["version"] is not None
                    else f"{i['name'].split(':')[-1]}\n({i['format']})"
                )
                g.add_node(node, kind="table")
                g.add_edge(node, r.job)
            for o in outs:
                node = f"{o['name']}\nv{o['version']}"
                g.add_node(node, kind="table")
                g.add_edge(r.job, node)
            rows.append(
                {
                    "job": r.job,
                    "run": r.run_id[:12],
                    "read (table @ version)": ", ".join(
                        sorted(
                            {
                                f"{i['name']}@{i['version']}"
                                if i["version"] is not None
                                else f"{i['name']} ({i['format']})"
                                for i in ins
                            }
                        )
                    ),
                    "wrote (table @ version)": ", ".join(f"{o['name']}@{o['version']}" for o in outs),
                }
            )
        pos = _layered_layout(g)
        plt = pyplot()
        layers = 1 + int(max(y for _, y in pos.values()))
        widest = 1 + int(max(x for x, _ in pos.values()))
        fig, ax = plt.subplots(figsize=(max(8, 1.45 * widest), max(5, 0.75 * layers)))
        jobs = [n for n in g if g.nodes[n]["kind"] == "job"]
        tables = [n for n in g if g.nodes[n]["kind"] == "table"]
        nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=7, width=0.5, edge_color="#999999", node_size=600)
        nx.draw_networkx_labels(
            g,
            pos,
            {n: n for n in tables},
            ax=ax,
            font_size=6,
            bbox={"boxstyle": "round,pad=0.2", "fc": "#eef3fb", "ec": "#8aa6d1", "lw": 0.5},
        )
        nx.draw_networkx_labels(
            g,
            pos,
            {n: n for n in jobs},
            ax=ax,
            font_size=7,
            font_weight="bold",
            bbox={"boxstyle": "square,pad=0.3", "fc": "#fde9c9", "ec": "#d08c2c", "lw": 0.6},
        )
        ax.set_title("lineage: table versions read (above) → job → versions written (below)")
        ax.invert_yaxis()
        ax.axis("off")
        return (
            "<p>Every table version the date's jobs read and wrote (the latest succeeded run per job, from "
            "their <code>_runs</code> rows): rerunning a job with the versions below reproduces its output.</p>"
            + self._figure("lineage.png", fig, "lineage graph of tables and versions")
            + _table(pd.DataFrame(rows))
        )

    def _item_to_item_quality(self) -> str:
        plt = pyplot()
        sim = self._read("similarity_metrics", "build_similarity").toPandas()
        out = []
        ks = sorted(sim["k"].unique())
        algos = sorted(sim["algo"].unique(), key=lambda a: (a == "popularity", a))
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.8 / len(ks)
        for j, k in enumerate(ks):
            s = sim[sim["k"] == k].set_index("algo").reindex(algos)
            bars = ax.bar(np.arange(len(algos)) + j * width, s["hit_rate"], width, label=f"HR@{k}")
            for b, a in zip(bars, algos, strict=True):
                if a == "popularity":
                    b.set_hatch("//")
        ax.set_xticks(np.arange(len(algos)) + width * (len(ks) - 1) / 2, algos)
        ax.set(ylabel="HitRate", title="Swing / ItemCF, leave-last-out (hatched: popularity baseline)")
        ax.legend()
        users = int(sim["users"].max())
        wide = sim.pivot_table(index="algo", columns="k", values=["hit_rate", "coverage"]).reindex(algos)
        wide.columns = [f"{m.replace('hit_rate', 'HR')}@{k}" for m, k in wide.columns]
        pop = sim[sim["algo"] == "popularity"].set_index("k")["hit_rate"]
        for k in ks:
            if k in pop.index and pop[k] > 0:
                wide[f"HR@{k} / popularity"] = wide[f"HR@{k}"] / pop[k]
        out += [
            f"<p>Each user's last interaction held out ({users:,} users); an algorithm hits when the held-out "
            "item is among the top-K neighbors of the user's earlier items.</p>",
            self._figure("i2i_hit_rate.png", fig, "HitRate@K per algorithm"),
            _table(wide.reset_index()),
        ]
        try:
            gm = self._read("graph_embedding_metrics", "build_graph_embeddings").toPandas()
            nxt = gm[gm["split"] == "next_item"]
            tab = nxt.pivot_table(index="method", columns="k", values="hit_rate")
            tab.columns = [f"HR@{k}" for k in tab.columns]
            pairs = int(nxt["pairs"].max()) if len(nxt) else 0
            out += [
                f"<h3>Graph embeddings: next item in session ({pairs:,} held-out transitions)</h3>",
                _table(tab.reset_index()),
            ]
            cold = gm[gm["split"] == "cold_item"]
            if len(cold):
                tab = cold.pivot_table(index="method", columns="k", values="hit_rate")
                tab.columns = [f"HR@{k}" for k in tab.columns]
                out += [
                    "<h3>Graph embeddings: items held out of the graph (cold start; random baseline)</h3>",
                    _table(tab.reset_index()),
                ]
        except Missing as e:
            out.append(f'<p class="missing">{_esc(e)}</p>')
        try:
            am = self._read("alignment_metrics", "align_embeddings").toPandas()
            tab = am.pivot_table(index=["split", "space"], columns="k", values="recall")
            tab.columns = [f"recall@{k}" for k in tab.columns]
            out += [
                "<h3>Content embeddings before and after alignment to behaviour (QARM)</h3>",
                _table(tab.reset_index()),
            ]
        except Missing as e:
            out.append(f'<p class="missing">{_esc(e)}</p>')
        return "".join(out)

    def _example_items(self) -> list[str]:
        """The most-interacted items (distinct users, ties by id) up to the as-of."""
        events = self._load("events_clean").where(F.col("ds") <= F.lit(self.ctx.as_of))
        top = (
            events.groupBy("item_id")
            .agg(F.countDistinct("user_id").alias("users"))
            .orderBy(F.desc("users"), "item_id")
            .limit(self.p.example_items)
            .toPandas()
        )
        if not len(top):
            raise Missing("events_clean has no events up to the date (run ingest)")
        self._example_users = dict(zip(top["item_id"], top["users"], strict=True))
        return top["item_id"].tolist()

    def _neighbor_examples(self) -> str:
        if not self.ctx.has("events_clean"):
            raise Missing("events_clean does not exist (run ingest)")
        titles = self.titles()
        items = self._example_items()
        sim = self._read("item_similarity", "build_similarity")
        algos = [a for a in self.p.neighbor_algos]
        got = (
            sim.where(F.col("item_id").isin(items) & F.col("algo").isin(algos))
            .select("algo", "item_id", F.slice("neighbors", 1, self.p.neighbors).alias("nb"))
            .toPandas()
        )
        lists = {(r.algo, r.item_id): [n["item_id"] for n in r.nb] for r in got.itertuples()}
        columns = {a: a for a in algos}
        try:
            aligned = self._aligned_neighbors(items)
            lists.update({("aligned", i): v for i, v in aligned.items()})
            columns["aligned"] = "aligned embeddings (cosine)"
        except Missing:
            pass
        name = lambda i: titles.get(i, i)  # noqa: E731
        out = [
            f"<p>The {len(items)} items with the most distinct users up to {self.ctx.as_of}, and their top "
            f"{self.p.neighbors} neighbors per source.</p>"
        ]
        for i in items:
            head = "".join(f"<th>{_esc(c)}</th>" for c in columns.values())
            n = max((len(lists.get((a, i), [])) for a in columns), default=0)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td>{_esc(name(lists[(a, i)][r])) if r < len(lists.get((a, i), [])) else ''}</td>"
                    for a in columns
                )
                + "</tr>"
                for r in range(n)
            )
            out.append(
                f"<h3>{_esc(name(i))} <small>(item {_esc(i)}, {self._example_users[i]:,} users, "
                f"{_esc(self._categories.get(i, '(none)'))})</small></h3>"
                f'<table class="nb"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            )
        return "".join(out)

    def _aligned_neighbors(self, items: list[str]) -> dict[str, list[str]]:
        """Nearest items by cosine in the aligned space (Spark: one dot product per item and query)."""
        emb = self._read("aligned_embeddings", "align_embeddings").select("item_id", "vector")
        q = emb.where(F.col("item_id").isin(items)).toPandas()
        if not len(q):
            return {}
        vecs = np.stack(q["vector"].to_numpy()).astype(np.float64)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        queries = dict(zip(q["item_id"], vecs.tolist(), strict=True))
        k = self.p.neighbors

        def top(it):
            import heapq

            heaps = {i: [] for i in queries}
            for r in it:
                v = np.asarray(r["vector"], dtype=np.float64)
                v /= max(np.linalg.norm(v), 1e-12)
                for i, qv in queries.items():
                    if r["item_id"] == i:
                        continue
                    s = float(np.dot(qv, v))
                    h = heaps[i]
                    if len(h) < k:
                        heapq.heappush(h, (s, r["item_id"]))
                    elif (s, r["item_id"]) > h[0]:
                        heapq.heapreplace(h, (s, r["item_id"]))
            for i, h in heaps.items():
                for s, j in h:
                    yield (i, j, s)

        cand = emb.rdd.mapPartitions(top).collect()
        df = pd.DataFrame(cand, columns=["q", "item_id", "score"]).sort_values(
            ["q", "score", "item_id"], ascending=[True, False, True]
        )
        return {i: g["item_id"].head(k).tolist() for i, g in df.groupby("q")}

    def _sample(self, df, n: int):
        """A seeded sample of at most n rows by the smallest hash of item_id (same whatever the partitioning)."""
        ids = df.select("item_id").distinct().toPandas()["item_id"].to_numpy()
        if len(ids) > n:
            ids = ids[seeded_sample(ids, self.p.seed, "report-map", n)]
        return df.where(F.col("item_id").isin(ids.tolist()))

    def _project(self, x: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        if self.p.projection == "pca" or len(x) < 10:
            return PCA(n_components=2, random_state=self.p.seed).fit_transform(x)
        from sklearn.manifold import TSNE

        if x.shape[1] > 50:
            x = PCA(n_components=50, random_state=self.p.seed).fit_transform(x)
        return TSNE(
            n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=self.p.seed, max_iter=750
        ).fit_transform(x)

    def _embedding_maps(self) -> str:
        self.titles()
        cats = self._categories
        maps = []
        try:
            ge = self._read("graph_embeddings", "build_graph_embeddings")
            for m in sorted(r[0] for r in ge.select("method").distinct().collect()):
                # cold-start items a walk method cannot embed carry an empty vector: not drawn
                maps.append(
                    (
                        f"graph: {m}",
                        ge.where((F.col("method") == m) & (F.size("vector") > 0)).select("item_id", "vector"),
                    )
                )
        except Missing:
            pass
        try:
            maps.append(
                (
                    "aligned (content → behaviour)",
                    self._read("aligned_embeddings", "align_embeddings").select("item_id", "vector"),
                )
            )
        except Missing:
            pass
        if not maps:
            raise Missing(
                "neither graph_embeddings nor aligned_embeddings (run build_graph_embeddings, align_embeddings)"
            )
        top = cats.value_counts().index[: self.p.map_categories].tolist()
        palette = pyplot().get_cmap("tab10" if len(top) <= 10 else "tab20")
        colors = {c: palette(i) for i, c in enumerate(top)}
        plt = pyplot()
        cols = min(2, len(maps))
        rows = -(-len(maps) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5.2 * rows), squeeze=False)
        sizes = []
        for ax, (title, df) in zip(axes.flat, maps, strict=False):  # the grid may have a spare axis
            pdf = self._sample(df, self.p.map_sample).toPandas().sort_values("item_id")
            xy = self._project(np.stack(pdf["vector"].to_numpy()).astype(np.float32))
            c = pdf["item_id"].map(cats).fillna("(none)")
            other = ~c.isin(top)
            ax.scatter(xy[other.to_numpy(), 0], xy[other.to_numpy(), 1], s=4, c="#cccccc", label="other")
            for cat in top:
                m = (c == cat).to_numpy()
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], s=5, color=colors[cat], label=cat)
            ax.set_title(f"{title} ({len(pdf):,} items)")
            ax.set_xticks([])
            ax.set_yticks([])
            sizes.append(len(pdf))
        for ax in list(axes.flat)[len(maps) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), markerscale=3, frameon=False)
        fig.subplots_adjust(bottom=0.12)
        how = "t-SNE (after PCA to 50 dimensions)" if self.p.projection == "tsne" else "PCA"
        return (
            f"<p>{how} of L2-normalised vectors; a seeded sample of at most {self.p.map_sample:,} items per "
            f"map; the {len(top)} most frequent categories coloured.</p>"
            + self._figure("embedding_maps.png", fig, "embedding maps coloured by category")
        )

    def _semantic_ids(self) -> str:
        plt = pyplot()
        sid = self._read("semantic_ids", "build_sids").where("in_catalog")
        met = self._read("sid_metrics", "build_sids").toPandas()
        gen = str(met["generation"].max())  # one generation per date
        met = met[met["generation"] == gen]
        levels = met[met["level"] > 0].sort_values("level")
        summary = met[met["level"] == 0].iloc[0] if (met["level"] == 0).any() else None
        n_levels = int(levels["level"].max())
        counts = sid.select(F.posexplode("rq_codes").alias("pos", "code")).groupBy("pos", "code").count().toPandas()
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
        ax = axes[0]
        for lv in range(n_levels):
            c = np.sort(counts.loc[counts["pos"] == lv, "count"].to_numpy())[::-1]
            ax.plot(np.arange(1, len(c) + 1), c, label=f"level {lv + 1}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="code rank",
            ylabel="items per code",
            title="items per code per level (RQ codes)",
        )
        ax.legend()
        ax = axes[1]
        size = levels["codebook_size"].to_numpy()
        eff = levels["perplexity"].to_numpy() / size
        used = levels["utilization"].to_numpy()
        y = -levels["level"].to_numpy()
        ax.barh(y, used, left=-used / 2, color="#dddddd", label="codes used")
        ax.barh(y, eff, left=-eff / 2, color="#4c72b0", label="effective codes (perplexity)")
        for yy, e, s in zip(y, eff, size, strict=True):
            ax.text(
                0,
                yy,
                f"{e * s:,.0f} / {s:,.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if e > 0.3 else "black",
            )
        ax.set(
            yticks=y,
            yticklabels=[f"level {int(v)}" for v in levels["level"]],
            xlim=(-0.55, 0.55),
            xticks=[],
            title="hourglass: share of each codebook in effective use",
        )
        ax.legend(loc="lower center", fontsize=7, bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
        ax = axes[2]
        if summary is not None and np.isfinite(summary["collision_rate_before"]):
            vals = [
                summary["collision_rate_before"],
                summary["collision_rate_after"],
                summary["sid_gini_before"],
                summary["sid_gini_after"],
            ]
            bars = ax.bar(
                ["collision\nbefore", "collision\nafter", "SID Gini\nbefore", "SID Gini\nafter"],
                vals,
                color=["#c44e52", "#55a868", "#c44e52", "#55a868"],
            )
            for b, v in zip(bars, vals, strict=True):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
            ax.set(title="collisions and SID Gini, before / after handling", ylim=(0, max(0.01, 1.15 * max(vals))))
        else:
            ax.text(0.5, 0.5, "no collision metrics for this generation", ha="center")
            ax.axis("off")
        per_level = levels[
            [
                "level",
                "codebook_size",
                "utilization",
                "perplexity",
                "gini",
                "top_token_share",
                "max_code_size",
                "relative_recon_error",
                "prefix_recall",
                "prefix_recall_random",
            ]
        ]
        out = [
            f"<p>Generation {gen}: {int(levels['items'].max()):,} items in the catalog, {n_levels} levels. The "
            "hourglass chart shows how much of each codebook is in effective use (perplexity of the code "
            "distribution / codebook size): a narrow middle level is the hourglass effect. The last level's codes are "
            "capped per prefix (at most a few items per last code among items sharing the earlier codes), so "
            "they concentrate on a few code values globally by design; what matters there is the collision "
            "rate.</p>",
            self._figure("sid_codes.png", fig, "semantic-ID code distribution, hourglass and collisions"),
            "<h3>Per level</h3>",
            _table(per_level),
        ]
        if summary is not None:
            keys = [
                "collision_rate_before",
                "collision_rate_after",
                "max_items_per_sid_before",
                "sid_gini_before",
                "sid_gini_after",
                "moved",
                "new_items",
                "kept_items",
                "removed_items",
                "relative_recon_error",
            ]
            s = pd.DataFrame({"metric": keys, "value": [float(summary[k]) for k in keys]})
            out += ["<h3>Whole SID</h3>", _table(s)]
        return "".join(out)

    def _gbdt(self) -> str:
        import lightgbm as lgb

        from recfactory.features.samples import recalibrate

        models = self._read("gbdt_models", "train_gbdt", latest=True).toPandas()
        model = models.sort_values("model_version").iloc[-1]
        met = self._load("gbdt_metrics").where(F.col("model_version") == model["model_version"]).toPandas()
        summary = json.loads(model["metrics"])
        run = self._train_run(model["model_version"])
        label = json.loads(run["params"]).get("label", "label_click") if run is not None else "label_click"
        trained_ds = run["as_of"] if run is not None else None
        names = list(model["feature_names"])
        overall = met[met["slice_column"].isna()][
            ["model", "rows", "positives", "auc", "ne", "rig", "calibration_ratio"]
        ]
        out = [
            f"<p>Model <code>{_esc(model['model_version'])}</code>: {len(names)} features; test metrics as "
            "published by <code>train_gbdt</code> (NE: normalized entropy, lower is better).</p>",
            _table(overall),
        ]
        sliced = met[met["slice_column"].notna()][
            ["slice_column", "slice_value", "rows", "auc", "ne", "calibration_ratio"]
        ]
        figs = []
        ds = trained_ds or self.ctx.as_of
        samples = self._load("training_samples").where((F.col("ds") == F.lit(ds)) & (F.col("split") == "test"))
        missing = [c for c in [*names, label] if c not in samples.columns]
        if missing:
            out.append(f'<p class="missing">training_samples of {ds} lacks {_esc(missing)}: no calibration curve.</p>')
        else:
            n = samples.count()
            if n > self.p.calibration_rows:
                keep = uniform(self.p.seed, F.col("sample_id").cast("string"), salt="calibration")
                samples = samples.where(keep < F.lit(self.p.calibration_rows / n))
            pdf = samples.select(*[F.col(c).cast("double") for c in names], F.col(label).cast("double")).toPandas()
            booster = lgb.Booster(model_str=model["model_text"])
            q = recalibrate(booster.predict(pdf[names].to_numpy()), float(summary.get("negative_rate", 1.0)))
            figs.append(
                self._figure(
                    "gbdt_calibration.png",
                    calibration_figure(
                        pdf[label].to_numpy(), {"gbdt": q}, f"calibration by decile, {len(pdf):,} test rows of {ds}"
                    ),
                    "GBDT calibration curve",
                )
            )
        figs.append(
            self._figure(
                "gbdt_importance.png",
                importance_figure(summary.get("importance_gain", {})),
                "GBDT feature importance (gain)",
            )
        )
        out.append('<div class="row">' + "".join(figs) + "</div>")
        if len(sliced):
            out += ["<h3>By slice (GBDT)</h3>", _table(sliced)]
        return "".join(out)

    def _train_run(self, model_version: str):
        """The _runs row of the train_gbdt run that published the model (its version ends in the run id's
        first 12 characters)."""
        suffix = model_version.rsplit("-", 1)[-1]
        runs = (
            self._load(RUNS_TABLE)
            .where(
                (F.col("job") == "train_gbdt") & (F.col("status") == "succeeded") & F.col("run_id").startswith(suffix)
            )
            .select("params", "as_of")
            .toPandas()
        )
        return None if not len(runs) else runs.iloc[0]

    def _quarantine(self) -> str:
        plt = pyplot()
        rows, reasons = [], []
        for name in QUARANTINES:
            if not self.ctx.has(name):
                rows.append({"table": name, "rows": None, "note": "not built"})
                continue
            q = self._load(name).where(F.col("ds") == F.lit(self.ctx.as_of))
            if "reasons" in q.columns:
                r = q.select(F.explode_outer("reasons").alias("reason"))
            else:
                r = q.select("reason")
            by = r.groupBy("reason").count().toPandas()
            total = q.count()
            rows.append({"table": name, "rows": total, "note": ""})
            for x in by.itertuples():
                reasons.append({"table": name, "reason": x.reason, "rows": int(x.count)})
        out = [
            "<p>Rows set aside with a reason instead of being dropped, for the date's partition.</p>",
            _table(pd.DataFrame(rows).fillna({"rows": 0})),
        ]
        try:
            ing = self._latest_runs()
            ing = ing[ing["job"] == "ingest"]
            if len(ing):
                rc = dict(ing.iloc[0]["row_counts"])
                keys = [
                    k
                    for k in (
                        "events_input",
                        "events_clean",
                        "events_quarantine",
                        "events_published",
                        "events_republished",
                        "events_already_published",
                        "events_backdated",
                        "items_input",
                        "items",
                        "items_not_yet_created",
                        "items_quarantine",
                    )
                    if k in rc
                ]
                out += [
                    "<h3>Ingest reconciliation</h3>",
                    _table(pd.DataFrame({"count": keys, "rows": [int(rc[k]) for k in keys]})),
                ]
                if {"events_input", "events_clean", "events_quarantine"} <= set(rc):
                    ok = rc["events_input"] == rc["events_clean"] + rc["events_quarantine"]
                    out.append(f"<p>events: input = clean + quarantined: <b>{'yes' if ok else 'NO'}</b></p>")
                if rc.get("events_backdated"):
                    out.append(
                        f"<p>{int(rc['events_backdated']):,} events published for dates before "
                        f"{self.ctx.as_of} (late arrivals or a history load): features already built "
                        "for those dates did not see them; rebuild them to include them.</p>"
                    )
        except Missing:
            pass
        if reasons:
            rs = pd.DataFrame(reasons).sort_values(["table", "rows"], ascending=[True, False])
            fig, ax = plt.subplots(figsize=(7, 0.3 * len(rs) + 1.2))
            labels = [f"{t}: {r}" for t, r in zip(rs["table"], rs["reason"], strict=True)]
            ax.barh(labels[::-1], rs["rows"].to_numpy()[::-1], color="#c44e52")
            ax.set(xlabel="rows", title="quarantine reasons")
            out += [self._figure("quarantine_reasons.png", fig, "quarantined rows by reason"), _table(rs)]
        else:
            out.append("<p>No row was quarantined for this date.</p>")
        return "".join(out)

    # ---------------------------------------------------------------- page
    def _page(self, body: list[str]) -> str:
        ctx = self.ctx
        nav = " · ".join(f'<a href="#{t.lower().replace(" ", "-")}">{_esc(t)}</a>' for t in SECTIONS)
        made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>recfactory report {ctx.as_of}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; color: #222; }}
header {{ border-bottom: 2px solid #4c72b0; margin-bottom: 8px; }}
h1 {{ margin: 18px 0 4px; }} h2 {{ border-bottom: 1px solid #ddd; padding-top: 18px; }}
nav {{ position: sticky; top: 0; background: #fff; padding: 6px 0; border-bottom: 1px solid #eee; z-index: 1; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f6fa; }} td {{ max-width: 520px; overflow-wrap: anywhere; }}
table.nb td {{ min-width: 160px; }}
figure {{ margin: 8px 0; display: inline-block; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 12px; color: #666; }} .row {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.missing {{ color: #a33; }} code {{ background: #f4f4f4; padding: 0 3px; }} small {{ color: #666; }}
</style></head><body>
<header><h1>recfactory report — {ctx.as_of}</h1>
<p>Warehouse <code>{_esc(ctx.warehouse.root)}</code> · report run <code>{ctx.run_id[:12]}</code> · made {made}</p>
</header><nav>{nav}</nav>
{"".join(body)}
</body></html>
"""


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("report")
