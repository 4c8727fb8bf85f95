# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Sessions of pytest workers: the suite is tuned for 2 cores.
WORKERS ?= 2

.PHONY: install demo lm-demo cifar-demo test test-slow docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Hinton et al. (2015) at CPU scale: teacher, student, distilled student,
# omitted-class experiment; 3 seeds; prints the table, writes the plot and
# docs/results.md.
demo: $(STAMP)
	$(BIN)/python -m experiments.hinton --config=experiments/configs/hinton.py:cpu --workdir=runs/hinton_cpu
	$(BIN)/python -m experiments.make_results

# Token-level distillation of a byte-level Transformer LM on the Python
# standard library's sources: teacher, 5 student variants, 3 seeds.
lm-demo: $(STAMP)
	$(BIN)/python -m experiments.lm_kd --config=experiments/configs/lm_kd.py:cpu --workdir=runs/lm_kd_cpu
	$(BIN)/python -m experiments.make_results

# The CIFAR KD benchmark's methods (vanilla, KD, FitNets, AT, DKD, CRD, DML,
# multi-teacher) on scikit-learn's 8x8 digits: 3 seeds, a few minutes alone on 2 cores.
cifar-demo: $(STAMP)
	$(BIN)/python -m experiments.cifar_kd --config=experiments/configs/cifar_kd.py:cpu --workdir=runs/cifar_kd_cpu
	$(BIN)/python -m experiments.make_results

test: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) -m 'not slow' tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow tests

docs: $(STAMP)
	$(BIN)/python -m sphinx -W -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) docs/_build runs
