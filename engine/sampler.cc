#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace strata::engine {

Sampler::Sampler(const SamplingParams& params, int64_t num_tokens)
    : params_(params), num_tokens_(num_tokens), state_(params.seed ^ 0x853C49E6748FEA9Bull) {}

uint64_t Sampler::NextRandom() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int32_t Sampler::Sample(const float* logits) {
  if (params_.temperature <= 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < num_tokens_; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return best;
  }
  // Candidates sorted by logit (ties: lower id first), cut by top-k, softmax at temperature,
  // cut by top-p, then one draw.
  scratch_.clear();
  for (int32_t i = 0; i < num_tokens_; ++i) scratch_.emplace_back(logits[i], i);
  const size_t k = params_.top_k > 0 ? std::min<size_t>(static_cast<size_t>(params_.top_k), scratch_.size())
                                     : scratch_.size();
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::partial_sort(scratch_.begin(), scratch_.begin() + static_cast<std::ptrdiff_t>(k), scratch_.end(), better);
  scratch_.resize(k);
  const float max = scratch_[0].first;
  double total = 0;
  std::vector<double> probs(k);
  for (size_t i = 0; i < k; ++i) total += probs[i] = std::exp((scratch_[i].first - max) / params_.temperature);
  size_t keep = k;
  if (params_.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < k; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += probs[i];
  const double u = static_cast<double>(NextRandom() >> 11) * 0x1.0p-53 * kept;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;
}

double Sampler::LogProb(const float* logits, int32_t id) const {
  float max = logits[0];
  for (int64_t i = 1; i < num_tokens_; ++i) max = std::max(max, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < num_tokens_; ++i) sum += std::exp(static_cast<double>(logits[i] - max));
  return static_cast<double>(logits[id] - max) - std::log(sum);
}

std::string StopMatcher::Push(absl::string_view text) {
  if (stopped_) return "";
  pending_.append(text.data(), text.size());
  // A completed stop sequence: emit what precedes the earliest one, drop the rest.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    size_t at = pending_.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a prefix of some stop sequence.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - (s.empty() ? 0 : 1), pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return stopped_ ? std::string() : out;
}

}  // namespace strata::engine
