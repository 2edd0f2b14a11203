# Two setup commands do everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch pip installs before the package: 2.13.0, the version the tests are run with (pip takes whichever build
# its index offers, e.g. the CPU build from PyTorch's CPU index); override it, e.g. `make TORCH=torch test`.
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test test-oldest clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# The main job, offline: compress the bundled real Whisper base to a lite checkpoint, then transcribe a shipped clip
# with it (txt, srt, vtt, json in outputs/demo).
demo: venv
	$(PY) scripts/calibrate.py
	$(PY) scripts/transcribe.py liteasr_hf/data/clips/jfk_inaugural_1961.flac --model outputs/lite-whisper-base-size80 \
		--output-dir outputs/demo --overwrite
	cat outputs/demo/jfk_inaugural_1961.srt

# TRITON_INTERPRET=1 lets the tests run the Triton kernel on the CPU (Triton's interpreter), where they ask for it with
# attention_kernel="triton" (the default "auto" stays on PyTorch on the CPU); on a GPU: `make test TRITON_INTERPRET=0`.
TRITON_INTERPRET ?= 1
test: venv
	TRITON_INTERPRET=$(TRITON_INTERPRET) $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure" >&2; fi; exit $$rc

# The whole suite again on the oldest transformers pyproject allows (pyproject: transformers>=5.17,<6; `make test` runs
# the newest), since users load the code a checkpoint carries, and the package, with whatever transformers they have.
OLDEST_TRANSFORMERS ?= 5.17.0
OLDEST_VENV ?= .venv-oldest
$(OLDEST_VENV)/.installed: pyproject.toml
	python3 -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(OLDEST_VENV)/bin/python -m pip install -q -e ".[dev]" "transformers==$(OLDEST_TRANSFORMERS)"
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	TRITON_INTERPRET=$(TRITON_INTERPRET) $(OLDEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) outputs
