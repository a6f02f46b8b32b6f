#include "router/cluster_upstream.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "engine/kv/block_key.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_options.h"
#include "router/cluster_call.h"
#include "spdlog/spdlog.h"

namespace strata::router {
namespace {

class CallHandle final : public UpstreamCall {
 public:
  explicit CallHandle(std::shared_ptr<internal::ClusterCall> call) : call_(std::move(call)) {}
  void Cancel() override { call_->Cancel(); }

 private:
  std::shared_ptr<internal::ClusterCall> call_;
};

}  // namespace

ClusterUpstream::ClusterUpstream(registry::Registry& registry, std::unique_ptr<Policy> policy,
                                 const ClusterOptions& options, Clock& clock,
                                 registry::PrefixIndex* prefix_index)
    : registry_(registry),
      policy_(std::move(policy)),
      options_(options),
      clock_(clock),
      prefix_index_(prefix_index) {
  refresher_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(options_.refresh)) {
      absl::Status s = Refresh();
      if (!s.ok()) spdlog::warn("registry refresh failed: {}", s.ToString());
    }
  });
  watchdog_ = std::thread([this] { Watch(); });
}

ClusterUpstream::~ClusterUpstream() {
  stop_.Notify();
  refresher_.join();
  watchdog_.join();
}

void ClusterUpstream::Watch() {
  const absl::Duration tick = std::min(absl::Milliseconds(250), options_.inactivity_timeout / 4);
  while (!stop_.WaitForNotificationWithTimeout(tick)) {
    std::vector<std::shared_ptr<internal::ClusterCall>> calls;
    {
      absl::MutexLock lock(&calls_mu_);
      for (auto& [raw, weak] : calls_) {
        if (auto call = weak.lock()) calls.push_back(std::move(call));
      }
    }
    const absl::Time now = clock_.Now();
    for (auto& call : calls) call->Tick(now);
  }
}

void ClusterUpstream::Forget(internal::ClusterCall* call) {
  absl::MutexLock lock(&calls_mu_);
  calls_.erase(call);
}

absl::Status ClusterUpstream::Ready() const {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  for (const auto& r : snapshot_.decode) {
    auto it = suspects_.find(r.id);
    if (it == suspects_.end() || it->second <= now) return absl::OkStatus();
  }
  return absl::UnavailableError(snapshot_.decode.empty()
                                    ? "no decode worker is registered"
                                    : "every registered decode worker failed recently");
}

absl::Status ClusterUpstream::Refresh() {
  STRATA_ASSIGN_OR_RETURN(auto prefill, registry_.List("prefill"));
  STRATA_ASSIGN_OR_RETURN(auto decode, registry_.List("decode"));
  auto serves_model = [&](const registry::ServiceRecord& r) {
    return !options_.model.empty() && r.model != options_.model;
  };
  std::erase_if(prefill, serves_model);
  std::erase_if(decode, serves_model);
  absl::MutexLock lock(&mu_);
  auto log_changes = [](const std::vector<registry::ServiceRecord>& before,
                        const std::vector<registry::ServiceRecord>& after) {
    for (const auto& a : after) {
      if (std::none_of(before.begin(), before.end(), [&](const auto& b) { return b.id == a.id; })) {
        spdlog::info("{} worker {} joined at {}", a.role, a.id, a.grpc_address);
      }
    }
    for (const auto& b : before) {
      if (std::none_of(after.begin(), after.end(), [&](const auto& a) { return b.id == a.id; })) {
        spdlog::info("{} worker {} left (lease lapsed or deregistered)", b.role, b.id);
      }
    }
  };
  log_changes(snapshot_.prefill, prefill);
  log_changes(snapshot_.decode, decode);
  snapshot_.prefill = std::move(prefill);
  snapshot_.decode = std::move(decode);
  // Channels of workers that left go with them (calls in flight hold their own references).
  absl::erase_if(stubs_, [&](const auto& kv) {
    return std::none_of(snapshot_.decode.begin(), snapshot_.decode.end(),
                        [&](const auto& r) { return r.id == kv.first; });
  });
  sent_since_refresh_.clear();
  tokens_since_refresh_.clear();
  const absl::Time now = clock_.Now();
  absl::erase_if(suspects_, [&](const auto& kv) { return kv.second <= now; });
  return absl::OkStatus();
}

ClusterSnapshot ClusterUpstream::snapshot() const {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

void ClusterUpstream::Suspect(const std::string& id) {
  absl::MutexLock lock(&mu_);
  suspects_[id] = clock_.Now() + options_.suspect_for;
}

std::shared_ptr<v1::Decode::Stub> ClusterUpstream::DecodeStub(const std::string& id, const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[id];
  if (!stub) stub = v1::Decode::NewStub(proto::InternalChannel(address));
  return stub;
}

void ClusterUpstream::LookupPrefix(const UpstreamRequest& request, std::function<void(PrefixHits)> done) {
  auto task = [this, request, done] {
    const auto begin = std::chrono::steady_clock::now();
    // The key scopes the live workers publish (one, unless the cluster is mid-upgrade).
    std::vector<std::string> scopes;
    {
      absl::MutexLock lock(&mu_);
      for (const auto* role : {&snapshot_.prefill, &snapshot_.decode}) {
        for (const auto& r : *role) {
          if (!r.kv_scope.empty() && std::find(scopes.begin(), scopes.end(), r.kv_scope) == scopes.end()) {
            scopes.push_back(r.kv_scope);
          }
        }
      }
    }
    PrefixHits hits;
    bool failed = false;
    // A decode worker always computes the prompt's last token: no more than that is reusable.
    const int64_t reusable = static_cast<int64_t>(request.prompt.size()) - 1;
    for (const std::string& hex : scopes) {
      absl::StatusOr<engine::KeyScope> scope = engine::KeyScope::FromHex(hex);
      if (!scope.ok()) continue;
      std::vector<std::string> keys;
      for (const engine::BlockKey& k : engine::PrefixBlockKeys(*scope, CacheNamespace(request), request.prompt)) {
        keys.push_back(k.Hex());
      }
      if (keys.empty()) continue;
      absl::StatusOr<std::vector<registry::PrefixRun>> runs = prefix_index_->Longest(keys);
      if (!runs.ok()) {
        failed = true;
        spdlog::warn("request {}: prefix index lookup failed: {}; routing without it", request.request_id,
                     runs.status().ToString());
        continue;
      }
      for (const registry::PrefixRun& run : *runs) {
        hits.tokens[run.location] = std::min(run.blocks * options_.block_tokens, reusable);
      }
    }
    {
      absl::MutexLock lock(&stats_mu_);
      ++prefix_stats_.lookups;
      prefix_stats_.failures += failed ? 1 : 0;
      prefix_stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    }
    done(std::move(hits));
  };
  if (!lookups_.TrySchedule(task)) {
    {
      absl::MutexLock lock(&stats_mu_);
      ++prefix_stats_.skipped;
    }
    done(PrefixHits{});
  }
}

PrefixLookupStats ClusterUpstream::prefix_stats() const {
  absl::MutexLock lock(&stats_mu_);
  return prefix_stats_;
}

absl::StatusOr<ClusterUpstream::Route> ClusterUpstream::Choose(int64_t prompt_tokens, int64_t max_tokens,
                                                               const std::vector<std::string>& avoid,
                                                               const PrefixHits& hits) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  auto usable = [&](const registry::ServiceRecord& r) {
    auto it = suspects_.find(r.id);
    return it == suspects_.end() || it->second <= now;
  };
  auto cached = [&](const registry::ServiceRecord& r) {
    auto it = hits.tokens.find(r.id);
    return it == hits.tokens.end() ? int64_t{0} : it->second;
  };
  // What a kvstore holds, any prefill worker can fetch instead of computing.
  int64_t stored = 0;
  for (const auto& [location, tokens] : hits.tokens) {
    if (absl::StartsWith(location, "kvstore-")) stored = std::max(stored, tokens);
  }
  auto prefill_cached = [&](const registry::ServiceRecord& r) { return std::max(cached(r), stored); };
  std::vector<Candidate> p, d;
  for (const auto& r : snapshot_.prefill) {
    if (usable(r)) p.push_back({&r, sent_since_refresh_[r.id], tokens_since_refresh_[r.id], prefill_cached(r)});
  }
  for (const auto& r : snapshot_.decode) {
    if (usable(r) && std::find(avoid.begin(), avoid.end(), r.id) == avoid.end()) {
      d.push_back({&r, sent_since_refresh_[r.id], 0, cached(r)});
    }
  }
  const int64_t blocks = (prompt_tokens + max_tokens + options_.block_tokens - 1) / options_.block_tokens;
  STRATA_ASSIGN_OR_RETURN(Choice choice, policy_->Choose(p, d, prompt_tokens, blocks));
  Route route;
  route.decode = *d[static_cast<size_t>(choice.decode)].record;
  ++sent_since_refresh_[route.decode.id];
  if (choice.prefill >= 0) {
    route.prefill = *p[static_cast<size_t>(choice.prefill)].record;
    ++sent_since_refresh_[route.prefill->id];
    tokens_since_refresh_[route.prefill->id] += prompt_tokens - prefill_cached(*route.prefill);
  }
  return route;
}

std::unique_ptr<UpstreamCall> ClusterUpstream::Start(UpstreamRequest request,
                                                     std::function<void(UpstreamEvent)> on_event) {
  auto call = std::make_shared<internal::ClusterCall>(*this, std::move(request), std::move(on_event));
  {
    absl::MutexLock lock(&calls_mu_);
    calls_[call.get()] = call;
  }
  call->Begin();
  return std::make_unique<CallHandle>(std::move(call));
}

}  // namespace strata::router
