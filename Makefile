# One-command set-up, tests and demo. See README.md.
.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

demo: setup
	@bash scripts/demo.sh

# bench train's real-pipeline row needs a store: the demo's once `make demo` has made it (from here,
# bench train's own default is ./alexkit-store, else the synthetic row alone).
BENCH_DATA = $(if $(wildcard demo/alexkit-store/manifest.json),--data demo/alexkit-store)

bench: setup
	.venv/bin/alexkit bench prepare
	.venv/bin/alexkit bench loader
	.venv/bin/alexkit bench train $(BENCH_DATA)

clean:
	rm -rf demo .pytest_cache
