"""GBDT: the published model's test metrics, its calibration curve and feature importance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfactory.jobs.reporting.html import Rendered, esc, table
from recfactory.jobs.runtime.reports import calibration_figure, importance_figure


@dataclass(frozen=True)
class Calibration:
    """Labels and recalibrated scores of the test rows scored with the published model."""

    y: np.ndarray
    q: np.ndarray
    ds: object


def gbdt_section(
    model_version: str,
    features: int,
    metrics: pd.DataFrame,
    importance: dict[str, float],
    calibration: Calibration | str,
) -> Rendered:
    """``metrics``: gbdt_metrics of the model (slice_column null = overall); ``calibration``: the scored
    test rows, or why there are none."""
    overall = metrics[metrics["slice_column"].isna()][
        ["model", "rows", "positives", "auc", "ne", "rig", "calibration_ratio"]
    ]
    sliced = metrics[metrics["slice_column"].notna()][
        ["slice_column", "slice_value", "rows", "auc", "ne", "calibration_ratio"]
    ]
    out = Rendered().add(
        f"<p>Model <code>{esc(model_version)}</code>: {features} features; test metrics as "
        "published by <code>train_gbdt</code> (NE: normalized entropy, lower is better).</p>",
        table(overall),
    )
    figs = Rendered()
    if isinstance(calibration, str):
        out.add(f'<p class="missing">{esc(calibration)}</p>')
    else:
        c = calibration
        title = f"calibration by decile, {len(c.y):,} test rows of {c.ds}"
        figs.figure("gbdt_calibration.png", calibration_figure(c.y, {"gbdt": c.q}, title), "GBDT calibration curve")
    figs.figure("gbdt_importance.png", importance_figure(importance), "GBDT feature importance (gain)")
    out.add('<div class="row">', *figs.parts, "</div>")
    out.figures.extend(figs.figures)
    if len(sliced):
        out.add("<h3>By slice (GBDT)</h3>", table(sliced))
    return out
