# chemozone: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= chemozone-demo

.PHONY: demo test test-fast venv-core venv-all sysdeps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel

# core install: no torch, no Qt
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# everything tests need: cellpose (torch, capped by the machine's constraint file), napari + Qt, test tools
$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

# shared libraries Qt's xcb platform plugin loads (each checked: a machine may have some and not others)
QT_SYSLIBS := libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1

# system packages for GUI and report tests (X virtual framebuffer, headless Chromium, GL for Qt)
sysdeps:
	@missing=""; \
	command -v xvfb-run >/dev/null 2>&1 || missing="$$missing xvfb xauth"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	for pkg in $(QT_SYSLIBS); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "please install (as root): apt-get install$$missing"; exit 1; \
	  fi; \
	fi

demo: $(VENV)/.core-installed
	$(BIN)/chemozone demo --out $(DEMO_OUT)

test: sysdeps $(VENV)/.all-installed
	$(BIN)/ruff check .
	xvfb-run -a -s "-screen 0 1600x1200x24" $(BIN)/python -m pytest -q --timeout=1800 --durations=15

test-fast: $(VENV)/.all-installed
	$(BIN)/python -m pytest -q -m "not slow and not gui and not cellpose"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
