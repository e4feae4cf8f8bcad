# kws: the two set-up commands are `make demo` (runs the shipped model, installs only the runtime) and
# `make test` (installs everything, runs lint and the whole test suite). Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
RUN ?= runs/pretrained

.PHONY: demo test lint install-runtime install-dev install-system pretrained bench clean

# pip >= 25 shows the build backend's Python warnings. setuptools always warns "Editable installation. Please be
# careful with folders in your working directory ..." (with the source line `with strategy, WheelFile(...)`) for
# an editable install that needs its import finder, as this one does (export/ and runtime/ install as
# kws.export and kws.runtime); it is information, not a problem, so it is filtered out here by its message.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime only: numpy, onnxruntime, soundfile, soxr (no torch).
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

# Everything: torch/torchaudio (pinned), onnx, sounddevice, pytest, ruff.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[train,mic,dev]'
	touch $@ $(VENV)/.runtime

# The training-time teacher of `make pretrained` (openWakeWord's ONNX speech embedding); never needed to run.
$(VENV)/.teacher: pyproject.toml $(VENV)/.dev
	$(PIP_INSTALL) -e '.[train,mic,dev,teacher]'
	touch $@

install-runtime: $(VENV)/.runtime
install-dev: $(VENV)/.dev

## demo: run the shipped int8 streaming model over the example recording
demo: $(VENV)/.runtime
	$(BIN)/kws listen --input examples/demo.wav

## test: lint + the whole test suite (system packages for the microphone and Pi tests: make install-system)
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install-system:
	bash .ci/install-system.sh

## pretrained: re-create the shipped model from the real data in $(DATA) (train, export, copy into kws/pretrained)
pretrained: $(VENV)/.teacher
	bash scripts/make_pretrained.sh $(DATA) $(RUN)

## bench: accuracy / size / speed / streaming detection quality of the shipped model
bench: $(VENV)/.dev
	$(BIN)/kws bench --checkpoint $(RUN)/stream/last.pt --models $(RUN)/export \
		--data $(DATA)/speech_commands_test_set_v0.02 --negatives $(DATA)/wake_word_negatives \
		--stream-minutes 60 --negative-hours 6 --out $(RUN)/bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
