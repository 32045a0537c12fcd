# One command sets everything up and runs the main job; one runs the tests.
#   make demo   napari with the plugin on the bundled sample slide (Xvfb + demo.png without a display)
#   make test   the whole test suite, with the import-layer contracts
# Re-running either is quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-xinput0 \
	libxkbcommon-x11-0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 \
	libgl1 libegl1 libfontconfig1 libdbus-1-3

.PHONY: setup system demo test lint bench clean batch-check

setup: system $(STAMP)

system:
	@bash scripts/install-system-packages.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[testing]"
	$(PY) -m napari_pathsegdiff._setup_reader
	touch $(STAMP)

demo: setup
	@if [ -n "$$DISPLAY" ]; then \
		$(PY) -m napari_pathsegdiff._widgets._demo; \
	else \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_pathsegdiff._widgets._demo --screenshot demo.png; \
	fi

# the package without its gui extra, in a fresh virtual environment: segment-slide needs no napari or Qt
batch-check:
	PYTHON=$(PYTHON) TORCH=$(TORCH) bash scripts/check-batch-without-gui.sh .venv-batch

lint: setup
	$(VENV)/bin/lint-imports

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: setup
	$(PY) scripts/bench_slide_open.py

clean:
	rm -rf $(VENV) .venv-batch build *.egg-info src/*.egg-info .pytest_cache
