# revsde: `make demo` runs the quick benchmark on the built-in image model, `make test` runs the tests. Both set up .venv first.
#
# GPU users: pick the torch build before the first setup, e.g.
#   make setup TORCH_SPEC='torch==2.13.0 --index-url <the wheel index of your CUDA build>'
# (setup reruns by itself when TORCH_SPEC or pyproject.toml changes).

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.revsde-setup

.PHONY: setup install demo test test-slow clean

# Install only when the venv is missing, pyproject.toml is newer, or TORCH_SPEC changed since last time.
setup:
	@if [ ! -x "$(BIN)/python" ] || [ ! -f "$(STAMP)" ] || [ pyproject.toml -nt "$(STAMP)" ] \
	    || [ "$$(cat "$(STAMP)")" != "$(TORCH_SPEC)" ]; then \
	    $(MAKE) --no-print-directory install; fi

# torch first and explicitly, so the `torch>=2.1` requirement is already met and pip never swaps builds.
install:
	@test -x "$(BIN)/python" || $(PYTHON) -m venv "$(VENV)"
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e '.[test]'
	@echo "$(TORCH_SPEC)" > "$(STAMP)"

demo: setup
	$(BIN)/revsde bench image --quick -o out/bench

test: setup
	$(BIN)/python -m pytest -q

# the long convergence checks (every sampler's exact distribution on every SDE, strong orders)
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf out build *.egg-info revsde.egg-info .pytest_cache
