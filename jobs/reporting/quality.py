"""Item-to-item quality: Swing/ItemCF HitRate@K beside popularity, graph embeddings' next item and cold
items, LightGCN's user-to-item Recall/NDCG beside its baselines, content embeddings before and after
alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfactory.jobs.reporting.html import Missing, Rendered, table
from recfactory.jobs.runtime.reports import pyplot


def _by_k(df: pd.DataFrame, index, value: str, label: str) -> pd.DataFrame:
    tab = df.pivot_table(index=index, columns="k", values=value)
    tab.columns = [f"{label}@{k}" for k in tab.columns]
    return tab.reset_index()


def quality_section(
    similarity: pd.DataFrame, graph: pd.DataFrame | Missing, alignment: pd.DataFrame | Missing
) -> Rendered:
    """``similarity``: similarity_metrics of the date (algo, k, hit_rate, coverage, users);
    ``graph``: graph_embedding_metrics (method, split, k, hit_rate, pairs; ndcg for the u2i split); ``alignment``:
    alignment_metrics (split, space, k, recall); either of the last two may be Missing."""
    plt = pyplot()
    sim = similarity
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
    out = Rendered().add(
        f"<p>Each user's last interaction held out ({users:,} users); an algorithm hits when the held-out "
        "item is among the top-K neighbors of the user's earlier items.</p>"
    )
    out.figure("i2i_hit_rate.png", fig, "HitRate@K per algorithm").add(table(wide.reset_index()))
    if isinstance(graph, Missing):
        out.missing(graph)
    else:
        nxt = graph[graph["split"] == "next_item"]
        pairs = int(nxt["pairs"].max()) if len(nxt) else 0
        out.add(
            f"<h3>Graph embeddings: next item in session ({pairs:,} held-out transitions)</h3>",
            table(_by_k(nxt, "method", "hit_rate", "HR")),
        )
        u2i = graph[graph["split"] == "u2i"]
        if len(u2i):
            users = int(u2i["pairs"].max())
            tab = _by_k(u2i, "method", "hit_rate", "Recall").merge(_by_k(u2i, "method", "ndcg", "NDCG"), on="method")
            out.add(
                f"<h3>User to item: LightGCN beside popularity and ItemCF ({users:,} users' last positive "
                "held out, seen items filtered)</h3>",
                table(tab),
            )
        cold = graph[graph["split"] == "cold_item"]
        if len(cold):
            out.add(
                "<h3>Graph embeddings: items held out of the graph (cold start; random baseline)</h3>",
                table(_by_k(cold, "method", "hit_rate", "HR")),
            )
    if isinstance(alignment, Missing):
        out.missing(alignment)
    else:
        out.add(
            "<h3>Content embeddings before and after alignment to behaviour (QARM)</h3>",
            table(_by_k(alignment, ["split", "space"], "recall", "recall")),
        )
    return out
