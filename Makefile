.PHONY: setup test demo bench
setup:
	bash scripts/setup.sh
test:
	bash scripts/test.sh
demo:
	bash scripts/demo.sh
bench:
	bash scripts/setup.sh && .venv/bin/python -m bench.run && .venv/bin/python -m bench.lsp && .venv/bin/python -m bench.wasm
