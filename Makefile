# The README's two commands. Each does all the set-up it needs on a fresh Debian 12 machine:
#   make demo   install missing packages, fetch the tokenizer, build, make the tiny model, show it
#   make test   install missing packages, fetch the tokenizer, build, run the whole test suite
# A second run installs nothing and rebuilds only what changed.

BUILD_DIR ?= build
JOBS ?= 2
DEMO_MODEL ?= models/tiny
CMAKE_ARGS ?=
STRATA = $(BUILD_DIR)/cli/strata

.PHONY: all deps tokenizer configure build test demo bench clean

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

test: build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

demo: build
	@deploy/demo.sh $(STRATA) $(DEMO_MODEL)

# The benchmarks: each prints figure, limit and ratio and appends to bench/results/.
bench: build
	@$(BUILD_DIR)/bench/micro/tokenizer_bench
	@$(BUILD_DIR)/bench/micro/linear_bench
	@$(STRATA) bench engine

clean:
	rm -rf $(BUILD_DIR)
