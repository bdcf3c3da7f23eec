"""Semantic IDs: items per code per level, the hourglass chart, collisions and SID Gini."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfactory.jobs.reporting.html import Rendered, table
from recfactory.jobs.runtime.reports import pyplot
from recfactory.tokenizers.sid_generation import TOTAL_METRICS

PER_LEVEL = (
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
)
# the whole-SID metrics of a generation, timings left out
WHOLE_SID = (*(k for k in TOTAL_METRICS if not k.endswith("_seconds")), "relative_recon_error")


def _codes_per_level(ax, counts: pd.DataFrame, n_levels: int) -> None:
    for lv in range(n_levels):
        c = np.sort(counts.loc[counts["pos"] == lv, "count"].to_numpy())[::-1]
        ax.plot(np.arange(1, len(c) + 1), c, label=f"level {lv + 1}")
    ax.set(xscale="log", yscale="log", xlabel="code rank", ylabel="items per code", title="items per code per level")
    ax.legend()


def _hourglass(ax, levels: pd.DataFrame) -> None:
    size = levels["codebook_size"].to_numpy()
    eff = levels["perplexity"].to_numpy() / size
    used = levels["utilization"].to_numpy()
    y = -levels["level"].to_numpy()
    ax.barh(y, used, left=-used / 2, color="#dddddd", label="codes used")
    ax.barh(y, eff, left=-eff / 2, color="#4c72b0", label="effective codes (perplexity)")
    for yy, e, s in zip(y, eff, size, strict=True):
        color = "white" if e > 0.3 else "black"
        ax.text(0, yy, f"{e * s:,.0f} / {s:,.0f}", ha="center", va="center", fontsize=8, color=color)
    ax.set(
        yticks=y,
        yticklabels=[f"level {int(v)}" for v in levels["level"]],
        xlim=(-0.55, 0.55),
        xticks=[],
        title="hourglass: share of each codebook in effective use",
    )
    ax.legend(loc="lower center", fontsize=7, bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)


def _collisions(ax, summary: pd.Series | None) -> None:
    if summary is None or not np.isfinite(summary["collision_rate_before"]):
        ax.text(0.5, 0.5, "no collision metrics for this generation", ha="center")
        ax.axis("off")
        return
    keys = ("collision_rate_before", "collision_rate_after", "sid_gini_before", "sid_gini_after")
    vals = [float(summary[k]) for k in keys]
    labels = ["collision\nbefore", "collision\nafter", "SID Gini\nbefore", "SID Gini\nafter"]
    bars = ax.bar(labels, vals, color=["#c44e52", "#55a868", "#c44e52", "#55a868"])
    for b, v in zip(bars, vals, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set(title="collisions and SID Gini, before / after handling", ylim=(0, max(0.01, 1.15 * max(vals))))


def sids_section(metrics: pd.DataFrame, counts: pd.DataFrame) -> Rendered:
    """``metrics``: sid_metrics of the date (generation, level 0 = the whole SID, levels 1..L);
    ``counts``: items per (pos, code) of the catalog's RQ codes, pos 0-based."""
    gen = str(metrics["generation"].max())  # one generation per date
    met = metrics[metrics["generation"] == gen]
    levels = met[met["level"] > 0].sort_values("level")
    summary = met[met["level"] == 0].iloc[0] if (met["level"] == 0).any() else None
    n_levels = int(levels["level"].max())
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 3.8))
    _codes_per_level(axes[0], counts, n_levels)
    _hourglass(axes[1], levels)
    _collisions(axes[2], summary)
    out = Rendered().add(
        f"<p>Generation {gen}: {int(levels['items'].max()):,} items in the catalog, {n_levels} levels. The "
        "hourglass chart shows how much of each codebook is in effective use (perplexity of the code "
        "distribution / codebook size): a narrow middle level is the hourglass effect. The last level's codes are "
        "capped per prefix (at most a few items per last code among items sharing the earlier codes), so "
        "they concentrate on a few code values globally by design; what matters there is the collision "
        "rate.</p>"
    )
    out.figure("sid_codes.png", fig, "semantic-ID code distribution, hourglass and collisions")
    out.add("<h3>Per level</h3>", table(levels[[c for c in PER_LEVEL if c in levels.columns]]))
    if summary is not None:
        keys = [k for k in WHOLE_SID if k in summary.index]
        whole = pd.DataFrame({"metric": keys, "value": [float(summary[k]) for k in keys]})
        out.add("<h3>Whole SID</h3>", table(whole))
    return out
