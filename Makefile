# Two commands for a newcomer: `make serve` (the main job) and `make test` (the whole suite).
# Both create .venv from the project's own requirements files; nothing else is assumed
# beyond Python >= 3.10 and access to PyPI.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PORT   ?= 3000

.PHONY: benchmark-path benchmark-peers benchmark-memory benchmark-oversized benchmark-scan benchmark-reload image lock serve test lint bootstrap import bento container-test replicas-test load benchmark soak fuzz install-train install-test clean-registry help vendor-map

help:
	@echo "make serve   set up, bootstrap the demo model when no registry is configured, serve"
	@echo "make test    set up and run the whole test suite"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files re-run pip whenever a requirements file changes.
$(VENV)/.train-installed: requirements/serve.txt requirements/train.txt | $(PY)
	$(PIP) install --quiet -r requirements/train.txt
	touch $@

$(VENV)/.test-installed: requirements/serve.txt requirements/train.txt requirements/load.txt requirements/test.txt | $(PY)
	$(PIP) install --quiet -r requirements/test.txt
	touch $@

install-train: $(VENV)/.train-installed
install-test: $(VENV)/.test-installed

bootstrap: install-train
	$(PY) -m demo.bootstrap --only-embedded

import: bootstrap
	BENTOML_DO_NOT_TRACK=True $(PY) import_model.py

serve: import
	BENTOML_DO_NOT_TRACK=True $(VENV)/bin/bentoml serve service:Localization --port $(PORT)

test: install-test
	$(PY) -m pytest

# Lint as a habit (CI runs it before the tests): ruff's checks and its formatter, unchanged.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bento: import
	BENTOML_DO_NOT_TRACK=True $(VENV)/bin/bentoml build .

# The bento's fully pinned, hashed serving lock, compiled from requirements/serve.txt for the
# image's platform (Linux x86_64, Python 3.11). Re-run after changing serve.txt.
lock: install-test
	$(VENV)/bin/uv pip compile requirements/serve.txt --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements/serve.lock

# The map page's third-party files (Leaflet, topojson-client, Natural Earth), from npm.
vendor-map:
	scripts/vendor_map.sh

# The serving image of the newest bento (BACKEND=podman for podman). Containerized from $TMPDIR:
# BentoML 1.4.40 refuses the bento's dockerfile_template outside the working directory.
BACKEND ?= docker
IMAGE   ?= rf-localization:latest
image: bento
	cd "$${TMPDIR:-/tmp}" && BENTOML_DO_NOT_TRACK=True $(abspath $(VENV))/bin/bentoml containerize \
		--backend $(BACKEND) rf_localization:latest -t $(IMAGE)

container-test: install-train
	deploy/container-test.sh

# Two replicas of the image behind HAProxy with one shared Redis: cross-replica cache hits, one
# replica killed under load (benchmarks/results/replicas.json). Root and apt, like container-test.
replicas-test: install-train
	deploy/replicas-test.sh

# Load test against a running service: make load URL=http://localhost:3000 USERS=32 DURATION=60s
URL      ?= http://localhost:3000
USERS    ?= 32
DURATION ?= 60s
load: install-test
	mkdir -p benchmarks/results
	$(VENV)/bin/locust -f locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
	  --host $(URL) --csv benchmarks/results/locust --html benchmarks/results/locust.html \
	  --only-summary

# The iq_data decode micro-benchmark; the peers (mlflow models serve, a per-request FastAPI
# server); then
# burst-then-quiet for every batching policy (greedy, cork, proxy), then greedy against CORK
# under sustained load, interleaved round by round.
# MODEL=resnet18 (or resnet34): the same peer comparison, every dispatch policy, and "burst then
# quiet", on a backbone-sized model with the seed's contract (benchmarks/big_model.py), built and
# registered in a scratch registry; results in benchmarks/results/*-$(MODEL).md.
MODEL ?= demo
benchmark: import install-test
ifeq ($(MODEL),demo)
	$(PY) -m benchmarks.decode_bench
	$(PY) -m benchmarks.asgi_layers
	$(PY) -m benchmarks.compare
	$(PY) -m benchmarks.burst
	$(PY) -m benchmarks.steady
	$(PY) -m benchmarks.seed_sla
	$(PY) -m benchmarks.path
else
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	uri=$$($(PY) -m benchmarks.big_model --registry "$$scratch" --arch $(MODEL) | tail -1) && \
	$(PY) -m benchmarks.compare --tracking-uri "$$uri" --label $(MODEL) \
	  --policies greedy,greedy@auto,cork,proxy --encodings iq_b64 --per-client 32 --min-requests 200 \
	  --ceiling-seconds 5 && \
	$(PY) -m benchmarks.burst --tracking-uri "$$uri" --label $(MODEL) && \
	$(PY) -m benchmarks.steady --tracking-uri "$$uri" --label $(MODEL) \
	  --policies greedy,greedy@auto --baseline greedy --levels 1,8,32 --rounds 6 \
	  --requests 400 --burst-seconds 10
endif

# Where a request's time goes: server CPU µs per stage of /predict at c=1 and c=32 (py-spy on
# every worker, wrk; 2 workers, default settings) and in-process timers of each compute stage.
# MODEL=resnet18 as for `benchmark`. Results: benchmarks/results/path[-$(MODEL)].md.
benchmark-path: import install-test
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
ifeq ($(MODEL),demo)
	$(PY) -m benchmarks.path
else
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	uri=$$($(PY) -m benchmarks.big_model --registry "$$scratch" --arch $(MODEL) | tail -1) && \
	$(PY) -m benchmarks.path --tracking-uri "$$uri" --label $(MODEL)
endif

# The same compute (the iq_b64 decode, preprocessing, ONNX Runtime with one thread per process)
# behind KServe's ModelServer, LitServe and Triton (PyTriton), each in its own virtualenv under
# .peers/ from requirements/peers/ (never in the serving image or the test environment), against
# this service and a bare BentoML service (the floor), with wrk: fresh, after a burst, per level.
# MODEL=resnet18 as for `benchmark`. PEERS_ARGS="--seconds 10 --levels 1,8,32,64" passes options
# to benchmarks/peers/run.py. Results: benchmarks/results/peers[-$(MODEL)].md; docs/peers.md.
PEERS      := kserve litserve pytriton
PEERS_ARGS ?=
.PRECIOUS: .peers/%/.installed
.peers/%/.installed: requirements/peers/%.txt requirements/peers/compute.txt
	$(PYTHON) -m venv .peers/$*
	.peers/$*/bin/python -m pip install --quiet --upgrade pip
	.peers/$*/bin/python -m pip install --quiet -r requirements/peers/$*.txt
	touch $@

benchmark-peers: import install-test $(PEERS:%=.peers/%/.installed)
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
ifeq ($(MODEL),demo)
	$(PY) -m benchmarks.peers.run $(PEERS_ARGS)
else
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	uri=$$($(PY) -m benchmarks.big_model --registry "$$scratch" --arch $(MODEL) | tail -1) && \
	$(PY) -m benchmarks.peers.run --tracking-uri "$$uri" --label $(MODEL) $(PEERS_ARGS)
endif

# What a reload costs under load; needs two imports in the store (python -m demo.bootstrap
# --force, then make import).
benchmark-reload: import install-test
	$(PY) -m benchmarks.reload

# 16 concurrent 60 MB /predict bodies against the old single body budget and the per-route one.
benchmark-oversized: import install-test
	$(PY) -m benchmarks.oversized

# 32 concurrent maximum-size bodies of each kind, without and with the in-flight body budget
# (MAX_INFLIGHT_BYTES); then throughput after kill -9 of one worker under 16 keep-alive
# clients, without and with the keep-alive bound (CONNECTION_MAX_AGE_S, CONNECTION_MAX_REQUESTS).
benchmark-memory: import install-test
	$(PY) -m benchmarks.memory
	$(PY) -m benchmarks.rebalance

# 10 000 invented paths against BentoML's raw-path metric labels and the route labels
benchmark-scan: import install-test
	$(PY) -m benchmarks.scan

# Soak: locust at moderate load for SOAK_SECONDS, errors and RSS over time.
SOAK_SECONDS ?= 600
soak: import install-test
	$(PY) -m benchmarks.soak --duration $(SOAK_SECONDS)

# Longer fuzzing of every API than the test suite's bounded run.
FUZZ_EXAMPLES ?= 500
fuzz: import install-test
	$(PY) -m benchmarks.fuzz --max-examples $(FUZZ_EXAMPLES)

clean-registry:
	rm -rf local_registry
