# The README's two commands. Each does all the set-up it needs on a fresh Debian 12 machine:
#   make demo   install missing packages, fetch the tokenizer, build, make the tiny model, show it
#   make test   install missing packages, fetch the tokenizer, build, run the whole test suite
#               (and a few seconds of each fuzzer, built with clang in build-fuzz/)
#   make fuzz   the fuzzers for FUZZ_SECONDS each, growing tests/fuzz/generated/
# A second run installs nothing and rebuilds only what changed.

BUILD_DIR ?= build
JOBS ?= 2
DEMO_MODEL ?= models/tiny
CMAKE_ARGS ?=
STRATA = $(BUILD_DIR)/cli/strata
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZERS ?= $(patsubst tests/fuzz/%_fuzzer.cc,%,$(wildcard tests/fuzz/*_fuzzer.cc))

.PHONY: all deps tokenizer configure build test demo bench clean fuzz-build fuzz

all: build

deps:
	@deploy/install-deps.sh

tokenizer: deps
	@deploy/tokenizer/fetch.sh >/dev/null

# (Re)configure only when there is no build yet or the tokenizer folder moved.
configure: tokenizer
	@tokdir=$$(deploy/tokenizer/fetch.sh | tail -n 1); \
	if [ ! -f $(BUILD_DIR)/build.ninja ] || \
	   ! grep -qxF "STRATA_TOKENIZER_DIR:PATH=$$tokdir" $(BUILD_DIR)/CMakeCache.txt; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DSTRATA_TOKENIZER_DIR="$$tokdir" $(CMAKE_ARGS); \
	fi

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

test: build fuzz-build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)
	@if [ -f $(FUZZ_DIR)/CTestTestfile.cmake ]; then \
	  ctest --test-dir $(FUZZ_DIR) --output-on-failure -j $(JOBS); fi

# The libFuzzer targets of tests/fuzz: their own clang build (ASan + UBSan), of only what they
# fuzz; configured like `configure`. Skipped, with a note, where clang is missing.
fuzz-build: tokenizer
	@if ! command -v clang++ >/dev/null; then echo "fuzz: no clang++, the fuzzers are skipped"; exit 0; fi; \
	tokdir=$$(deploy/tokenizer/fetch.sh | tail -n 1); \
	if [ ! -f $(FUZZ_DIR)/build.ninja ] || \
	   ! grep -qxF "STRATA_TOKENIZER_DIR:PATH=$$tokdir" $(FUZZ_DIR)/CMakeCache.txt; then \
	  cmake -S . -B $(FUZZ_DIR) -G Ninja -DSTRATA_FUZZ=ON -DCMAKE_C_COMPILER=clang \
	    -DCMAKE_CXX_COMPILER=clang++ -DSTRATA_TOKENIZER_DIR="$$tokdir"; \
	fi; \
	cmake --build $(FUZZ_DIR) -j $(JOBS)

# Long runs, one fuzzer after the other (FUZZERS=tokenizer picks some); stops at the first finding.
fuzz: fuzz-build
	@for f in $(FUZZERS); do \
	  FUZZ_KEEP_CORPUS=1 tests/fuzz/run_fuzzer.sh $(FUZZ_DIR)/tests/fuzz/$${f}_fuzzer \
	    $(FUZZ_SECONDS) tests/fuzz/generated/$$f || exit 1; \
	done

demo: build
	@deploy/demo.sh $(STRATA) $(DEMO_MODEL)

# The benchmarks: each prints figure, limit and ratio and appends to bench/results/.
bench: build
	@$(BUILD_DIR)/bench/micro/tokenizer_bench
	@$(BUILD_DIR)/bench/micro/linear_bench
	@$(STRATA) bench engine

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR)
