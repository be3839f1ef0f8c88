# Two commands do everything on a fresh Debian machine (root, Python 3.11, Node 20):
#   make demo   - install, make a sample clip from real photos, stylize it on 2 MPI ranks
#   make test   - install, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v ffprobe >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: setup
	mkdir -p out
	$(PY) -m scoring sample out/sample.mp4 --seconds 6 --fps 30000/1001 --size 640x360
	$(PY) -m scoring stylize out/sample.mp4 out/sample-styled.mp4 --style 19 --ranks 2
	$(PY) -m scoring probe out/sample-styled.mp4
	@echo "stylized video: out/sample-styled.mp4"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf out $(VENV) *.egg-info
