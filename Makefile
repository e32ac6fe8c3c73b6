# Thin entry points; the work is in deploy/ and tests/ scripts.
#   make run    install what is missing, build, start Redis + 2 nodes + admin (Ctrl-C stops all)
#   make test   install what is missing, build (normal + ASan/UBSan), run every test
#   make bench  run the benchmarks and write docs/benchmarks.md
#   make fuzz   run each libFuzzer target for FUZZ_SECONDS (default 30)
.PHONY: run test bench fuzz build deps clean

deps:
	bash deploy/install-deps.sh

build: deps
	bash tests/build.sh build

run: deps
	bash deploy/run-local.sh

test: deps
	bash tests/run-all.sh

bench: deps
	bash tests/bench/run.sh

fuzz: deps
	bash tests/fuzz/run.sh $${FUZZ_SECONDS:-30}

clean:
	rm -rf build build-asan build-fuzz
