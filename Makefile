# The two commands a fresh machine needs (see README.md): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: demo test lint unit cluster bootstrap up down images benchmarks

bootstrap:
	@scripts/bootstrap.sh

## Bring up the local learning and production clusters, S3 and registry; run the main job.
demo: bootstrap
	$(VENV)/kakehashi demo

## The whole suite: lint, type-check, then unit and cluster tests against real local servers.
## `dev up` runs first so the (cold: ~35 min) Go builds show their progress, and builds the
## images the tests run where there are real nodes (content-cached: unchanged, seconds): the
## training and serving images, the other notebook images (they share the training image's
## layers), and the operator and GitOps bot images that run in the clusters.
TEST_IMAGES ?= training,serving,code-server,jupyter-code-server,operator,gitops-bot
test: bootstrap lint
	KAKEHASHI_DEV_IMAGES=$(TEST_IMAGES) $(VENV)/kakehashi dev up
	$(VENV)/pytest tests

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports

unit: bootstrap
	$(VENV)/pytest tests/unit

up: bootstrap
	$(VENV)/kakehashi dev up

down:
	$(VENV)/kakehashi dev down

## The project's images (training, serving; `make images IMAGES="operator"` for others), built
## from its Dockerfiles with buildah and pushed to the local registry (`dev up` first).
images: bootstrap
	$(VENV)/kakehashi dev images $(IMAGES)

benchmarks: bootstrap
	$(VENV)/python benchmarks/operator_throughput.py
	$(VENV)/python benchmarks/inference.py
	$(VENV)/python benchmarks/cold_start.py
	$(VENV)/python benchmarks/baking.py
	$(VENV)/python benchmarks/delivery.py
	$(VENV)/python benchmarks/gitops.py
