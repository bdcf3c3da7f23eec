"""Report output shared by the jobs that write one (train_gbdt's model report, the run report): a
folder on any filesystem pyarrow knows, matplotlib figures as PNG bytes, and the plots both draw."""

from __future__ import annotations

import io

import numpy as np


class ReportFolder:
    """Files under one folder (local path or a URI such as s3://bucket/prefix)."""

    def __init__(self, folder: str):
        from pyarrow import fs

        self.folder = folder
        self.fs, self.path = fs.FileSystem.from_uri(folder if "://" in folder else "file://" + folder)
        self.fs.create_dir(self.path, recursive=True)

    def put(self, name: str, data: bytes) -> None:
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(data)

    def put_figure(self, name: str, fig) -> str:
        """The figure as ``name`` (PNG), closed; returns the name."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.put(name, buf.getvalue())
        return name


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display, no network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(y: np.ndarray, scores: dict[str, np.ndarray], title: str = "test calibration by decile"):
    """Observed rate against mean prediction per decile of the first model's scores, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    first = next(iter(scores.values()))
    edges = np.quantile(first, np.linspace(0, 1, 11))
    for model, q in scores.items():
        b = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, 9)
        xs = [q[b == i].mean() for i in range(10) if (b == i).any()]
        ys = [y[b == i].mean() for i in range(10) if (b == i).any()]
        ax.plot(xs, ys, marker="o", label=model)
    top = min(1.0, max(float(y.mean()) * 3, max(float(q.max()) for q in scores.values())))
    ax.plot([0, top], [0, top], "k:", lw=1)
    ax.set(xlabel="mean prediction (recalibrated)", ylabel="observed rate", title=title)
    ax.legend()
    return fig


def importance_figure(importance: dict[str, float], top: int = 20):
    """Horizontal bars of the ``top`` features by share of total gain (``importance`` sorted, largest first)."""
    plt = pyplot()
    items = list(importance.items())[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.25 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="share of total gain", title="feature importance (gain)")
    return fig
