# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (not in pyproject) to the wheels this machine serves from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# What .venv takes with those wheels (6.5 GB, 3.2 GB of it CUDA libraries): a set-up short of disk says so first.
VENV_MB ?= 7000
OUT ?= runs/demo

.PHONY: demo test lint venv clean browser

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1024)}'); [ "$$free" -ge $(VENV_MB) ] || \
	  echo "make: warning: $(VENV) takes about $(VENV_MB) MB (torch's CUDA wheels); $$free MB free here"
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq $(TORCH_SPEC)
	$(PY) -m pip install -qq -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/sbssl demo --out $(OUT)

# The report test renders report.html in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: venv browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -x --timeout=900

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
