#include "router/policy.h"

#include <atomic>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace strata::router {
namespace {

absl::Status NoDecode() { return absl::UnavailableError("no live decode worker is registered"); }

class RoundRobin final : public Policy {
 public:
  std::string name() const override { return "round_robin"; }
  absl::StatusOr<Choice> Choose(const std::vector<Candidate>& prefill,
                                const std::vector<Candidate>& decode, int64_t, int64_t) override {
    if (decode.empty()) return NoDecode();
    const uint64_t n = next_.fetch_add(1);
    Choice c;
    c.decode = static_cast<int>(n % decode.size());
    if (!prefill.empty()) c.prefill = static_cast<int>(n % prefill.size());
    return c;
  }

 private:
  std::atomic<uint64_t> next_{0};
};

class LeastLoad final : public Policy {
 public:
  std::string name() const override { return "least_load"; }
  absl::StatusOr<Choice> Choose(const std::vector<Candidate>& prefill,
                                const std::vector<Candidate>& decode, int64_t /*prompt_tokens*/,
                                int64_t blocks_needed) override {
    if (decode.empty()) return NoDecode();
    Choice c;
    // Decode: free blocks after the requests already sent to it, then fewer running.
    auto decode_key = [&](const Candidate& d) {
      const registry::Load& l = d.record->load;
      const int64_t free_after = l.free_kv_blocks - d.inflight * blocks_needed;
      return std::make_tuple(-free_after, l.running_requests + d.inflight, d.record->id);
    };
    for (int i = 0; i < static_cast<int>(decode.size()); ++i) {
      if (c.decode < 0 || decode_key(decode[static_cast<size_t>(i)]) <
                              decode_key(decode[static_cast<size_t>(c.decode)])) {
        c.decode = i;
      }
    }
    auto prefill_key = [&](const Candidate& p) {
      return std::make_tuple(p.record->load.queued_tokens + p.inflight_tokens,
                             p.record->load.running_requests + p.inflight, p.record->id);
    };
    for (int i = 0; i < static_cast<int>(prefill.size()); ++i) {
      if (c.prefill < 0 || prefill_key(prefill[static_cast<size_t>(i)]) <
                               prefill_key(prefill[static_cast<size_t>(c.prefill)])) {
        c.prefill = i;
      }
    }
    return c;
  }
};

// What one more running request on a decode worker costs, in prompt tokens: it slows every step
// of the worker's batch a little for as long as it runs. A tunable guess (a 64-token prompt chunk
// costs a CPU worker about what a few decode steps of a busy batch do).
constexpr int64_t kDecodeLoadTokens = 64;
// Moving a token's KV from a prefill to a decode worker, against computing it: the hand-off is
// under 1% of a prefill's time (bench/results/serve.tsv), so 1/64 of a token.
constexpr int64_t kTransferDivisor = 64;

class KvAware final : public Policy {
 public:
  explicit KvAware(const PolicyOptions& options) : options_(options) {}
  std::string name() const override { return "kv_aware"; }
  bool uses_prefix_index() const override { return true; }

  absl::StatusOr<Choice> Choose(const std::vector<Candidate>& prefill,
                                const std::vector<Candidate>& decode, int64_t prompt_tokens,
                                int64_t blocks_needed) override {
    if (decode.empty()) return NoDecode();
    Choice c;
    // Prefill: queue, plus what of this prompt it would compute.
    auto prefill_cost = [&](const Candidate& p) {
      return p.record->load.queued_tokens + p.inflight_tokens + (prompt_tokens - p.cached_tokens);
    };
    for (int i = 0; i < static_cast<int>(prefill.size()); ++i) {
      const Candidate& p = prefill[static_cast<size_t>(i)];
      if (c.prefill < 0 || std::make_tuple(prefill_cost(p), p.record->id) <
                               std::make_tuple(prefill_cost(prefill[static_cast<size_t>(c.prefill)]),
                                               prefill[static_cast<size_t>(c.prefill)].record->id)) {
        c.prefill = i;
      }
    }
    const int64_t via_prefill = c.prefill >= 0 ? prefill_cost(prefill[static_cast<size_t>(c.prefill)]) +
                                                     prompt_tokens / kTransferDivisor
                                               : prompt_tokens;  // no prefill worker: decode computes it
    auto decode_key = [&](const Candidate& d) {
      const registry::Load& l = d.record->load;
      const int64_t free_after = l.free_kv_blocks - d.inflight * blocks_needed;
      const int64_t rest = prompt_tokens - d.cached_tokens;
      const int64_t compute = d.cached_tokens > 0 && rest <= options_.local_prefill_limit ? rest : via_prefill;
      const int64_t cost = compute + kDecodeLoadTokens * (l.running_requests + d.inflight);
      return std::make_tuple(free_after < blocks_needed, cost, -free_after, d.record->id);
    };
    for (int i = 0; i < static_cast<int>(decode.size()); ++i) {
      if (c.decode < 0 || decode_key(decode[static_cast<size_t>(i)]) <
                              decode_key(decode[static_cast<size_t>(c.decode)])) {
        c.decode = i;
      }
    }
    return c;
  }

 private:
  const PolicyOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name, const PolicyOptions& options) {
  if (name == "round_robin") return std::make_unique<RoundRobin>();
  if (name == "least_load") return std::make_unique<LeastLoad>();
  if (name == "kv_aware") return std::make_unique<KvAware>(options);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown routing policy '", name, "' (have: round_robin, least_load, kv_aware)"));
}

}  // namespace strata::router
