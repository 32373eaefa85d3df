# corral: the two commands that do everything on a fresh Debian 12 machine (as root):
#   make demo   build a three-node lab on this machine, migrate the test guest, drain its node
#   make test   lint, type-check and run the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.corral-installed

.PHONY: demo test deps venv image lint typecheck unit integration faults clean help \
	bench bench-overhead bench-downtime bench-throughput bench-convergence bench-control \
	bench-libvirt bench-peer-link bench-plan bench-disk bench-drain bench-scale bench-scale-etcd
RUNS ?= 3

help:
	@echo "make demo   - three-node lab: boot the test guest, migrate it there and back, drain its node"
	@echo "make test   - ruff, mypy --strict and every test (needs root)"
	@echo "make deps   - install the Debian packages (root)"
	@echo "make venv   - the virtual environment with corral and its dev tools"
	@echo "make faults - the fault-injection matrix, RUNS times (3), to bench/results/"
	@echo "make bench  - every benchmark (~25 min), results and plots in bench/results/"
	@echo "              (one at a time: make bench-overhead, bench-downtime, bench-throughput,"
	@echo "               bench-convergence, bench-control, bench-plan)"
	@echo "make bench-libvirt - installs libvirt, then corral against virsh migrate --live"
	@echo "make bench-disk - installs libvirt, then --with-local-disks against --copy-storage-all"
	@echo "make bench-drain - drain a node of 6 guests, --parallel 1, 2, 4, against single migrations"
	@echo "make bench-peer-link - a request to a peer over a new TLS connection vs a kept one"
	@echo "make bench-scale - idle agents' CPU, node list and offline detection at 2 to 32 nodes"
	@echo "make bench-scale-etcd - the same with the state in a 3-member etcd (--state etcd)"

deps:
	@scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

image: deps venv
	$(BIN)/corral lab image

demo: deps venv image
	$(BIN)/corral lab demo

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit -q

integration: deps venv image
	$(BIN)/pytest tests/integration -q

test: deps venv image lint typecheck
	$(BIN)/pytest tests -q

faults: deps venv image
	$(BIN)/python bench/faults_matrix.py --runs $(RUNS)

bench: deps venv image
	BENCH_COMMAND="make bench" $(BIN)/python -m bench.run_all

bench-overhead bench-downtime bench-throughput bench-convergence: deps venv image
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.$(subst bench-,,$@)
	$(BIN)/python -m bench.plots

bench-libvirt: deps venv image
	scripts/install-libvirt.sh
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.libvirt

bench-control: deps venv image
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.control_plane

bench-plan: deps venv image
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.plan_accuracy

bench-disk: deps venv image
	scripts/install-libvirt.sh
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.disk_copy

bench-drain: deps venv image
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.drain

bench-scale: deps venv
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.scale --sizes 2,4,8,16,32

bench-scale-etcd: deps venv
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.scale --state etcd

bench-peer-link: deps venv image
	BENCH_COMMAND="make $@" $(BIN)/python -m bench.peer_link

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
