# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench setup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.screen --input samples/archive --output out/demo \
		--pseudonym-key-file out/demo-pseudonym.key --create-pseudonym-key

# two pytest processes, whole files each (module fixtures stay in one process): much of the suite waits on one
# Python thread (TensorFlow tracing, process starts), so the other core does the other process's work meanwhile
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# the benchmarks of docs/benchmarks.md (need ../shared/datasets; minutes, not part of the tests)
bench: $(STAMP)
	$(PY) -m tools.benchmark --images 2000 8000 --repeats 3
	$(PY) -m tools.scale_benchmark --sizes 1000 10000 50000 --pool out/bench/dicom-pool
	$(PY) -m tools.decode_benchmark --images 200
	$(PY) -m tools.nightly_benchmark --source ../shared/datasets/brain-tumor-mri/Training --images 10000
	$(PY) -m tools.pacs_benchmark --copies 40 --repeats 2 --latency-ms 0 20

clean:
	rm -rf $(VENV) out
