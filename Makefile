# The README's two commands. Each does all the set-up it needs on a fresh Debian 12 machine:
#   make demo   install missing packages, fetch the tokenizer, build, make the tiny model, show it
#   make test   install missing packages, fetch the tokenizer, build, run the whole test suite
#               (and a few seconds of each fuzzer, built with clang in build-fuzz/)
#   make fuzz   the fuzzers for FUZZ_SECONDS each, growing tests/fuzz/generated/
#   make test-asan / test-tsan   the whole ctest suite under ASan+UBSan / TSan, each in its own
#               build folder (build-asan/, build-tsan/; CUDA off)
# A second run installs nothing and rebuilds only what changed.

BUILD_DIR ?= build
JOBS ?= 2
DEMO_MODEL ?= models/tiny
CMAKE_ARGS ?=
STRATA = $(BUILD_DIR)/cli/strata
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZERS ?= $(patsubst tests/fuzz/%_fuzzer.cc,%,$(wildcard tests/fuzz/*_fuzzer.cc))

.PHONY: all deps tokenizer configure build test demo bench clean fuzz-build fuzz test-asan test-tsan \
  tsan-abseil

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

# ---- sanitizers: the whole ctest suite (unit, integration, e2e; not the benchmarks of `make bench`)
# in a build of its own, CUDA off. Every process the tests start inherits the options below and
# writes any report to <dir>/sanitizer-logs/ (named after the executable and pid), so a finding in
# a child a test does not watch (a cluster worker `strata up` restarts, a leak at a server's exit)
# still fails the run; tests/sanitizers/check-logs.sh prints them.
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
SAN_SUPP = $(CURDIR)/tests/sanitizers
ASAN_SANITIZE = address,undefined
SAN_COMMON = halt_on_error=1:log_exe_name=1
# allocator_may_return_null: an allocation too big for the machine fails as it would without ASan
# (the backends turn it into ResourceExhausted, and a test checks that) instead of aborting.
ASAN_ENV = ASAN_OPTIONS=$(SAN_COMMON):log_path=$(CURDIR)/$(ASAN_DIR)/sanitizer-logs/asan:allocator_may_return_null=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:strict_string_checks=1 \
  UBSAN_OPTIONS=$(SAN_COMMON):log_path=$(CURDIR)/$(ASAN_DIR)/sanitizer-logs/ubsan:print_stacktrace=1 \
  LSAN_OPTIONS=suppressions=$(SAN_SUPP)/lsan.supp:print_suppressions=0
# UCX_MEM_MMAP_HOOK_MODE=none: UCX's memory hooks patch glibc's mmap/munmap/madvise in place
# (bistro); under TSan the patched madvise that glibc calls on a thread's stack as the thread exits
# enters TSan's pthread_rwlock interceptor after TSan has torn the thread down: SIGSEGV in every
# process with a UCX transport. The hooks serve UCX's registration cache (RDMA), not tcp/shm.
TSAN_ENV = TSAN_OPTIONS=$(SAN_COMMON):log_path=$(CURDIR)/$(TSAN_DIR)/sanitizer-logs/tsan:allocator_may_return_null=1:second_deadlock_stack=1:suppressions=$(SAN_SUPP)/tsan.supp:print_suppressions=0 \
  UCX_MEM_MMAP_HOOK_MODE=none
# Passed to ctest, e.g. SAN_CTEST_ARGS="-R decode_test" for one binary.
SAN_CTEST_ARGS ?=

# $(call san-configure-build,DIR,SANITIZE[,ENTRY]): configured like `configure` (and again when
# the cache lacks ENTRY, a shell word NAME:TYPE=VALUE passed as -DENTRY), then built.
define san-configure-build
	@tokdir=$$(deploy/tokenizer/fetch.sh | tail -n 1); entry="$(3)"; \
	if [ ! -f $(1)/build.ninja ] || \
	   ! grep -qxF "STRATA_TOKENIZER_DIR:PATH=$$tokdir" $(1)/CMakeCache.txt || \
	   { [ -n "$$entry" ] && ! grep -qxF "$$entry" $(1)/CMakeCache.txt; }; then \
	  cmake -S . -B $(1) -G Ninja -DSTRATA_SANITIZE=$(2) -DSTRATA_WITH_CUDA=OFF \
	    -DSTRATA_TOKENIZER_DIR="$$tokdir" $${entry:+"-D$$entry"} $(CMAKE_ARGS); \
	fi
	@cmake --build $(1) -j $(JOBS)
endef

# $(call san-run,DIR,ENV): the suite with the sanitizer's options; fails on a failed test or on
# any report left in DIR/sanitizer-logs/.
define san-run
	@rm -rf $(1)/sanitizer-logs && mkdir -p $(1)/sanitizer-logs
	@rc=0; $(2) ctest --test-dir $(1) --output-on-failure -j $(JOBS) $(SAN_CTEST_ARGS) || rc=1; \
	tests/sanitizers/check-logs.sh $(1)/sanitizer-logs || rc=1; exit $$rc
endef

test-asan: tokenizer
	$(call san-configure-build,$(ASAN_DIR),$(ASAN_SANITIZE))
	$(call san-run,$(ASAN_DIR),$(ASAN_ENV))

# Debian's Abseil built with TSan (cached; minutes the first time), which the TSan build's
# binaries load instead of /usr/lib's (cmake/strata.cmake: STRATA_TSAN_ABSL_LIBDIR).
tsan-abseil: deps
	@JOBS=$(JOBS) deploy/sanitizers/tsan-abseil.sh >/dev/null

test-tsan: tokenizer tsan-abseil
	$(call san-configure-build,$(TSAN_DIR),thread,STRATA_TSAN_ABSL_LIBDIR:PATH=$$(deploy/sanitizers/tsan-abseil.sh | tail -n 1))
	$(call san-run,$(TSAN_DIR),$(TSAN_ENV))

demo: build
	@deploy/demo.sh $(STRATA) $(DEMO_MODEL)

# The benchmarks: each prints figure, limit and ratio and appends to bench/results/.
bench: build
	@$(BUILD_DIR)/bench/micro/tokenizer_bench
	@$(BUILD_DIR)/bench/micro/linear_bench
	@$(STRATA) bench engine

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR) $(ASAN_DIR) $(TSAN_DIR)
