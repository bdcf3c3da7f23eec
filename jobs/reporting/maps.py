"""Embedding maps: item vectors in 2-D (t-SNE after PCA, or PCA), coloured by category."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from recfactory.jobs.reporting.html import Rendered
from recfactory.jobs.runtime.reports import pyplot


def project(x: np.ndarray, projection: Literal["tsne", "pca"], seed: int) -> np.ndarray:
    """2-D coordinates of the L2-normalised rows of x (seeded; PCA below 10 rows)."""
    from sklearn.decomposition import PCA

    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if projection == "pca" or len(x) < 10:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    return TSNE(
        n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed, max_iter=750
    ).fit_transform(x)


def maps_section(
    maps: list[tuple[str, pd.DataFrame]],
    categories: pd.Series,
    *,
    colored: int,
    projection: Literal["tsne", "pca"],
    seed: int,
    sample: int,
) -> Rendered:
    """``maps``: (title, frame of item_id and vector, already sampled) per map; ``categories``: item_id →
    category of the catalog; the ``colored`` most frequent categories get a colour, the rest are grey."""
    top = categories.value_counts().index[:colored].tolist()
    plt = pyplot()
    palette = plt.get_cmap("tab10" if len(top) <= 10 else "tab20")
    colors = {c: palette(i) for i, c in enumerate(top)}
    cols = min(2, len(maps))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5.2 * rows), squeeze=False)
    for ax, (title, pdf) in zip(axes.flat, maps, strict=False):  # the grid may have a spare axis
        pdf = pdf.sort_values("item_id")
        xy = project(np.stack(pdf["vector"].to_numpy()).astype(np.float32), projection, seed)
        c = pdf["item_id"].map(categories).fillna("(none)")
        other = (~c.isin(top)).to_numpy()
        ax.scatter(xy[other, 0], xy[other, 1], s=4, c="#cccccc", label="other")
        for cat in top:
            m = (c == cat).to_numpy()
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=5, color=colors[cat], label=cat)
        ax.set_title(f"{title} ({len(pdf):,} items)")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(maps) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), markerscale=3, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    how = "t-SNE (after PCA to 50 dimensions)" if projection == "tsne" else "PCA"
    return (
        Rendered()
        .add(
            f"<p>{how} of L2-normalised vectors; a seeded sample of at most {sample:,} items per "
            f"map; the {len(top)} most frequent categories coloured.</p>"
        )
        .figure("embedding_maps.png", fig, "embedding maps coloured by category")
    )
