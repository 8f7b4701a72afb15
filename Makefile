# One task runner. `make serve` and `make test` work from a clean clone with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint format bench clean

$(BIN)/python:
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# stamps re-run the install whenever pyproject.toml changes
# pip prints each package as it goes (no --quiet): the first install takes minutes
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	@echo "==> installing the server, the demo models (PyTorch, transformers, ONNX Runtime) and"
	@echo "    the clients the README uses into $(VENV): about 2 minutes the first time"
	$(BIN)/python -m pip install --progress-bar on -e '.[server,demo,clients]'
	@touch $@
	@echo "==> installed; later runs skip this step until pyproject.toml changes"

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	@echo "==> installing Modelworks with every extra and the test tools into $(VENV):"
	@echo "    about 3 minutes the first time"
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## start the server on 127.0.0.1:8000 with the demo model
	$(BIN)/modelworks serve --demo

test: $(VENV)/.dev  ## run the whole test suite
	$(BIN)/python -m pytest

lint: $(VENV)/.dev  ## ruff and mypy
	$(BIN)/ruff check modelworks tests benchmarks
	$(BIN)/ruff format --check modelworks tests benchmarks
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff format modelworks tests benchmarks
	$(BIN)/ruff check --fix modelworks tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
