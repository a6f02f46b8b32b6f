#include "prefill/prefill_worker.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

namespace strata::prefill {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Counts one job's transfers in flight; completions may outlive the job's step, so it is shared.
class Tracker : public std::enable_shared_from_this<Tracker> {
 public:
  transport::Completion Add() {
    absl::MutexLock lock(&mu_);
    ++pending_;
    return [self = shared_from_this()](absl::Status s) { self->Done(std::move(s)); };
  }
  // Waits for every transfer issued so far; the first error, or DeadlineExceeded.
  absl::Status Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat(pending_, " KV transfers did not complete within ",
                                                      absl::FormatDuration(timeout)));
    }
    return first_error_;
  }
  void Fail(absl::Status s) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = std::move(s);
  }
  int64_t pending() {
    absl::MutexLock lock(&mu_);
    return pending_;
  }

 private:
  void Done(absl::Status s) {
    absl::MutexLock lock(&mu_);
    if (!s.ok() && first_error_.ok()) first_error_ = std::move(s);
    --pending_;
  }
  absl::Mutex mu_;
  int64_t pending_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
};

constexpr absl::Duration kTransferTimeout = absl::Seconds(60);

}  // namespace

struct PrefillWorker::Running {
  Job job;
  engine::SequenceCache cache;
  int32_t staging_slot = -1;
  std::shared_ptr<transport::Endpoint> endpoint;
  // Shared with the completions of its transfers, which may outlive a job that timed out.
  std::shared_ptr<Tracker> tracker = std::make_shared<Tracker>();
  bool cancelled = false;
  bool passed_over = false;                 // had tokens left but none in the last step
  int64_t step_start = 0, step_tokens = 0;  // this step's slice of the prompt
  double compute_ms = 0;
  double wait_ms = 0;
  uint64_t bytes = 0;
};

absl::StatusOr<std::unique_ptr<PrefillWorker>> PrefillWorker::Create(engine::Model& model, engine::KvPool& pool,
                                                                     transport::Transport& transport,
                                                                     const PrefillOptions& options) {
  std::unique_ptr<PrefillWorker> w(new PrefillWorker(model, pool, transport, options));
  STRATA_ASSIGN_OR_RETURN(w->pool_registration_, transport.Register(pool.memory(), static_cast<size_t>(pool.memory_bytes())));
  STRATA_ASSIGN_OR_RETURN(w->staging_registration_, transport.Register(w->staging_.data(), w->staging_.size()));
  w->thread_ = std::thread([p = w.get()] { p->Loop(); });
  return w;
}

PrefillWorker::PrefillWorker(engine::Model& model, engine::KvPool& pool, transport::Transport& transport,
                             const PrefillOptions& options)
    : model_(model),
      pool_(pool),
      transport_(transport),
      options_(options),
      staging_(static_cast<size_t>(options.max_running * pool.layout().state_bytes())) {
  for (int32_t i = static_cast<int32_t>(options.max_running) - 1; i >= 0; --i) free_staging_.push_back(i);
}

PrefillWorker::~PrefillWorker() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status PrefillWorker::Submit(Job job) {
  const engine::KvLayout& layout = pool_.layout();
  const int64_t n = static_cast<int64_t>(job.tokens.size());
  if (n == 0) return absl::InvalidArgumentError("prefill of an empty prompt");
  if (job.target.layout_fingerprint != layout.fingerprint()) {
    return absl::InvalidArgumentError(absl::StrCat("KV layout mismatch: the decode worker's fingerprint is ",
                                                   job.target.layout_fingerprint, ", this worker's ", layout.fingerprint(),
                                                   " (different models?)"));
  }
  if (job.target.block_bytes != static_cast<uint64_t>(layout.block_bytes()) ||
      job.target.state.length != static_cast<uint64_t>(layout.state_bytes())) {
    return absl::InvalidArgumentError("KV target block or state size does not match this worker's layout");
  }
  if (static_cast<int64_t>(job.target.blocks.size()) < layout.BlocksFor(n)) {
    return absl::InvalidArgumentError(absl::StrCat("the target has ", job.target.blocks.size(), " blocks; ", n,
                                                   " tokens need ", layout.BlocksFor(n)));
  }
  if (layout.BlocksFor(n) > pool_.num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt needs ", layout.BlocksFor(n), " KV blocks; this prefill worker has ",
                                                   pool_.num_blocks(), " in all"));
  }
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the prefill worker is shutting down");
  if (queued_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("the prefill worker's queue is full (", options_.max_queue, " requests)"));
  }
  ++queued_;
  stats_.queued = queued_;
  stats_.queued_tokens += n;
  inbox_.push_back(std::move(job));
  return absl::OkStatus();
}

void PrefillWorker::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  cancels_.push_back(id);
}

PrefillStats PrefillWorker::stats() const {
  absl::MutexLock lock(&mu_);
  PrefillStats s = stats_;
  s.free_blocks = pool_.free_blocks();
  s.total_blocks = pool_.num_blocks();
  return s;
}

absl::StatusOr<std::shared_ptr<transport::Endpoint>> PrefillWorker::EndpointFor(const std::string& address) {
  auto it = endpoints_.find(address);
  if (it != endpoints_.end()) return it->second;
  STRATA_ASSIGN_OR_RETURN(auto ep, transport_.Connect(address));
  endpoints_[address] = ep;
  return ep;
}

void PrefillWorker::Loop() {
  for (;;) {
    std::vector<Job> inbox;
    std::vector<std::string> cancels;
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      // With nothing running, a waiting job can always be admitted (every block and slot is
      // free), so sleep only when there is nothing at all.
      if (running_.empty() && waiting_.empty()) {
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !inbox_.empty() || !cancels_.empty(); };
        if (draining_.empty()) {
          mu_.Await(absl::Condition(&ready));
        } else {
          mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
        }
      }
      std::swap(inbox, inbox_);
      std::swap(cancels, cancels_);
      stopping = stop_;
    }
    for (Job& j : inbox) waiting_.push_back(std::move(j));
    ReapDrained();
    if (stopping) {
      for (auto& r : running_) Complete(*r, absl::UnavailableError("the prefill worker is shutting down"));
      for (Job& j : waiting_) j.done(absl::UnavailableError("the prefill worker is shutting down"));
      return;
    }
    for (const std::string& id : cancels) {
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        if (it->id == id) {
          it->done(absl::CancelledError("the request was cancelled"));
          absl::MutexLock lock(&mu_);
          --queued_;
          stats_.queued = queued_;
          stats_.queued_tokens -= static_cast<int64_t>(it->tokens.size());
          waiting_.erase(it);
          break;
        }
      }
      for (auto& r : running_) {
        if (r->job.id == id) r->cancelled = true;
      }
    }
    for (auto& r : running_) {
      if (r->cancelled) Complete(*r, absl::CancelledError("the request was cancelled"));
    }
    std::erase_if(running_, [](const auto& r) { return r == nullptr; });
    Admit();
    RunStep();
  }
}

void PrefillWorker::Admit() {
  const engine::KvLayout& layout = pool_.layout();
  while (!waiting_.empty() && !free_staging_.empty()) {
    Job& job = waiting_.front();
    const int64_t need = layout.BlocksFor(static_cast<int64_t>(job.tokens.size()));
    if (need > pool_.free_blocks()) break;
    auto r = std::make_unique<Running>();
    r->cache = model_.NewSequence();
    for (int64_t i = 0; i < need; ++i) r->cache.blocks.push_back(*pool_.Allocate());
    r->staging_slot = free_staging_.back();
    free_staging_.pop_back();
    r->job = std::move(job);
    waiting_.pop_front();
    {
      absl::MutexLock lock(&mu_);
      --queued_;
      stats_.queued = queued_;  // its tokens stay in queued_tokens until computed
      stats_.running = static_cast<int64_t>(running_.size()) + 1;
    }
    auto ep = EndpointFor(r->job.target.transport_address);
    running_.push_back(std::move(r));
    if (!ep.ok()) {
      Complete(*running_.back(), Annotate(ep.status(), "connecting to the decode worker"));
      running_.pop_back();
      continue;
    }
    running_.back()->endpoint = *ep;
  }
}

void PrefillWorker::RunStep() {
  const engine::KvLayout& layout = pool_.layout();
  std::vector<engine::StepInput> inputs;
  std::vector<Running*> in_step;
  for (auto& r : running_) {
    if (r->endpoint == nullptr) {  // its endpoint was dropped after another job's pushes timed out
      auto ep = EndpointFor(r->job.target.transport_address);
      if (!ep.ok()) {
        Complete(*r, Annotate(ep.status(), "reconnecting to the decode worker"));
        continue;
      }
      r->endpoint = *ep;
    }
  }
  std::erase_if(running_, [](const auto& r) { return r == nullptr; });
  PlanStep();
  for (auto& r : running_) {
    if (r->step_tokens == 0) continue;
    const int64_t n = r->step_tokens;
    inputs.push_back({&r->cache, absl::MakeConstSpan(r->job.tokens).subspan(static_cast<size_t>(r->cache.position), static_cast<size_t>(n)), false});
    in_step.push_back(r.get());
  }
  if (inputs.empty()) return;

  // Ranges of each touched block, sent as one PutMany per job (one completion, one flush).
  std::vector<transport::PutSpan> spans;
  auto add_range = [&](Running& r, int64_t block, int64_t offset, int64_t bytes) {
    const uint8_t* local = pool_.block(r.cache.blocks[static_cast<size_t>(block)]) + offset;
    const uint64_t remote = static_cast<uint64_t>(r.job.target.blocks[static_cast<size_t>(block)]) * r.job.target.block_bytes +
                            static_cast<uint64_t>(offset);
    spans.push_back({local, static_cast<size_t>(bytes), remote});
    r.bytes += static_cast<uint64_t>(bytes);
  };
  auto put_spans = [&](Running& r) {
    if (!spans.empty()) r.endpoint->PutMany(spans, r.job.target.pool, r.tracker->Add());
    spans.clear();
  };
  // Pushes layer `l`'s pages of the blocks this step touched, for every job in the step.
  auto push_layer = [&](int64_t l) {
    const engine::LayerKvLayout& kv = layout.layers()[static_cast<size_t>(l)];
    if (kv.main_entries == 0 && kv.indexer_entries == 0) return;  // window-only: state slot only
    for (Running* r : in_step) {
      const int64_t first = r->step_start / engine::kBlockTokens;
      const int64_t last = (r->step_start + r->step_tokens - 1) / engine::kBlockTokens;
      for (int64_t b = first; b <= last; ++b) {
        if (kv.main_entries > 0) add_range(*r, b, kv.main_offset, kv.main_entries * layout.main_entry_bytes());
        if (kv.indexer_entries > 0) add_range(*r, b, kv.indexer_offset, kv.indexer_entries * layout.indexer_entry_bytes());
      }
      put_spans(*r);
    }
  };
  engine::LayerObserver observer = [&](int64_t layer, const float*, int64_t) {
    if (layer > 0) push_layer(layer - 1);
  };

  const auto step_begin = SteadyClock::now();
  absl::Status status = model_.Step(inputs, nullptr, observer);
  const auto step_end = SteadyClock::now();
  const double step_ms = std::chrono::duration<double, std::milli>(step_end - step_begin).count();
  if (status.ok()) {
    double tokens = 0, token_positions = 0;
    for (Running* r : in_step) {
      const double n = static_cast<double>(r->step_tokens);
      tokens += n;
      token_positions += n * (static_cast<double>(r->step_start) + n / 2);
    }
    cost_.Observe(tokens, token_positions, step_ms);
  }
  int64_t computed = 0;
  for (Running* r : in_step) {
    if (!status.ok()) {
      r->tracker->Fail(Annotate(status, "model step"));
      continue;
    }
    r->compute_ms += step_ms;
    computed += r->step_tokens;
    // The headers Step just sealed, then (last step) the state slot: after the pages they cover.
    const int64_t first = r->step_start / engine::kBlockTokens;
    const int64_t last = (r->step_start + r->step_tokens - 1) / engine::kBlockTokens;
    for (int64_t b = first; b <= last; ++b) add_range(*r, b, 0, engine::kKvHeaderBytes);
    put_spans(*r);
    if (r->cache.position == static_cast<int64_t>(r->job.tokens.size())) {
      uint8_t* staged = staging_.data() + static_cast<size_t>(r->staging_slot) * static_cast<size_t>(layout.state_bytes());
      std::memcpy(staged, r->cache.state.data(), static_cast<size_t>(layout.state_bytes()));
      r->endpoint->Put(staged, static_cast<size_t>(layout.state_bytes()), r->job.target.state, 0, r->tracker->Add());
      r->bytes += static_cast<uint64_t>(layout.state_bytes());
    }
  }
  uint64_t bytes = 0;
  (void)step_end;
  for (Running* r : in_step) {
    const auto wait_begin = SteadyClock::now();
    absl::Status landed = r->tracker->Wait(kTransferTimeout);
    r->wait_ms += std::chrono::duration<double, std::milli>(SteadyClock::now() - wait_begin).count();
    bytes += r->bytes;
    if (!landed.ok()) {
      // Reconnect next time. Every job's hold on this endpoint goes, so that its destruction
      // completes (fails) whatever is still stuck in it and the local blocks can come back.
      const std::string address = r->job.target.transport_address;
      endpoints_.erase(address);
      for (auto& other : running_) {
        if (other != nullptr && other->job.target.transport_address == address) other->endpoint.reset();
      }
      Complete(*r, Annotate(landed, "pushing KV to the decode worker"));
    } else if (r->cache.position == static_cast<int64_t>(r->job.tokens.size())) {
      PrefillResult result{.tokens = r->cache.position, .kv_bytes = r->bytes, .compute_ms = r->compute_ms,
                           .transfer_wait_ms = r->wait_ms};
      r->job.done(result);
      r->job.done = nullptr;
      Complete(*r, absl::OkStatus());
    }
  }
  std::erase_if(running_, [](const auto& r) { return r == nullptr; });
  absl::MutexLock lock(&mu_);
  stats_.tokens_computed += computed;
  stats_.queued_tokens -= computed;
  stats_.kv_bytes_sent += bytes;
  stats_.running = static_cast<int64_t>(running_.size());
}

void PrefillWorker::ReapDrained() {
  std::erase_if(draining_, [this](Draining& d) {
    if (d.pending() > 0) return false;
    model_.Release(d.cache);
    if (d.staging_slot >= 0) free_staging_.push_back(d.staging_slot);
    return true;
  });
}

// Ends `r` (its transfers have settled, or it goes to draining_): returns its blocks and staging slot; reports `status`
// unless the job already reported success. Nulls its entry in running_ (callers erase).
void PrefillWorker::PlanStep() {
  std::vector<Running*> order;
  for (auto& r : running_) {
    r->step_tokens = 0;
    if (r->cache.position < static_cast<int64_t>(r->job.tokens.size())) order.push_back(r.get());
  }
  auto remaining = [](const Running* r) { return static_cast<int64_t>(r->job.tokens.size()) - r->cache.position; };
  std::stable_sort(order.begin(), order.end(), [&](const Running* x, const Running* y) {
    if (x->passed_over != y->passed_over) return x->passed_over;
    return remaining(x) < remaining(y);
  });
  int64_t tokens_left = options_.chunk_tokens;
  double ms_left = options_.step_target_ms > 0 ? options_.step_target_ms : 1e300;
  constexpr int64_t kMinChunk = 16;  // below this a step's fixed costs dominate
  for (Running* r : order) {
    const int64_t want = std::min(remaining(r), tokens_left);
    int64_t n = cost_.TokensWithin(ms_left, r->cache.position, want);
    if (n < std::min(want, kMinChunk)) {
      // Over the time budget: the first job still makes progress; the rest wait a step.
      n = r == order.front() ? std::min(want, kMinChunk) : 0;
    }
    r->passed_over = n == 0 && want > 0;
    if (n == 0) continue;
    r->step_start = r->cache.position;
    r->step_tokens = n;
    tokens_left -= n;
    ms_left -= cost_.Cost(n, r->cache.position);
    if (tokens_left <= 0) break;
  }
  for (Running* r : order) {
    if (r->step_tokens == 0 && tokens_left <= 0) r->passed_over = true;
  }
}

void PrefillWorker::Complete(Running& r, absl::Status status) {
  {
    // Whatever of its prompt was not computed leaves the queue with it.
    absl::MutexLock lock(&mu_);
    stats_.queued_tokens -= static_cast<int64_t>(r.job.tokens.size()) - r.cache.position;
  }
  if (r.tracker->pending() > 0) {
    // Puts of it may still read these blocks (and land at the target): keep the blocks until they
    // settle, and tell the decode worker its target is not fenced.
    draining_.push_back({std::move(r.cache), r.staging_slot, [t = r.tracker] { return t->pending(); }});
    r.cache = engine::SequenceCache();
    r.staging_slot = -1;
    if (!status.ok()) status.SetPayload(kUnsettledPayload, absl::Cord("1"));
  } else {
    model_.Release(r.cache);
  }
  if (r.staging_slot >= 0) free_staging_.push_back(r.staging_slot);
  r.staging_slot = -1;
  if (r.job.done) r.job.done(std::move(status));
  for (auto& p : running_) {
    if (p.get() == &r) p.reset();
  }
}

}  // namespace strata::prefill
