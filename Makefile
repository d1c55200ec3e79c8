# celery-stack — single entry point.
#   make up     converge the local environment: one Debian 13 container host
#               (inventories/local) with the whole site; re-runnable
#   make down   remove that host
#   make test   everything CI runs: lint, unit tests, the app image, every Molecule scenario
#   make bench  the benchmark: recreates the local host, then measures (README "Performance";
#               BENCH_CONVERGE=0 keeps the host of make up, BENCH_SIZE=smoke is the short run)
# Everything else is a building block of these.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PY_COLORS := 0
export ANSIBLE_FORCE_COLOR := 0
SCENARIOS   ?= default bookworm cluster
# Host images: every scenario's (make test); the local host needs only Debian 13.
IMAGES      ?= images/debian13.conf images/debian12.conf images/app-base.conf
LOCAL_IMAGES := images/debian13.conf images/app-base.conf
TIMINGS     := .build/timings.txt
# Versions of the reference app delivered as `docker save` archives: the local
# host starts on the first (app_initial_version), the tests deploy the second
# and roll back. Rebuilt when the app, its lock or its base recipe change.
APP_VERSIONS ?= 1.0.0 1.1.0
APP_ARCHIVES := $(foreach v,$(APP_VERSIONS),.build/app-images/celery-stack-app-$(v).tar.gz)
APP_SOURCES  := $(shell find compose/app -type f -not -name '*.pyc' 2>/dev/null) images/app-base.conf scripts/build-app-image.sh

.PHONY: up down test bench lint unit app-image app-archives molecule venv docker images local-images app-base plan clean help

help:
	@sed -n '2,8p' Makefile | sed 's/^# \{0,1\}//'

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

docker:
	scripts/ensure-docker.sh

images: docker
	@mkdir -p .build
	scripts/timed.sh $(TIMINGS) "images" scripts/build-image.sh $(IMAGES)

local-images: docker
	@mkdir -p .build
	scripts/timed.sh $(TIMINGS) "images" scripts/build-image.sh $(LOCAL_IMAGES)

# The reference app's base image only (its archives are built on it).
app-base: docker
	@mkdir -p .build
	scripts/build-image.sh images/app-base.conf

.build/app-images/celery-stack-app-%.tar.gz: $(APP_SOURCES) | app-base
	@mkdir -p .build/app-images
	scripts/timed.sh $(TIMINGS) "app archive $*" scripts/build-app-image.sh $* --save $@

app-archives: $(APP_ARCHIVES)

lint: venv
	scripts/timed.sh $(TIMINGS) "lint: yamllint" yamllint --strict .
	scripts/timed.sh $(TIMINGS) "lint: ansible-lint" ansible-lint --profile production
	scripts/timed.sh $(TIMINGS) "lint: python syntax" python scripts/check-syntax.py

unit: venv
	scripts/timed.sh $(TIMINGS) "unit: pytest" pytest tests/unit

app-image: venv images
	scripts/timed.sh $(TIMINGS) "app image: pytest" pytest tests/app

molecule: venv images app-archives
	@for s in $(SCENARIOS); do scripts/molecule-test.sh $$s $(TIMINGS); done

test: venv
	@mkdir -p .build; : > $(TIMINGS)
	$(MAKE) --no-print-directory lint unit app-image molecule
	@echo; echo "== phase times (seconds)"; cat $(TIMINGS)

up: venv local-images app-archives
	ansible-playbook playbooks/local-host.yml
	ansible-playbook -i inventories/local playbooks/site.yml

down: venv
	ansible-playbook playbooks/local-host.yml -e local_host_state=absent

BENCH_SIZE     ?= full
BENCH_CONVERGE ?= 1
bench: venv local-images app-archives
	python scripts/bench.py --size $(BENCH_SIZE) $(if $(filter 1,$(BENCH_CONVERGE)),--converge)

plan: venv
	ansible-playbook -i inventories/$(or $(ENV),production) playbooks/plan.yml

clean: down
	rm -rf .build
