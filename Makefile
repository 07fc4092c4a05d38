# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel first, so that the range in pyproject.toml pulls no multi-GB CUDA build.
	$(BIN)/pip install -q "$(TORCH_SPEC)" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	$(BIN)/pip install -q -e ".[test,cluster,demo,live,search,phones]"
	touch $(STAMP)

install: $(STAMP)

# Best effort, never failing the build: the real-browser test (tests/apps/test_live_browser.py) needs Debian's
# Chromium and skips without it. As root with apt-get it is installed (about 1-2 min, ~155 MB of packages).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the real-browser test (apt-get, 1-2 min)"; \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1 \
	    || echo "could not install chromium with apt-get: the real-browser test will skip"; \
	else echo "no /usr/bin/chromium (apt-get install chromium as root): the real-browser test will skip"; fi

# Two workers, each taking a whole test file at a time, so that a module fixture (a tiny trained run) is built once;
# the subprocess-heavy files run beside each other (docs/performance.md, "The test suite's time").
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/python -m ernerf.apps.demo

clean:
	rm -rf $(VENV) data runs outputs multirun
