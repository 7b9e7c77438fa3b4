# The whole set-up: `make demo` and `make test`. Both build .venv from nothing when it is missing.
# the first of these that runs and is Python 3.11 or newer (fgbg's dependencies ship wheels for 3.11 to 3.14); PYTHON=... picks one
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.14; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo_out

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "make: fgbg needs Python 3.11 or newer: none of python3, python3.13, python3.12, python3.11, python3.14 is (set PYTHON=/path/to/python)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test,export,optuna]'
	touch $(STAMP)

# The main job on the embedded synthetic default, small enough for a laptop's CPU (about 8 minutes on 2 cores, longer on a slow day):
# 4,000 samples at the default 160×160 (3,000 train, 1,000 test), decoded once into a cache; the model at half
# width trains 5 epochs at 64×64, 3 at 96×96 and 3 at 160×160 (progressive resizing), and is evaluated on 400
# fresh samples of another seed that it never saw, beside the threshold rule's IoU on them. TRAIN_ARGS adds `fgbg train`
# flags (bench/demo.py --train-args: one lever of the ablation at a time).
demo: venv
	$(BIN)/fgbg synth --out $(DEMO)/data --batches 4 --per-batch 1000 --seed 0
	$(BIN)/fgbg inspect $(DEMO)/data
	$(BIN)/fgbg train --data $(DEMO)/data --out $(DEMO)/runs --name demo --width 0.5 --epochs 11 --workers 2 --batch-size 16 \
		--test-samples 100 --cache $(DEMO)/cache --set 'size_schedule={1: 64, 6: 96, 9: 160}' --set log_every=50 $(TRAIN_ARGS)
	$(BIN)/fgbg synth --out $(DEMO)/fresh --batches 1 --per-batch 400 --seed 777 --quiet
	$(BIN)/fgbg evaluate --checkpoint $(DEMO)/runs/demo --data $(DEMO)/fresh --split all

test: venv
	$(BIN)/ruff check fgbg bench tests jobs
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q --durations=15

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[test,export,optuna,bench]'
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train_step.py --check
	$(BIN)/python bench/ray_overhead.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/transfer.py

clean:
	rm -rf $(DEMO) .pytest_cache
