# MedAdvBench: `make run` runs the main job, `make test` the whole test suite, `make lint` ruff and the
# import contracts (.importlinter), `make test-fast` the suite minus the `slow` tests while developing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast lint clean browser

TORCH := torch==2.14.1 torchvision==0.29.1
# uv resolves the same versions as pip (best match over all indexes) but downloads and installs in parallel:
# 59-78 s with bytecode compiled, against 133-146 s for pip, measured on 2 cores. It is given pip's extra indexes (local disk where a
# machine has them); without uv, or when it fails, pip installs the same set.
PIP_EXTRA_INDEXES = $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
UV_INSTALL = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --index-strategy unsafe-best-match \
	$(addprefix --extra-index-url ,$(PIP_EXTRA_INDEXES))

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	($(BIN)/python -m pip install --quiet "uv>=0.5" && $(UV_INSTALL) $(TORCH) -e ".[dev]") \
		|| (($(BIN)/python -m pip install --quiet $(TORCH) || $(BIN)/python -m pip install --quiet torch torchvision) \
			&& $(BIN)/python -m pip install --quiet -e ".[dev]")
	# reference implementations for the agreement tests (never imported by the project; they pin old deps)
	$(BIN)/python -m pip install --quiet --no-deps pyautoattack==0.2.0 adv-lib==0.2.8
	touch $@

run: $(STAMP)
	$(BIN)/medadv run

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which otherwise slows small
# torch ops tens of times on 2 cores shared with DDP worker processes. pytest-xdist runs one worker per
# core (at most 4), each test file on one worker; fitted test models are shared through tests/shared_fits.py.
XDIST := --numprocesses=auto --maxprocesses=4 --dist loadfile
test: $(STAMP) browser
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(XDIST)

# The suite minus the tests marked `slow` (training, multi-process jobs); CI still runs `make test`.
test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(XDIST) -m "not slow"

# The report test opens the HTML report in Debian's headless chromium: install it when missing and we are
# root with apt-get; otherwise say so and go on (that test then skips with the reason).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			|| echo "note: installing chromium chromium-driver failed; the browser test will skip"; \
	else echo "note: chromium/chromedriver missing and not root with apt-get; the browser test will skip"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
