# Two entry points a fresh clone must support: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# benchmarks/ may not exist yet; lint only the folders that do.
LINTED := $(wildcard src tests benchmarks)
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types unit unit-uvloop venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tether demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

types: $(STAMP)
	$(BIN)/mypy --strict src/tether

unit: $(STAMP)
	$(BIN)/pytest -q

# The suites closest to the event loop again, each test on uvloop (tests/conftest.py,
# TETHER_TEST_LOOP): timers, accepting, closing and resuming behave differently there
# (a millisecond clock, a list for Server.sockets), and `--loop uvloop` offers it.
UVLOOP_SUITES := tests/test_client.py tests/test_server.py tests/test_resume_client.py \
	tests/test_resume_server.py tests/test_session.py tests/test_keepalive.py \
	tests/test_chaos.py tests/test_waiters.py tests/test_client_sendqueue.py \
	tests/integration/test_resume_sockets.py tests/integration/test_uvloop.py

unit-uvloop: $(STAMP)
	TETHER_TEST_LOOP=uvloop $(BIN)/pytest -q $(UVLOOP_SUITES)

test: lint types unit unit-uvloop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
