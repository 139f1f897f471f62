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

.PHONY: all sysdeps venv build test test-all test-asan demo bench clean

all: build

# Debian packages: the hiredis headers/library and a redis-server for the tests.
sysdeps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
	  command -v redis-server >/dev/null && \
	  echo '#include <hiredis/hiredis.h>' | $${CC:-cc} -E -x c - >/dev/null 2>&1 || \
	  { echo "need the hiredis headers and redis-server (not a Debian system: install them yourself)"; exit 1; }; \
	elif ! dpkg -s libhiredis-dev redis-server >/dev/null 2>&1; then \
	  echo "installing libhiredis-dev redis-server (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libhiredis-dev redis-server >/dev/null; \
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
# build is restored afterwards, whether the suite passed or not.
test-asan: venv
	rm -rf build/asan $(EXT)
	BRUNO_ASAN=1 $(PY) setup.py -q build_ext --inplace --build-temp build/asan --force
	status=0; \
	BRUNO_VENV=$(VENV) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 LD_PRELOAD=$(ASAN_LIB) PYTHONMALLOC=malloc \
	  $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) tests || status=$$?; \
	rm -f $(EXT); \
	$(PY) setup.py -q build_ext --inplace --force && exit $$status

demo: build
	$(PY) examples/demo.py

bench: build
	$(PIP) install -r requirements-bench.txt
	$(PY) benchmarks/bench_inmemory.py
	$(PY) benchmarks/bench_redis.py
	$(PY) benchmarks/bench_redis.py --loop uvloop
	$(PY) benchmarks/bench_multilevel.py
	$(PY) benchmarks/bench_multilevel.py --loop uvloop
	$(PY) benchmarks/chart.py

clean:
	rm -rf build dist *.egg-info bruno_memory_c/*.so .pytest_cache $(VENV)/.build-stamp .venv-3.*/.build-stamp
