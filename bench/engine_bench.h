// `strata bench engine`: decode and prefill speed of the CPU engine next to this machine's
// memory-bandwidth roofline (bytes a step must read ÷ measured bandwidth), recorded in
// bench/results/engine.tsv.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace strata::bench {

struct EngineBenchOptions {
  std::vector<std::string> presets = {"tiny", "small"};
  std::vector<int64_t> batches = {1, 8, 32};
  std::vector<int64_t> contexts = {1024, 32768};
  int64_t prefill_tokens = 8192;
  int64_t long_context = 1048576;  // decode at this context on tiny (0: skip)
  int64_t steps = 8;               // decode steps timed per case
  int threads = 0;
  std::string model_cache;         // where the bench models are made (once)
  std::string tokenizer_dir;
};

absl::Status RunEngineBench(const EngineBenchOptions& options);

// Streaming-read bandwidth of this machine in bytes/s, all threads.
double MeasureMemoryBandwidth(int threads, size_t bytes = size_t{1} << 30);

}  // namespace strata::bench
