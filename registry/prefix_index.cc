#include "registry/prefix_index.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "registry/redis_connection.h"
#include "spdlog/spdlog.h"

namespace strata::registry {

std::vector<PrefixRun> RunsFromHolders(const std::vector<std::vector<std::string>>& holders) {
  std::vector<PrefixRun> runs;
  if (holders.empty()) return runs;
  absl::flat_hash_map<std::string, int64_t> length;
  for (const std::string& l : holders[0]) length[l] = 1;
  for (size_t i = 1; i < holders.size() && !length.empty(); ++i) {
    const absl::flat_hash_set<std::string> here(holders[i].begin(), holders[i].end());
    bool any = false;
    for (auto& [location, n] : length) {
      if (n == static_cast<int64_t>(i) && here.contains(location)) {
        ++n;
        any = true;
      }
    }
    if (!any) break;
  }
  for (const auto& [location, n] : length) runs.push_back({location, n});
  std::sort(runs.begin(), runs.end(), [](const PrefixRun& a, const PrefixRun& b) {
    return a.blocks != b.blocks ? a.blocks > b.blocks : a.location < b.location;
  });
  return runs;
}

namespace {

class InMemoryPrefixIndex final : public PrefixIndex {
 public:
  absl::Status Add(const std::string& location, absl::Span<const std::string> keys) override {
    absl::MutexLock lock(&mu_);
    for (const std::string& k : keys) holders_[k].insert(location);
    return absl::OkStatus();
  }
  absl::Status Remove(const std::string& location, absl::Span<const std::string> keys) override {
    absl::MutexLock lock(&mu_);
    for (const std::string& k : keys) {
      auto it = holders_.find(k);
      if (it == holders_.end()) continue;
      it->second.erase(location);
      if (it->second.empty()) holders_.erase(it);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<PrefixRun>> Longest(absl::Span<const std::string> keys) override {
    std::vector<std::vector<std::string>> holders;
    absl::MutexLock lock(&mu_);
    for (const std::string& k : keys) {
      auto it = holders_.find(k);
      if (it == holders_.end()) break;
      holders.emplace_back(it->second.begin(), it->second.end());
    }
    return RunsFromHolders(holders);
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> holders_ ABSL_GUARDED_BY(mu_);
};

// Keys of a request's chain are looked up in one pipeline; very long chains (a 1M-token prompt has
// 8192 blocks) in pipelines of this many commands, stopping at the first key nobody holds.
constexpr size_t kPipeline = 1024;

class RedisPrefixIndex final : public PrefixIndex {
 public:
  explicit RedisPrefixIndex(const RedisPrefixIndexOptions& options)
      : options_(options), redis_(options.redis) {}

  absl::Status Add(const std::string& location, absl::Span<const std::string> keys) override {
    const std::string ttl = absl::StrCat(absl::ToInt64Milliseconds(options_.ttl));
    for (size_t at = 0; at < keys.size(); at += kPipeline / 2) {
      std::vector<std::vector<std::string>> commands;
      for (size_t i = at; i < std::min(keys.size(), at + kPipeline / 2); ++i) {
        commands.push_back({"SADD", Key(keys[i]), location});
        commands.push_back({"PEXPIRE", Key(keys[i]), ttl});
      }
      if (absl::Status s = Check(redis_.Pipeline(commands), "SADD"); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& location, absl::Span<const std::string> keys) override {
    for (size_t at = 0; at < keys.size(); at += kPipeline) {
      std::vector<std::vector<std::string>> commands;
      for (size_t i = at; i < std::min(keys.size(), at + kPipeline); ++i) {
        commands.push_back({"SREM", Key(keys[i]), location});
      }
      if (absl::Status s = Check(redis_.Pipeline(commands), "SREM"); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<PrefixRun>> Longest(absl::Span<const std::string> keys) override {
    std::vector<std::vector<std::string>> holders;
    for (size_t at = 0; at < keys.size(); at += kPipeline) {
      std::vector<std::vector<std::string>> commands;
      for (size_t i = at; i < std::min(keys.size(), at + kPipeline); ++i) {
        commands.push_back({"SMEMBERS", Key(keys[i])});
      }
      absl::StatusOr<std::vector<internal::ReplyPtr>> replies = redis_.Pipeline(commands);
      if (!replies.ok()) return replies.status();
      for (const internal::ReplyPtr& r : *replies) {
        if (r->type != REDIS_REPLY_ARRAY) return redis_.Unexpected("SMEMBERS", *r);
        if (r->elements == 0) return RunsFromHolders(holders);  // the chain ends here
        std::vector<std::string> here;
        for (size_t e = 0; e < r->elements; ++e) {
          if (r->element[e]->type == REDIS_REPLY_STRING) here.push_back(internal::ReplyText(*r->element[e]));
        }
        holders.push_back(std::move(here));
      }
    }
    return RunsFromHolders(holders);
  }

 private:
  std::string Key(const std::string& key) const {
    return absl::StrCat("strata:", options_.redis.cluster, ":pfx:", key);
  }
  absl::Status Check(const absl::StatusOr<std::vector<internal::ReplyPtr>>& replies,
                     absl::string_view what) const {
    if (!replies.ok()) return replies.status();
    for (const internal::ReplyPtr& r : *replies) {
      if (r->type == REDIS_REPLY_ERROR) {
        return absl::InternalError(absl::StrCat(redis_.where(), ": ", what, ": ", internal::ReplyText(*r)));
      }
    }
    return absl::OkStatus();
  }

  const RedisPrefixIndexOptions options_;
  internal::RedisConnection redis_;
};

}  // namespace

std::unique_ptr<PrefixIndex> MakeInMemoryPrefixIndex() { return std::make_unique<InMemoryPrefixIndex>(); }

absl::StatusOr<std::unique_ptr<PrefixIndex>> MakeRedisPrefixIndex(const RedisPrefixIndexOptions& options) {
  if (options.redis.host.empty()) return absl::InvalidArgumentError("prefix index: empty Redis host");
  if (options.redis.cluster.empty()) return absl::InvalidArgumentError("prefix index: empty cluster name");
  if (options.ttl < absl::Seconds(1)) return absl::InvalidArgumentError("prefix index: ttl under a second");
  return std::unique_ptr<PrefixIndex>(new RedisPrefixIndex(options));
}

PrefixPublisher::PrefixPublisher(PrefixIndex& index, std::string location, int64_t max_pending)
    : index_(index), location_(std::move(location)), max_pending_(max_pending), thread_([this] { Loop(); }) {}

PrefixPublisher::~PrefixPublisher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void PrefixPublisher::Added(std::vector<std::string> keys) { Queue(true, std::move(keys)); }

void PrefixPublisher::Removed(std::vector<std::string> keys) { Queue(false, std::move(keys)); }

void PrefixPublisher::Queue(bool add, std::vector<std::string> keys) {
  if (keys.empty()) return;
  absl::MutexLock lock(&mu_);
  pending_keys_ += static_cast<int64_t>(keys.size());
  queue_.push_back({add, std::move(keys)});
  while (pending_keys_ > max_pending_ && queue_.size() > 1) {
    pending_keys_ -= static_cast<int64_t>(queue_.front().keys.size());
    dropped_ += static_cast<int64_t>(queue_.front().keys.size());
    queue_.pop_front();
  }
}

int64_t PrefixPublisher::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

int64_t PrefixPublisher::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

void PrefixPublisher::Loop() {
  for (;;) {
    Update update;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, all sent
      update = std::move(queue_.front());
      queue_.pop_front();
      pending_keys_ -= static_cast<int64_t>(update.keys.size());
    }
    const absl::Status s = update.add ? index_.Add(location_, update.keys) : index_.Remove(location_, update.keys);
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);
      // A lost update leaves the index stale (costs misses); it is not retried so that a Redis
      // outage cannot back updates up without bound. Every failure after the first few is silent.
      if (++failures_ <= 3) spdlog::warn("prefix index ({}): {}", location_, s.ToString());
      if (stop_) {  // shutting down with Redis away: do not wait out a timeout per update
        dropped_ += pending_keys_;
        pending_keys_ = 0;
        queue_.clear();
      }
    }
  }
}

}  // namespace strata::registry
