# Entry points of the project: run the edge app, test everything, lint, rebuild the models, benchmark.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
MODELS_DIR ?= models_export
ARGS ?=

.PHONY: run test lint format models models-digits models-characters models-characters-relabelled models-digits-paper models-digits-twin models-characters-lite models-relabel evaluate bench demo demo-loop venv install-edge install-sync install-all browser postgres clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

install-edge: venv
	$(BIN)/pip install -q -e '.[edge]'

install-sync: venv
	$(BIN)/pip install -q -e '.[edge,sync]'

install-all: venv
	$(BIN)/pip install -q -e '.[all]'

## The main job: the classroom app with the shipped models, offline, on http://127.0.0.1:8000
run: install-edge
	$(BIN)/hwr-edge --models-dir $(MODELS_DIR) $(ARGS)

## A school on this machine: a sync server on :8100 and two devices on :8001 and :8002
demo: install-sync
	$(BIN)/python deploy/demo.py

demo-loop: install-all
	$(BIN)/python deploy/demo.py --auto --dir build/demo-loop

## Every test (installs what it needs: the venv with all extras, Debian's chromium and postgresql)
test: install-all browser postgres
	$(BIN)/pytest -q -p no:cacheprovider

browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

# The sync server's tests start a throw-away PostgreSQL cluster with initdb and pg_ctl.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else echo "the server's tests need Debian's postgresql: sudo apt-get install postgresql"; fi; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Rebuild both shipped models from the data (hours on a 2-core CPU; resumes after an interruption)
models: models-digits models-characters

# Digits 1.3.0: the lighter CNN (0.46 ms on a 2-core AMD CPU), trained with the 5,000-image
# MNIST holdout and 5 pendigits writers kept for validation; the shipped file is the one validated.
models-digits: install-all
	$(BIN)/hwr-train train digits --arch lite-cnn --data-dir $(DATA_DIR) --epochs 28 --val-size 5000 --out-dir build/digits-lite
	$(BIN)/hwr-train export digits --model build/digits-lite/model.keras --data-dir $(DATA_DIR) --out $(MODELS_DIR) --version 1.3.0
	$(BIN)/hwr-train evaluate digits --manifest $(MODELS_DIR)/digits.json --data-dir $(DATA_DIR)

# A candidate digit model: two lite-cnn towers in one graph (trainer/recipes/$(TWIN).toml),
# exported beside the shipped one and judged against it on the validation slices only.
TWIN ?= digits-twin-plain
models-digits-twin: install-all
	$(BIN)/hwr-train train digits --config trainer/recipes/$(TWIN).toml --data-dir $(DATA_DIR) --out-dir build/$(TWIN)
	$(BIN)/hwr-train export digits --model build/$(TWIN)/model.keras --data-dir $(DATA_DIR) --out build/$(TWIN)-export --version 1.4.0 --parent-version 1.3.0
	$(BIN)/hwr-train validate digits --manifest build/$(TWIN)-export/digits.json --data-dir $(DATA_DIR) --baseline $(MODELS_DIR)/digits.json

# The paper's digit CNN (digits 1.2.0's recipe: all 60,000 MNIST images), kept trained and
# reported beside the shipped model.
models-digits-paper: install-all
	$(BIN)/hwr-train train digits --data-dir $(DATA_DIR) --epochs 28 --val-size 0 --out-dir build/digits
	$(BIN)/hwr-train export digits --model build/digits/model.keras --data-dir $(DATA_DIR) --out build/digits-paper-export --version 1.2.0
	$(BIN)/hwr-train evaluate digits --manifest build/digits-paper-export/digits.json --data-dir $(DATA_DIR)

# Characters 1.1.0: the 1.0.0 recipe (8 epochs), then its output layer refitted on the training
# split with the committed relabel list (lower-case f shapes inside EMNIST's F); models-relabel
# computes the list again from the training split (about 10 minutes).
models-characters: install-all
	$(BIN)/hwr-train train characters --data-dir $(DATA_DIR) --epochs 8 --out-dir build/characters-base
	$(BIN)/hwr-train refit characters --init-from build/characters-base/model.keras --relabel trainer/relabels/characters-f.json --out-dir build/characters-refit --data-dir $(DATA_DIR)
	$(BIN)/hwr-train export characters --model build/characters-refit/model.keras --data-dir $(DATA_DIR) --out $(MODELS_DIR) --version 1.1.0 --parent-version 1.0.0
	$(BIN)/hwr-train evaluate characters --manifest $(MODELS_DIR)/characters.json --data-dir $(DATA_DIR)

# A candidate, not shipped: the residual CNN trained from the start on the relabelled split.
models-characters-relabelled: install-all
	$(BIN)/hwr-train train characters --data-dir $(DATA_DIR) --epochs 5 --relabel trainer/relabels/characters-f.json --out-dir build/characters
	$(BIN)/hwr-train export characters --model build/characters/model.keras --data-dir $(DATA_DIR) --out build/characters-relabelled-export
	$(BIN)/hwr-train validate characters --manifest build/characters-relabelled-export/characters.json --data-dir $(DATA_DIR) --relabel trainer/relabels/characters-f.json --baseline $(MODELS_DIR)/characters.json --classes fFILgq

# A candidate: the lighter residual CNN (0.51 ms), trained from the start on the relabelled split.
models-characters-lite: install-all
	$(BIN)/hwr-train train characters --arch lite-resnet --data-dir $(DATA_DIR) --epochs 8 --relabel trainer/relabels/characters-f.json --out-dir build/characters-lite
	$(BIN)/hwr-train export characters --model build/characters-lite/model.keras --data-dir $(DATA_DIR) --out build/characters-lite-export --version 1.2.0
	$(BIN)/hwr-train validate characters --manifest build/characters-lite-export/characters.json --data-dir $(DATA_DIR) --relabel trainer/relabels/characters-f.json --baseline $(MODELS_DIR)/characters.json --classes fFILgq

models-relabel: install-all
	$(BIN)/hwr-train relabel characters --data-dir $(DATA_DIR) --out trainer/relabels/characters-f.json --sheets build/relabel

evaluate: install-all
	$(BIN)/hwr-train evaluate digits --manifest $(MODELS_DIR)/digits.json --data-dir $(DATA_DIR)
	$(BIN)/hwr-train evaluate characters --manifest $(MODELS_DIR)/characters.json --data-dir $(DATA_DIR)

## Latency, memory and personalisation figures for the README
bench: install-all
	$(BIN)/python bench/latency.py --models-dir $(MODELS_DIR) --out build/bench-latency.json
	$(BIN)/python bench/personalise.py --model $(MODELS_DIR)/digits.json --data-dir $(DATA_DIR) --out build/bench-personalise.md

clean:
	rm -rf build/dev-models .pytest_cache .ruff_cache
