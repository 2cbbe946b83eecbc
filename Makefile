PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-slice bench bench-leaderboard bench-ws bench-idle venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/pulseline demo

test: $(STAMP)
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi; exit $$rc

LINT_PATHS := actors api cluster devices history launch leaderboards sims storage

lint: $(STAMP)
	$(BIN)/mypy --ignore-missing-imports --follow-imports=silent $(LINT_PATHS)
	$(BIN)/python -m pyflakes $(LINT_PATHS) scripts tests
	$(BIN)/lint-imports

bench-slice: $(STAMP)
	$(BIN)/pulseline bench --devices 1000 --sessions 10 --seconds 60 --board-hz 10 --report bench-slice.json

bench: $(STAMP)
	$(BIN)/python -m launch.capacity --shapes phones,hubs --out bench-capacity.json

bench-ws: $(STAMP)
	$(BIN)/python scripts/bench_ws.py --clients 500 --seconds 10 --report bench-ws.json

bench-idle: $(STAMP)
	$(BIN)/python scripts/bench_idle.py --seconds 20 --classes 10 --riders 20 --report bench-idle.json

bench-leaderboard: $(STAMP)
	$(BIN)/python scripts/bench_leaderboard.py --sizes 1000000,10000000 $(BENCH_ARGS) --report bench-leaderboard.json

clean:
	rm -rf $(VENV) .pulseline
