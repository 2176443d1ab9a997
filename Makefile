# lensblur: `make demo` and `make test` work from a clean clone with nothing installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on this machine's disk; a loose `torch` pulls GBs of CUDA packages.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test docs gallery bench bench-cpu bench-pytest install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q --no-build-isolation -e ".[test,triton,models,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lensblur demo --out demo_out

# pytest exits 5 when it collects no tests: that is a failure too.
test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the API pages import every module: -W fails on any docstring warning.  Open docs/_build/html/index.html
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# re-render the committed gallery pictures (docs/_static/gallery/*.png) from the demo scene
gallery: $(STAMP)
	$(PY) docs/gallery.py

# full sweep on CUDA, quick sweep on CPU; writes benchmarks/RESULTS.md and benchmarks/plots/
bench: $(STAMP)
	$(PY) -m benchmarks

bench-cpu: $(STAMP)
	$(PY) -m benchmarks --quick --device cpu

bench-pytest: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-only

clean:
	rm -rf demo_out docs/_build .pytest_cache build *.egg-info

# accuracy against a path tracer (docs/accuracy.rst): installs Mitsuba 3 (+ LLVM 19 for its fast
# llvm_ad_rgb variant when apt-get may run; else the ~10x slower scalar_rgb), re-renders the
# references into benchmarks/groundtruth/data/, re-scores and rewrites the report and figures
.PHONY: validate
validate: $(STAMP)
	$(PY) -m pip install -q "mitsuba>=3.5"
	-apt-get install -y -q libllvm19 >/dev/null 2>&1 || echo "validate: no libllvm19, Mitsuba uses scalar_rgb (slow)"
	$(PY) -m benchmarks.groundtruth.render
	$(PY) -m benchmarks.groundtruth.score --report
