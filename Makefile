# Everything sets itself up: `make train CLASS=horse` or `make test` on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLASS ?= horse
DATA ?= data/cifar10
ARGS ?=

.PHONY: install lint format test test-fast train demo cifar10 bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install  ## ruff, from pyproject.toml's [tool.ruff]: the check and the format, changing nothing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff rewrites what it can: the format and the safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The suite runs one worker a core (pytest-xdist), each on one thread: tiny networks gain nothing from more,
# and two threads a worker on two cores would stall each other.
test: lint  ## the linter, then the test suite: CPU, tiny data made on the spot, no network
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto

test-fast: install  ## while working on the code: the suite less the tests that start the command line
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto -m "not cli"

train: install  ## one CIFAR-10 experiment: make train CLASS=horse [DATA=path] [ARGS="trainer.max_epochs=1 ..."]
	$(BIN)/python -m fned_lightning.train anomaly_class=$(CLASS) data.root=$(DATA) $(ARGS)

demo: install  ## synthetic parts: needs no files and no network
	$(BIN)/python -m fned_lightning.train experiment=demo $(ARGS)

CIFAR10_TAR ?= ../shared/datasets/cifar10-jpeg.tar.gz

cifar10:  ## unpack the CIFAR-10 image copy that sits beside the checkout into $(DATA) [CIFAR10_TAR=path]
	@test -f $(CIFAR10_TAR) || { echo "error: no CIFAR-10 copy at $(CIFAR10_TAR); give its path with make cifar10 CIFAR10_TAR=/path/to/cifar10-jpeg.tar.gz" >&2; exit 2; }
	mkdir -p $(DATA) && tar -xzf $(CIFAR10_TAR) -C $(DATA)

clean:
	rm -rf outputs multirun wandb lightning_logs .pytest_cache

bench: install  ## speed of every model on this machine -> bench/*.json (a benchmark: asserts nothing)
	$(BIN)/python -m fned_lightning.bench --pretrained no --out bench/results.json
	$(BIN)/python -m fned_lightning.bench --pretrained yes --image-size 224 --batch-size 16 --out bench/features.json
