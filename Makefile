# rnnkit: `make test` runs the test suite on a fresh machine; it installs what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned: this wheel is the CPU build; an unpinned torch pulls several GB of CUDA packages.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
