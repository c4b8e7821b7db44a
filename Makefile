# Two commands do all the set-up on a fresh machine:
#   make demo   -> builds .venv, installs kadapter, runs the bundled demo end to end
#   make test   -> builds .venv, installs kadapter + test deps, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kadapter-installed

.PHONY: demo test bench mutation docs install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a looser spec pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kadapter demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

# Mutation testing of the modules where a silent change corrupts results (docs/mutation.md);
# slow (~40 minutes for all modules on a quiet 2-core machine with MUTATION_ARGS="--max-children 2"), so not part
# of `make test`. One module: make mutation MODULES=metrics
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[mutation]'
	nice -n 15 $(BIN)/python tools/mutation.py $(MUTATION_ARGS) $(MODULES)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

# The documentation site (mkdocs.yml) into build/site; `.venv/bin/mkdocs serve` to read it while editing
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict -d build/site

clean:
	rm -rf $(VENV) kadapter-work kadapter-work-demo kadapter-work-demo.lock.yaml pipelines/kadapter-work-demo pipelines/kadapter-work-demo.lock.yaml
