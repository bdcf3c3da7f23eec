"""Benchmark helpers (``make bench``): where results go, peak memory of the process tree, one writer
for every stage's files, and the summary of one bench run.

``make bench`` runs every stage's benchmark (``tests/test_bench_*.py``, marked slow) with one
``BENCH_RUN`` id, then ``python -m recfactory.jobs.runtime.bench --size S --run R``, which reads the
stage files stamped with that id and writes ``docs/bench/results-<size>.{json,md}``: per stage, ours
against its peer and the ratio. A stage file left from another run is not mixed in: its row says it
did not run in this one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

SIZES = {"small": 100_000, "1m": 1_000_000, "10m": 10_000_000}
OUT = Path(__file__).resolve().parents[2] / "docs" / "bench"


class PeakRSS:
    """Peak resident memory of this process and (children=True) its children — the Spark JVM —
    sampled at 5 Hz."""

    def __init__(self, children: bool = True):
        self.peak = 0
        self.children = children
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil  # ships with ray[default]; only the benchmarks need it

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)] if self.children else [me]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def bench_size() -> str:
    size = os.environ.get("BENCH_SIZE", "small")
    if size not in (*SIZES, "movielens"):
        raise ValueError(f"BENCH_SIZE must be one of {[*SIZES, 'movielens']}, got {size!r}")
    return size


def write_results(stem: str, res: dict[str, Any], md: list[str], out: Path = OUT) -> None:
    """``<stem>.json`` and ``<stem>.md`` under docs/bench, the JSON stamped with the bench run (BENCH_RUN),
    the time and the code version."""
    from recfactory.jobs.runtime.job import code_version

    res = {
        **res,
        "bench_run": os.environ.get("BENCH_RUN"),
        "code_version": code_version(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")


# ---------------------------------------------------------------------------------------- summary
# stage → (file stem for a size, how to read its rows). A row: what is compared, ours, the peer, the
# unit, and whether higher is better; ratio = ours / peer.


def _similarity(r):
    return [
        {
            "comparison": "Swing/ItemCF (4 algos, top-K) on Spark vs the single-process SciPy reference",
            "ours": r["spark_s"],
            "peer": r["scipy_s"],
            "unit": "s",
            "higher_is_better": False,
            "quality": f"top-K lists agree exactly: {r['exact_agreement']} ({r['lists']:,} lists)",
        }
    ]


def _graph(r):
    rates = r["walks_per_s"]
    rows = [
        {
            "comparison": "random walks (unweighted) vs PyG + torch-cluster",
            "ours": rates["ours_unweighted"],
            "peer": rates.get("pyg_torch_cluster_unweighted"),
            "unit": "walks/s",
            "higher_is_better": True,
            "quality": r.get("pyg_skipped") or f"{r['throughput_walks']:,} walks of {r['walk_length']}",
        },
        {
            "comparison": "skip-gram (SGNS) vs gensim Word2Vec, same walks",
            "ours": r["ours_skipgram_s"],
            "peer": r.get("gensim_s"),
            "unit": "s",
            "higher_is_better": False,
            "quality": r.get("gensim_skipped") or f"HR@20 ours {r['ours_hr@20']:.4f}, gensim {r['gensim_hr@20']:.4f}",
        },
    ]
    return rows


def _sids(r):
    rows = []
    for name, d in r["datasets"].items():
        ours, peer = d["rows"]["ours (balance 1.0)"], d["rows"]["faiss ResidualQuantizer"]
        rows.append(
            {
                "comparison": f"balanced RQ-KMeans vs faiss ResidualQuantizer ({name}, {d['items']:,} items): "
                "fit + encode",
                "ours": ours["seconds"],
                "peer": peer["seconds"],
                "unit": "s",
                "higher_is_better": False,
                "quality": f"collision rate {ours['collision_rate']:.4f} vs {peer['collision_rate']:.4f}; SID Gini "
                f"{ours['sid_gini']:.4f} vs {peer['sid_gini']:.4f}; recon error {ours['recon_error']:.4f} vs "
                f"{peer['recon_error']:.4f}",
            }
        )
    return rows


def _gbdt(r):
    return [
        {
            "comparison": f"GBDT leaf encoding on Spark ({r['spark_cores']} cores) vs raw LightGBM pred_leaf "
            "(1 thread), per core",
            "ours": r["job_rows_per_s_per_core"],
            "peer": r["raw_rows_per_s_per_core"],
            "unit": "rows/s/core",
            "higher_is_better": True,
            "quality": f"encode stage alone {r['encode_rows_per_s_per_core']:,} rows/s/core "
            f"(ratio {r['encode_ratio']}); {r['rows']:,} rows × {r['trees']} trees",
        }
    ]


def _content(r):
    ip = r["in_process"]
    return [
        {
            "comparison": "content encoder: int8 ONNX MiniLM vs float32 sentence-transformers MiniLM (1 thread)",
            "ours": ip["minilm-onnx@1"],
            "peer": ip["minilm-st@1"],
            "unit": "items/s",
            "higher_is_better": True,
            "quality": f"cosine between their vectors: mean {r['cosine_onnx_vs_st']['mean']}, "
            f"min {r['cosine_onnx_vs_st']['min']}",
        }
    ]


def _pipeline(r):
    return [
        {
            "comparison": f"{s['job']} → {s['output']} ({s['rows']:,} rows)",
            "ours": s["seconds"],
            "peer": None,
            "unit": "s",
            "higher_is_better": False,
            "quality": f"{s['rows_per_s']:,} rows/s, peak RSS {s['peak_rss_gb']} GB (no peer: feature tables)",
        }
        for s in r["stages"]
    ]


def _e2e(r):
    rows = [
        {
            "comparison": f"daily DAG end to end under Airflow (`airflow dags test`, {r['tasks']} tasks) vs the "
            "same steps in one process (`recfactory pipeline`)",
            "ours": r.get("airflow_s"),
            "peer": r["pipeline_s"],
            "unit": "s",
            "higher_is_better": False,
            "quality": r.get("airflow_skipped")
            or f"Airflow's cost: one cold spark-submit per task; {r['events']:,} events",
        }
    ]
    return rows


STAGES: dict[str, tuple[str, Any]] = {
    "similarity": ("similarity-{size}", _similarity),
    "graph": ("graph-{size}", _graph),
    "sids": ("sids-{size}", _sids),
    "gbdt": ("gbdt-{size}", _gbdt),
    "content": ("content-clothing", _content),
    "pipeline": ("pipeline-{size}", _pipeline),
    "end_to_end": ("e2e-{size}", _e2e),
}


def summarize(size: str, run: str | None, out: Path = OUT) -> dict[str, Any]:
    """docs/bench/results-<size>.{json,md} from the stage files of bench run ``run`` (every stage file
    when run is None)."""
    rows, stages = [], {}
    for stage, (stem, read) in STAGES.items():
        path = out / f"{stem.format(size=size)}.json"
        if not path.exists():
            stages[stage] = {"status": "not run", "file": path.name}
            continue
        res = json.loads(path.read_text())
        if run is not None and res.get("bench_run") != run:
            stages[stage] = {
                "status": f"not run in bench run {run} (file from run {res.get('bench_run')})",
                "file": path.name,
            }
            continue
        stages[stage] = {
            "status": "ran",
            "file": path.name,
            "finished_at": res.get("finished_at"),
            "code_version": res.get("code_version"),
        }
        for row in read(res):
            ours, peer = row["ours"], row["peer"]
            row["ratio"] = round(ours / peer, 3) if ours is not None and peer else None
            row["ours_better"] = (
                None if row["ratio"] is None else (row["ratio"] > 1) if row["higher_is_better"] else (row["ratio"] < 1)
            )
            rows.append({"stage": stage, **row})
    result = {"size": size, "bench_run": run, "machine": {"cpus": os.cpu_count()}, "stages": stages, "rows": rows}
    md = [
        f"# recfactory benchmarks — {size}",
        "",
        f"One `make bench BENCH_SIZE={size}` run (bench run `{run}`), {os.cpu_count()} cores. Ratio = ours / peer; "
        "for times lower is better, for rates higher. Each stage's details: the linked file.",
        "",
        "| stage | comparison | ours | peer | unit | ratio | better | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(v):
        return "–" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.2f}")

    for r in rows:
        better = {True: "ours", False: "peer", None: "–"}[r["ours_better"]]
        stem = stages[r["stage"]]["file"].removesuffix(".json")
        md.append(
            f"| [{r['stage']}]({stem}.md) | {r['comparison']} | {num(r['ours'])} | {num(r['peer'])} | "
            f"{r['unit']} | {'–' if r['ratio'] is None else r['ratio']} | {better} | {r['quality']} |"
        )
    missing = {k: v["status"] for k, v in stages.items() if v["status"] != "ran"}
    if missing:
        md += ["", "Not in this run: " + "; ".join(f"{k} ({v})" for k, v in missing.items()) + "."]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"results-{size}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"results-{size}.md").write_text("\n".join(md) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m recfactory.jobs.runtime.bench",
        description="Summarize one bench run into docs/bench/results-<size>.{json,md}.",
    )
    ap.add_argument("--size", default=os.environ.get("BENCH_SIZE", "small"))
    ap.add_argument("--run", default=os.environ.get("BENCH_RUN"), help="the BENCH_RUN id (default: every file)")
    a = ap.parse_args(argv)
    res = summarize(a.size, a.run)
    print((OUT / f"results-{a.size}.md").read_text())
    return 0 if all(v["status"] == "ran" for v in res["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
