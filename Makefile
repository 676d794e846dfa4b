# SPDX-License-Identifier: MIT
# TrackLeak's developer entry point. Thin wrappers: the logic lives in scripts/.
# `make` or `make help` lists the targets (from the `## ` comments below).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
TL      := $(VENV)/bin/trackleak
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
SCRIPT  ?=
ARGS    ?=

# malloc-family names the shim must export (checked by `make verify`), and the lookups it hooks so
# that handles (ctypes.CDLL("libc.so.6"), cffi's ffi.dlopen) get them too.
MALLOC_FAMILY := malloc|calloc|realloc|reallocarray|free|posix_memalign|aligned_alloc|memalign|valloc|pvalloc|_exit|dlsym|dlvsym

.PHONY: help setup build check verify test demo quickstart run install uninstall lint bench clean distclean

help: ## Show this list of targets
	@echo "Usage: make <target> [VAR=value]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Anything that needs the venv gets it from setup.sh (fast when already there).
$(PY):
	bash scripts/setup.sh

setup: ## Install everything (apt packages, kernel headers for bcc, .venv, package): scripts/setup.sh
	bash scripts/setup.sh

# TODO(lead): setup.py's build_shim is registered as build_ext, not as a command of its own;
# if a standalone `setup.py build_shim` appears, call `$(PY) setup.py build_shim` here instead.
build: | $(PY) ## Rebuild the preload shim into .venv (pip install -e .)
	$(VENV)/bin/pip install -e .

check: | $(PY) ## Check the environment: trackleak doctor
	@if [[ -x $(TL) ]]; then $(TL) doctor; \
	else echo "$(TL) not found: run 'make setup' first" >&2; exit 1; fi

verify: | $(PY) ## Show the built shim: its path, ldd, and exported malloc-family and dlsym symbols
	@set -euo pipefail; \
	so="$$($(TL) where | tail -n 1)"; \
	[[ -f "$$so" ]] || { echo "shim not found ('trackleak where' printed '$$so'): run 'make build'" >&2; exit 1; }; \
	echo "== shim: $$so"; \
	echo "== ldd"; ldd "$$so"; \
	echo "== exported malloc-family and dlsym symbols (nm -D --defined-only)"; \
	nm -D --defined-only "$$so" | grep -E ' ($(MALLOC_FAMILY))(@.*)?$$' \
	  || { echo "no malloc-family symbols exported by $$so" >&2; exit 1; }

test: ## Run the test suite: scripts/test.sh (pytest args in ARGS='...')
	bash scripts/test.sh $(ARGS)

demo: ## Run the leaky demo under trackleak: scripts/demo.sh (demo args in ARGS='...')
	bash scripts/demo.sh $(ARGS)

quickstart: demo ## Same as demo

run: | $(PY) ## Profile a script: make run SCRIPT=app.py
	@[[ -n "$(SCRIPT)" ]] || { echo "usage: make run SCRIPT=app.py" >&2; exit 2; }
	$(TL) run $(SCRIPT)

install: ## Copy the built shim to /usr/local/lib/trackleak.so (PREFIX=, DESTDIR=; as root)
	@set -euo pipefail; \
	so="$$($(TL) where | tail -n 1)"; \
	[[ -f "$$so" ]] || { echo "shim not found: run 'make build' first" >&2; exit 1; }; \
	install -D -m 0644 "$$so" "$(DESTDIR)$(LIBDIR)/trackleak.so"; \
	echo "installed $(DESTDIR)$(LIBDIR)/trackleak.so"

uninstall: ## Remove the installed /usr/local/lib/trackleak.so
	rm -f "$(DESTDIR)$(LIBDIR)/trackleak.so"

lint: | $(PY) ## ruff check + format check (pip install -e '.[dev]' first)
	$(PY) -m ruff check agent cli tests bench
	$(PY) -m ruff format --check agent cli tests bench

bench: | $(PY) ## Run the overhead benchmarks: bench/run.py
	$(PY) bench/run.py

clean: ## Remove build outputs and .cache (merged kernel headers; setup.sh rebuilds them)
	rm -rf build/ dist/ *.egg-info .cache/ .pytest_cache/
	find . -path ./.venv -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
