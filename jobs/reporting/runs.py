"""Runs and Lineage: the date's attempts per job and every table version they read and wrote."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from recfactory.jobs.reporting.html import Rendered, table
from recfactory.jobs.runtime.reports import pyplot


def latest_succeeded(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest succeeded run per job, in start order (``runs`` sorted by start)."""
    ok = runs[runs["status"] == "succeeded"]
    return ok.drop_duplicates("job", keep="last").sort_values("started_at", kind="stable").reset_index(drop=True)


def _listed(x) -> list:
    return list(x) if x is not None else []


def runs_section(runs: pd.DataFrame, as_of: dt.date) -> Rendered:
    """``runs``: the date's runs of the jobs (run_id, job, status, started_at, duration_s, outputs,
    error), in start order."""
    latest = latest_succeeded(runs)
    attempts = runs.groupby("job").size()
    failed = runs[runs["status"] != "succeeded"]
    rows = []
    for r in latest.itertuples():
        outs = _listed(r.outputs)
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
    tab = pd.DataFrame(rows, columns=["job", "run", "started (UTC)", "seconds", "attempts", "rows written", "tables"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(tab) + 1.2))
    ax.barh(tab["job"][::-1], tab["seconds"][::-1], color="#4c72b0")
    for y, v in enumerate(tab["seconds"][::-1]):
        ax.text(v, y, f" {v:.0f}s", va="center", fontsize=8)
    ax.set(xlabel="seconds (latest succeeded run)", title=f"stage durations, {as_of}")
    total = float(tab["seconds"].sum())
    out = Rendered().add(
        f"<p>{len(tab)} jobs succeeded for {as_of}, {total:,.0f} s in all; "
        f"{len(runs)} attempts recorded in <code>_runs</code>, {len(failed)} not succeeded.</p>"
    )
    out.figure("runs_durations.png", fig, "seconds per stage").add(table(tab, 1))
    if len(failed):
        f = failed[["job", "run_id", "status", "error"]].assign(error=failed["error"].fillna("").str[:200])
        out.add("<h3>Attempts that did not succeed</h3>", table(f))
    return out


def layered_layout(g) -> dict:
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


def _read_node(i: dict) -> str:
    return (
        f"{i['name']}\nv{i['version']}" if i["version"] is not None else f"{i['name'].split(':')[-1]}\n({i['format']})"
    )


def lineage_section(runs: pd.DataFrame, skip: str) -> Rendered:
    """The graph of table versions → job → versions of the latest succeeded run per job (inputs named
    ``skip``, the run log every job reads, left out), and the same as a table."""
    import networkx as nx

    g = nx.DiGraph()
    rows = []
    for r in latest_succeeded(runs).itertuples():
        ins = [i for i in _listed(r.inputs) if i["name"] != skip]
        outs = _listed(r.outputs)
        g.add_node(r.job, kind="job")
        for i in ins:
            g.add_node(_read_node(i), kind="table")
            g.add_edge(_read_node(i), r.job)
        for o in outs:
            node = f"{o['name']}\nv{o['version']}"
            g.add_node(node, kind="table")
            g.add_edge(r.job, node)
        read = {
            f"{i['name']}@{i['version']}" if i["version"] is not None else f"{i['name']} ({i['format']})" for i in ins
        }
        rows.append(
            {
                "job": r.job,
                "run": r.run_id[:12],
                "read (table @ version)": ", ".join(sorted(read)),
                "wrote (table @ version)": ", ".join(f"{o['name']}@{o['version']}" for o in outs),
            }
        )
    pos = layered_layout(g)
    plt = pyplot()
    layers = 1 + int(max(y for _, y in pos.values()))
    widest = 1 + int(max(x for x, _ in pos.values()))
    fig, ax = plt.subplots(figsize=(max(8, 1.45 * widest), max(5, 0.75 * layers)))
    jobs = [n for n in g if g.nodes[n]["kind"] == "job"]
    tables = [n for n in g if g.nodes[n]["kind"] == "table"]
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=7, width=0.5, edge_color="#999999", node_size=600)
    box = {"boxstyle": "round,pad=0.2", "fc": "#eef3fb", "ec": "#8aa6d1", "lw": 0.5}
    nx.draw_networkx_labels(g, pos, {n: n for n in tables}, ax=ax, font_size=6, bbox=box)
    box = {"boxstyle": "square,pad=0.3", "fc": "#fde9c9", "ec": "#d08c2c", "lw": 0.6}
    nx.draw_networkx_labels(g, pos, {n: n for n in jobs}, ax=ax, font_size=7, font_weight="bold", bbox=box)
    ax.set_title("lineage: table versions read (above) → job → versions written (below)")
    ax.invert_yaxis()
    ax.axis("off")
    out = Rendered().add(
        "<p>Every table version the date's jobs read and wrote (the latest succeeded run per job, from "
        "their <code>_runs</code> rows): rerunning a job with the versions below reproduces its output.</p>"
    )
    return out.figure("lineage.png", fig, "lineage graph of tables and versions").add(table(pd.DataFrame(rows)))
