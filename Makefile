# The README's commands: `make demo` runs the main job on the bundled sample mammograms,
# `make test` runs the test suite. Both create .venv and install the project when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MAMMO := $(BIN)/mammo
STAMP := $(VENV)/.installed
DATA_DIR := $(or $(MAMMO_DATA_DIR),var)

.PHONY: install demo test clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Start the local model server in the background, stop it when the flow has run (also when
# a step fails), then print the results.
demo: install
	$(MAMMO) db init
	$(MAMMO) models bootstrap
	$(MAMMO) samples copy
	mkdir -p $(DATA_DIR)
	$(MAMMO) serve-models > $(DATA_DIR)/serve-models.log 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT; \
	$(MAMMO) models wait && $(MAMMO) process
	$(MAMMO) results

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DATA_DIR)
