"""Neighbor examples: the most-interacted items with their nearest neighbors per source, by title."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from recfactory.jobs.reporting.html import Rendered, esc


def nearest_by_cosine(queries: pd.DataFrame, rows, k: int):
    """(query item, item, cosine) of the k nearest rows to each query (``queries``: item_id, vector),
    over an iterable of rows with item_id and vector (one Spark partition at a time: a heap per query)."""
    import heapq

    vecs = np.stack(queries["vector"].to_numpy()).astype(np.float64)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    qs = dict(zip(queries["item_id"], vecs, strict=True))
    heaps: dict[str, list] = {i: [] for i in qs}
    for r in rows:
        v = np.asarray(r["vector"], dtype=np.float64)
        v /= max(float(np.linalg.norm(v)), 1e-12)
        for i, qv in qs.items():
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


def top_k_lists(candidates: list[tuple[str, str, float]], k: int) -> dict[str, list[str]]:
    """Per query, the k best candidates (score descending, ties by item id) of ``nearest_by_cosine``'s
    partial results."""
    df = pd.DataFrame(candidates, columns=["q", "item_id", "score"]).sort_values(
        ["q", "score", "item_id"], ascending=[True, False, True]
    )
    return {i: g["item_id"].head(k).tolist() for i, g in df.groupby("q")}


def neighbors_section(
    top: pd.DataFrame,
    lists: dict[tuple[str, str], list[str]],
    columns: dict[str, str],
    titles: pd.Series,
    categories: pd.Series,
    as_of: dt.date,
    k: int,
) -> Rendered:
    """``top``: the example items (item_id, users), most-interacted first; ``lists``: (source, item) →
    neighbor ids; ``columns``: source → column header; ``titles``/``categories``: item_id → label."""

    def name(i):
        return titles.get(i, i)

    out = Rendered().add(
        f"<p>The {len(top)} items with the most distinct users up to {as_of}, and their top {k} neighbors per source.</p>"
    )
    head = "".join(f"<th>{esc(c)}</th>" for c in columns.values())
    for i, users in zip(top["item_id"], top["users"], strict=True):
        cells = {a: lists.get((a, i), []) for a in columns}
        n = max((len(v) for v in cells.values()), default=0)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(name(v[r])) if r < len(v) else ''}</td>" for v in cells.values()) + "</tr>"
            for r in range(n)
        )
        out.add(
            f"<h3>{esc(name(i))} <small>(item {esc(i)}, {int(users):,} users, "
            f"{esc(categories.get(i, '(none)'))})</small></h3>"
            f'<table class="nb"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
    return out
