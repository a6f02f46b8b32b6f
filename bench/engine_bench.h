// `strata bench engine`: decode and prefill speed of the CPU engine next to this machine's
// memory-bandwidth roofline (bytes a step must read ÷ measured bandwidth), recorded in
// bench/results/engine.tsv.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model_config.h"

namespace strata::bench {

struct EngineBenchOptions {
  std::vector<std::string> presets = {"tiny", "small"};
  std::vector<int64_t> batches = {1, 8, 32};
  std::vector<int64_t> contexts = {1024, 32768};
  int64_t prefill_tokens = 8192;
  int64_t long_context = 1048576;  // decode at this context on tiny (0: skip)
  int64_t steps = 8;               // decode steps timed per case
  int threads = 0;
  std::string model_cache;  // where the bench models are made (once)
  std::string tokenizer_dir;
  int64_t layers = 0;            // > 0: only the first N layers of each preset (flash, pro)
  int64_t max_batch_tokens = 0;  // > 0: skip decode cases with batch × context above it
  // A variant of each preset (`variant` names it in the model cache and the results): e.g. the
  // GPU bench's flash-sized attention layers with fewer experts, so its model is quick to make.
  std::string variant;
  std::function<void(engine::ModelConfig&)> edit_config;
  std::string results = "engine";  // bench/results/<results>.tsv
  // After each decode case, where its timed steps' time went, op by op: the model then runs on
  // an engine::ProfilingBackend wrapping the measured backend (engine/profiling_backend.h).
  bool profile_ops = false;
  // The backend to measure; unset: the CPU backend with `threads` threads. A backend whose memory
  // is not host memory is compared with its own device bandwidth.
  std::function<absl::StatusOr<std::unique_ptr<engine::Backend>>()> make_backend;
};

absl::Status RunEngineBench(const EngineBenchOptions& options);

// Streaming-read bandwidth of this machine in bytes/s, all threads.
double MeasureMemoryBandwidth(int threads, size_t bytes = size_t{1} << 30);

}  // namespace strata::bench
