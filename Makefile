# Shortcuts for the scripts in scripts/ (they do the work; this file only names them).
#   make test ARGS="tests/unit -k draw"    make bench BENCH=rating    make lint    make run
.PHONY: lint test bench run ci

ARGS ?=
BENCH ?= *

lint:
	./scripts/lint

test:
	./scripts/test $(ARGS)

# Every scripts/bench_$(BENCH).py in turn (default: all of them).
bench:
	./scripts/venv test,dev
	@set -e; for bench in scripts/bench_$(BENCH).py; do \
		echo "==> $$bench $(ARGS)"; .venv/bin/python "$$bench" $(ARGS); \
	done

run:
	./scripts/run

ci:
	bash .ci/run
