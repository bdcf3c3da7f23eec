"""The card's top-level `tokenizers/` never shadows Hugging Face's `tokenizers`, whatever the working
directory or install mode: from this checkout, from a second checkout while this one is installed,
and with a wheel installed and a checkout as the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from subproc import result_of

ROOT = Path(__file__).resolve().parents[1]

# what the text encoder does (tokenizers/encoders.py), after recfactory is imported; and the same
# when something imported the shadowing `tokenizers` before recfactory
PROBE = """
import sys
{pre}
import recfactory
from tokenizers import Tokenizer
import tokenizers
print("RECFACTORY", recfactory.__file__)
print("TOKENIZERS", tokenizers.__file__)
"""


def _probe(cwd: Path, pre: str = "", env: dict[str, str] | None = None) -> dict[str, str]:
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(pre=pre)], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("RECFACTORY", "TOKENIZERS")))


def _checkout(dest: Path) -> Path:
    """A second checkout's source tree (the package folders, no docs or data)."""
    dest.mkdir()
    for name in ("__init__.py", "__main__.py", "setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("jobs", "features", "graph", "tokenizers", "airflow_dags"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _is_hugging_faces(path: str, *checkouts: Path) -> bool:
    return "site-packages" in path and Path(path).resolve().parent not in {
        c.resolve() / "tokenizers" for c in checkouts
    }


def test_from_this_checkout_and_from_a_second_one(tmp_path):
    other = _checkout(tmp_path / "other")
    for cwd in (ROOT, other):
        for pre in ("", "import tokenizers as early  # the checkout's own, imported before recfactory"):
            out = _probe(cwd, pre)
            assert _is_hugging_faces(out["TOKENIZERS"], ROOT, other), (cwd, pre, out)


def test_from_a_wheel_install_with_a_checkout_as_the_working_directory(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("recfactory-*.whl")
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(site)}
    out = _probe(ROOT, env=env)
    assert Path(out["RECFACTORY"]).resolve().is_relative_to(site.resolve()), out  # the wheel, not the checkout
    assert _is_hugging_faces(out["TOKENIZERS"], ROOT), out


PACKAGES = ("jobs", "features", "graph", "tokenizers", "airflow_dags")
LIBRARIES = ("features", "graph", "tokenizers")


def _module_imports() -> dict[str, set[tuple[str, str]]]:
    """Every recfactory module (dotted, under the import root) → the (module, name) pairs it imports
    from recfactory, at any depth of its code (lazy imports in functions included)."""
    import ast

    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            mod = "recfactory." + ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recfactory."):
                    deps |= {(node.module, a.name) for a in node.names}
                elif isinstance(node, ast.Import):
                    deps |= {(a.name, "") for a in node.names if a.name.startswith("recfactory.")}
            out[mod] = deps
    return out


def test_dependencies_run_one_way_with_no_cycle_and_no_private_import():
    imports = _module_imports()
    for mod, deps in imports.items():
        if mod.split(".")[1] in LIBRARIES:
            up = sorted(m for m, _ in deps if m.split(".")[1] in ("jobs", "airflow_dags"))
            assert not up, f"{mod} (a library) imports {up}"
        private = sorted(f"{m}.{n}" for m, n in deps if n.startswith("_") and m != mod)
        assert not private, f"{mod} imports private names {private}"
    graph = {mod: {m for m, _ in deps if m in imports and m != mod} for mod, deps in imports.items()}
    state: dict[str, int] = {}

    def visit(mod, path):
        state[mod] = 1
        for nxt in sorted(graph[mod]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, mod, nxt])
            if nxt not in state:
                visit(nxt, [*path, mod])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])


# What declares parameters is read where no model runs: the Airflow DAG files (parsed by the DAG
# processor again and again, and by every `airflow dags test`), the CLI's help, the parameter
# reference. Every job's Params import without the model libraries (torch alone took 2.8 s of each
# DAG parse); the models are imported where they train.
MODEL_LIBRARIES = ("torch", "torch_geometric", "ray", "faiss", "lightgbm", "sentence_transformers", "torchvision")
PARAMS_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from recfactory.jobs.runtime.job import JOBS, load_job
for name in JOBS:
    load_job(name).Params
import recfactory_daily, recfactory_weekly  # the DAG files, as the DAG processor imports them
print("RESULT " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {libs!r})))
"""


@pytest.mark.airflow
def test_every_jobs_params_and_the_dag_files_import_without_the_model_libraries(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", PARAMS_PROBE.format(libs=set(MODEL_LIBRARIES)), str(ROOT / "airflow_dags")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert result_of(res.stdout) == []
