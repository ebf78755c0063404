# Two commands, Python 3.11+ the only prerequisite (plus a C++ compiler for annoy's build):
#   make demo   set up, generate demo data, build the index, serve it on http://127.0.0.1:8000
#               (make demo DEMO_PORT=8001 for another port; rm -rf demo to start over)
#   make test   set up and run the whole test suite
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
DEMO_USERS ?= 10000
DEMO_DIR ?= demo
DEMO_PORT ?= 8000
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test lint bench clean

$(UV):
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

setup: $(UV)
	$(UV) sync --frozen --inexact --python $(PYTHON)

demo: setup
	@test -f $(DEMO_DIR)/data/user_course_views.csv || \
		$(PY) -m similarity_api generate --users $(DEMO_USERS) --seed 42 --out $(DEMO_DIR)/data
	@test -e $(DEMO_DIR)/artifacts/current || \
		$(PY) -m similarity_api build --data-dir $(DEMO_DIR)/data --artifacts-dir $(DEMO_DIR)/artifacts
	$(PY) -m similarity_api serve --artifacts-dir $(DEMO_DIR)/artifacts --host 127.0.0.1 --port $(DEMO_PORT)

test: setup
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(UV)
	$(UV) sync --frozen --inexact --python $(PYTHON) --group bench

clean:
	rm -rf $(TOOLS) $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
