# meshcore: `make demo` runs the demo mesh, `make test` runs every check. Both set up what they
# need on a fresh machine (a virtualenv in .venv, the Rust extension in development mode).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CARGO := cargo --quiet
CARGO_DIR := ext
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help dev release test lint fmt bench demo protos clean

help:
	@echo "make demo     set up, then run the demo mesh on 127.0.0.1 (the main job)"
	@echo "make test     set up, then ruff, mypy --strict, cargo fmt/clippy/test, pytest"
	@echo "make dev      set up .venv and build the extension (dev profile)"
	@echo "make release  build the extension with the release profile (for benchmarks)"
	@echo "make bench    release build, then the benchmarks in bench/"
	@echo "make lint     ruff, mypy, cargo fmt --check, clippy"
	@echo "make fmt      ruff format + fix, cargo fmt"
	@echo "make protos   regenerate the Python modules of our .proto files (grpcio-tools)"

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["all"] + x["dev"] + x["bench"]))' \
		> $(VENV)/requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements.txt
	touch $@

# The extension in development mode (dev profile: fast to build; tests do not measure speed).
dev: $(VENV)/.deps
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --quiet
	$(PY) -c "import meshcore._core"

# The release profile, for benchmarks (bench/ records which profile a figure came from).
release: $(VENV)/.deps
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --quiet --release
	$(PY) -c "import meshcore._core"

lint: dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy --strict src
	cd $(CARGO_DIR) && $(CARGO) fmt --all --check
	cd $(CARGO_DIR) && $(CARGO) clippy --all-targets -- -D warnings

test: lint
	cd $(CARGO_DIR) && $(CARGO) test
	$(PY) -m pytest

fmt: $(VENV)/.deps
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench
	cd $(CARGO_DIR) && $(CARGO) fmt --all

bench: release
	$(PY) -m pytest bench -o python_files='bench_*.py' --benchmark-enable -p no:cacheprovider \
		--benchmark-columns=min,median,max,rounds --benchmark-sort=name -q

# The demo mesh: control plane + CA, three services behind real Envoy sidecars (via the agent),
# live traffic and a live change; prints what happened and exits 0 when every check passed.
demo: dev
	$(VENV)/bin/meshcore validate examples/
	$(VENV)/bin/meshcore demo

protos: $(VENV)/.deps
	$(PY) -m meshcore._protos

clean:
	rm -rf $(VENV) ext/target
