# uqserve: every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
MODEL ?= uqserve_vgg16:latest
PORT ?= 3000
export TF_CPP_MIN_LOG_LEVEL ?= 2
export BENTOML_DO_NOT_TRACK ?= true

SOAK_DURATION ?= 10m
SOAK_USERS ?= 8
USERS ?= 16
SPAWN_RATE ?= 4
DURATION ?= 60s
BENTO ?=
BENCH_ARGS ?=
PEER_ARGS ?=
LOADTEST_ARGS ?=
BENCH_OUTPUT ?= reports/bench
KSERVE_VENV ?= .venv-kserve
JAX_TESTS ?= tests/test_mc_dropout.py tests/test_preprocessing.py tests/test_uncertainty.py \
	tests/test_density.py

.PHONY: install kserve-client train model serve bento container container-test loadtest bench precision soak test test-jax device-wheels device-check lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## a .venv with the project and its dev tools

$(KSERVE_VENV)/.installed: $(STAMP)
	$(BIN)/uv venv -q --python $(BIN)/python $(KSERVE_VENV)
	$(BIN)/uv pip install -q --python $(KSERVE_VENV)/bin/python "kserve>=0.14,<1"
	touch $@

kserve-client: $(KSERVE_VENV)/.installed ## the KServe Python SDK in its own venv ($(KSERVE_VENV)), for the tests that call the service with it

train: $(STAMP) ## train on digits and export to the model store (ARGS="--epochs 5 ...")
	$(BIN)/uqserve train $(ARGS)

model: $(STAMP) ## train the default model unless the store already has $(MODEL)
	@$(BIN)/bentoml models get $(MODEL) >/dev/null 2>&1 \
		|| { echo "$(MODEL) not in the model store: training it"; $(BIN)/uqserve train; }

serve: model ## serve the model on port $(PORT) (from source)
	UQSERVE_MODEL=$(MODEL) $(BIN)/bentoml serve service.service:ApiService --port $(PORT)

bento: model ## build the bento (no Docker needed); GPU: BENTOFILE=bentofile.gpu.yaml (TensorFlow) or bentofile.jax-gpu.yaml
	UQSERVE_MODEL=$(MODEL) $(BIN)/bentoml build -f $(or $(BENTOFILE),bentofile.yaml) .

container: model ## the bento's image <name>:<version> + :latest (Docker, else buildah); GPU: BENTOFILE=bentofile.gpu.yaml
	$(BIN)/python -m deploy.container build --model $(MODEL) --bentofile $(or $(BENTOFILE),bentofile.yaml)

container-test: $(STAMP) ## image of a tiny model run by docker/podman: /readyz, /metadata, /predict checked; IMAGE=... tests yours
	$(BIN)/python -m deploy.container test $(if $(IMAGE),--image $(IMAGE) --model $(MODEL),--tiny)

loadtest: model ## build the bento (or BENTO=tag), serve it, Locust for $(DURATION) with $(USERS) users; reports/loadtest/
	$(BIN)/python -m load_tests.run_loadtest --model $(MODEL) $(if $(BENTO),--bento $(BENTO)) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) $(LOADTEST_ARGS)

bench: model ## in-process MC cost table (BENCH_ARGS), served vs in-process, uqserve vs a plain BentoML service (PEER_ARGS); $(BENCH_OUTPUT)/
	$(BIN)/python -m load_tests.bench $(BENCH_ARGS) --output $(BENCH_OUTPUT)/bench.json
	$(BIN)/python -m load_tests.run_loadtest --model $(MODEL) $(if $(BENTO),--bento $(BENTO)) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) \
		--output $(BENCH_OUTPUT)/served $(LOADTEST_ARGS)
	$(BIN)/python -m load_tests.peer_bench --model $(MODEL) $(if $(BENTO),--bento $(BENTO)) \
		--output $(BENCH_OUTPUT)/peer $(PEER_ARGS)

precision: model ## does a $(BASE_DTYPE) base (default bfloat16) answer as float32 does? reports/precision/
	$(BIN)/python -m training.precision --model $(MODEL) --base-dtype $(or $(BASE_DTYPE),bfloat16)

soak: model ## serve the bento, Locust for $(SOAK_DURATION), watch every process's memory; reports/soak/
	$(BIN)/python -m load_tests.soak --model $(MODEL) --users $(SOAK_USERS) \
		--duration $(SOAK_DURATION) $(if $(BENTO),--bento $(BENTO))

device-wheels: $(STAMP) ## the wheels the GPU machine lacks (Python 3.12, manylinux) into .device/wheels, listed with sizes
	$(BIN)/python -m load_tests.device_wheels

device-check: $(STAMP) ## the GPU script's CPU dry run: bash load_tests/device_check.sh OUT --cpu --quick; reports/device-dry/
	bash load_tests/device_check.sh $(or $(OUT),reports/device-dry) --cpu --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) $(KSERVE_VENV)/.installed ## lint, the whole test suite on TensorFlow, then the model's tests on JAX
	$(MAKE) lint
	UQSERVE_KSERVE_PYTHON=$(KSERVE_VENV)/bin/python $(BIN)/python -m pytest $(ARGS)
	$(MAKE) test-jax

test-jax: $(STAMP) ## the predictor, preprocessing, uncertainty and density tests on Keras' JAX backend
	UQSERVE_KERAS_BACKEND=jax $(BIN)/python -m pytest $(JAX_TESTS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
