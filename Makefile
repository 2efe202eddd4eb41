# The two commands a fresh machine needs (see README.md): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: demo test lint unit cluster bootstrap up down benchmarks

bootstrap:
	@scripts/bootstrap.sh

## Bring up the local learning and production clusters, S3 and registry; run the main job.
demo: bootstrap
	$(VENV)/kakehashi demo

## The whole suite: lint, type-check, unit tests, then cluster tests against real servers.
test: bootstrap lint
	$(VENV)/pytest tests

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy

unit: bootstrap
	$(VENV)/pytest tests/unit

up: bootstrap
	$(VENV)/kakehashi dev up

down:
	$(VENV)/kakehashi dev down

benchmarks: bootstrap
	$(VENV)/python benchmarks/operator_throughput.py
	$(VENV)/python benchmarks/inference.py
