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

}  // namespace

absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name) {
  if (name == "round_robin") return std::make_unique<RoundRobin>();
  if (name == "least_load") return std::make_unique<LeastLoad>();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown routing policy '", name, "' (have: round_robin, least_load)"));
}

}  // namespace strata::router
