# napari-lsr: one-command set-up, tests, lint, demo.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean sysdeps sample

setup: $(STAMP)

# torch is pinned exactly: on the CI machine pip's configuration holds its CPU wheel, and any
# other spec pulls gigabytes of CUDA wheels. Elsewhere on Linux, PyPI's torch is the CUDA
# build; for the CPU one: make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/python -m pip install -e ".[testing]"
	touch $(STAMP)

# Benchmarks also compare against MONAI; installed on demand.
$(VENV)/.installed-dev: $(STAMP)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

# Headless Qt needs a real X server (Xvfb) and a few xcb libraries.
sysdeps:
	@if command -v Xvfb >/dev/null && ldconfig -p | grep -q libxcb-icccm.so.4 && ldconfig -p | grep -q libxcb-keysyms.so.1 && ldconfig -p | grep -q libEGL.so.1 && ldconfig -p | grep -q libxkbcommon-x11.so.0; then \
	  true; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
	    libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 \
	    libdbus-1-3 libfontconfig1 >/dev/null; \
	else \
	  echo "Headless GUI tests need: xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libegl1."; \
	  echo "Install them with: sudo apt-get install -y xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libegl1"; \
	  exit 1; \
	fi

test: setup sysdeps
	QT_QPA_PLATFORM=xcb $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	$(BIN)/lsr demo --out demo-out

# Regenerate the shipped sample slide (napari_lsr/sample/) after a change of lsr.synthetic.
sample: setup
	$(BIN)/python -m napari_lsr._sample_data

bench: $(VENV)/.installed-dev sysdeps
	xvfb-run -a $(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
