# celery-stack — single entry point.
#   make up     converge the local environment: one Debian 13 container host
#               (inventories/local) with the whole site; re-runnable
#   make down   remove that host
#   make test   everything CI runs: lint, unit tests, the app image, every Molecule scenario
# Everything else is a building block of those three.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PY_COLORS := 0
export ANSIBLE_FORCE_COLOR := 0
SCENARIOS   ?= default bookworm
IMAGES      ?= images/debian13.conf images/debian12.conf images/app-base.conf
TIMINGS     := .build/timings.txt

.PHONY: up down test lint unit app-image molecule venv docker images plan clean help

help:
	@sed -n '2,6p' Makefile | sed 's/^# \{0,1\}//'

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

lint: venv
	scripts/timed.sh $(TIMINGS) "lint: yamllint" yamllint --strict .
	scripts/timed.sh $(TIMINGS) "lint: ansible-lint" ansible-lint --profile production

unit: venv
	scripts/timed.sh $(TIMINGS) "unit: pytest" pytest tests/unit

app-image: venv images
	scripts/timed.sh $(TIMINGS) "app image: pytest" pytest tests/app

molecule: venv images
	@for s in $(SCENARIOS); do scripts/molecule-test.sh $$s $(TIMINGS); done

test: venv
	@mkdir -p .build; : > $(TIMINGS)
	$(MAKE) --no-print-directory lint unit app-image molecule
	@echo; echo "== phase times (seconds)"; cat $(TIMINGS)

up: venv images
	ansible-playbook playbooks/local-host.yml
	ansible-playbook -i inventories/local playbooks/site.yml

down: venv
	ansible-playbook playbooks/local-host.yml -e local_host_state=absent

plan: venv
	ansible-playbook -i inventories/$(or $(ENV),production) playbooks/plan.yml

clean: down
	rm -rf .build
