# tnc: the two commands a newcomer needs are `make demo` and `make test`; each sets everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-models test test-all lint format golden docs bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	@# BackPACK and laplace-torch pull in torchvision, whose PyPI wheel is built for CUDA torch and fails to load
	@# beside the CPU build ("operator torchvision::nms does not exist"); nothing tested needs it, and without it
	@# torchmetrics (imported by laplace) leaves its image metrics out.
	$(PY) -m pip uninstall -q -y torchvision
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with torch (CPU), the compiler and the test tools

demo: setup  ## compile every example and check it against PyTorch
	$(PY) examples/demo.py

demo-models: setup  ## digits CNN: KFAC + SGD vs SGD and Adam, its curvature quantities, sampled backprop, DP-SGD
	$(PY) examples/train_kfac_digits.py
	$(PY) examples/curvature_digits.py
	$(PY) examples/train_sampled_digits.py
	$(PY) examples/dp_sgd_digits.py

test: setup  ## the test suite, without the slow fuzzing and sweeps (at most 5 minutes on 2 cores)
	$(PY) -m pytest -q -n auto -m "not slow"

test-all: setup  ## everything: the suite, then the slow tests (fuzzing, sweeps, inductor, subprocesses)
	$(PY) -m pytest -q -n auto -m "not slow"
	$(PY) -m pytest -q -n auto -m slow

lint: setup  ## ruff and mypy (strict on the package)
	$(PY) -m ruff check tncompiler tests examples bench
	$(PY) -m ruff format --check tncompiler
	$(PY) -m mypy

format: setup
	$(PY) -m ruff format tncompiler
	$(PY) -m ruff check --fix tncompiler tests examples

golden: setup  ## regenerate the golden files of examples/golden after an intended change
	$(PY) -m pytest -q tests/backend/test_golden.py --regen-golden

docs: setup  ## docs/gallery.md and its pictures docs/img/*.svg, from the examples (needs Graphviz's dot)
	$(PY) docs/gallery.py

bench: setup  ## benchmarks: tnc vs PyTorch, einconv and unfold-based KFAC (bench/README.md); BENCH_ARGS="--quick"
	$(PY) -m pip install -q -c constraints.txt -e ".[bench]"
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.open_sizes $(BENCH_ARGS)
	$(PY) -m bench.compile_time
	$(PY) -m bench.models $(BENCH_ARGS)
	$(PY) -m bench.calls $(BENCH_ARGS)
	$(PY) -m bench.curvature $(BENCH_ARGS)
	$(PY) -m bench.variance $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
