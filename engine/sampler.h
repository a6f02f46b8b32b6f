// Token sampling (greedy, temperature, top-k, top-p, seeded) and stop handling (EOS, stop
// sequences that must not leak into streamed text).
//
// Threading: a Sampler and a StopMatcher belong to one request; not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace strata::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Only ids below `num_tokens` are ever chosen (the model's vocabulary may be padded past the
  // tokenizer's last id).
  Sampler(const SamplingParams& params, int64_t num_tokens);

  // Greedy picks the highest logit, the lowest id among equals.
  int32_t Sample(const float* logits);
  // log-softmax of the (unscaled) logits at `id`: the logprob reported to clients.
  double LogProb(const float* logits, int32_t id) const;

 private:
  uint64_t NextRandom();

  SamplingParams params_;
  int64_t num_tokens_;
  uint64_t state_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

// Finds stop sequences in streamed text. Push() returns the text that is safe to emit: it holds
// back a tail that could still become a stop sequence, and cuts the text where one completes.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  std::string Push(absl::string_view text);
  // What is held back, at the end of generation (no stop sequence completed).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace strata::engine
