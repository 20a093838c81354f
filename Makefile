# One-command set-up, tests and demo. See README.md.
.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

demo: setup
	@bash scripts/demo.sh

bench: setup
	.venv/bin/alexkit bench prepare
	.venv/bin/alexkit bench loader
	.venv/bin/alexkit bench train

clean:
	rm -rf demo .pytest_cache
