# Entry points: make run | make test | make bench | make lint | make docs
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export AIRFLOW_HOME ?= $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export GX_ANALYTICS_ENABLED := false
export NO_PROXY := *

.PHONY: venv run ui test soak bench bench-validate bench-scale lint docs clean trial-pki

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	touch $(STAMP)

## run: one daily reporting cycle on the embedded defaults (demo source DB, local AMS receiver);
## RUN_ARGS="--municipalities 101,147" runs several municipalities, one DAG each
run: $(STAMP)
	$(BIN)/ams-report demo $(RUN_ARGS)

## ui: the Airflow UI on the demo (airflow standalone + the local receiver); Ctrl-C stops everything
ui: $(STAMP)
	$(BIN)/ams-report ui $(UI_ARGS)

## test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## soak: the delivery protocol's model-based test, random examples for SOAK_SECONDS (default 1200)
SOAK_SECONDS ?= 1200
soak: $(STAMP)
	AMS_SOAK=1 AMS_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest -p no:cacheprovider -s -q \
		tests/test_delivery_model.py -k soak

## bench: area 1's whole cycle beside a floor (full, no change, 1 % changed), then the validation-only
## benchmark; ROWS=1000000 (default 100000), BENCH_ARGS="--linear-from 100000", "--source-url postgresql://...",
## "--area 3" (bench/cycle.py --help)
bench: $(STAMP)
	$(BIN)/python bench/cycle.py $(if $(ROWS),--rows $(ROWS)) $(BENCH_ARGS)

## bench-validate: throughput and peak memory of the contract and the data-quality suite alone
bench-validate: $(STAMP)
	$(BIN)/python bench/validate_area1.py $(BENCH_ARGS)

## bench-scale: N municipalities on one Celery worker, then on two (processes on this machine; PostgreSQL
## and Redis on loopback): wall time, records/s, speed-up. BENCH_SCALE_ARGS="--municipalities 6 --persons 2000
## --concurrency 1" (bench/scale_out.py --help)
bench-scale: $(STAMP)
	$(BIN)/python bench/scale_out.py $(BENCH_SCALE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy transforms expectations delivery receiver cycle reports cli demo deployment

## docs: regenerate docs/fields.md and the XSD from the registry
docs: $(STAMP)
	$(BIN)/ams-report docs

## trial-pki: a throw-away PKI for docker-compose's trial receiver, outside the repository
AMS_TRIAL_PKI_DIR ?= $(HOME)/.ams/trial-pki
trial-pki: $(STAMP)
	$(BIN)/python -m delivery.security $(AMS_TRIAL_PKI_DIR) --server-name ams-receiver --days 365

clean:
	rm -rf var
