#include "prefill/prefill_worker.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

namespace strata::prefill {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr absl::Duration kTransferTimeout = absl::Seconds(60);

}  // namespace

struct PrefillWorker::Running {
  Job job;
  engine::SequenceCache cache;
  int32_t staging_slot = -1;
  std::unique_ptr<PushSink> sink;
  std::vector<engine::BlockKey> keys;  // of the prompt's full blocks (prefix cache on)
  engine::CheckpointPlan plan;
  int64_t cached_blocks = 0;           // shared from the prefix cache; computing resumed there
  std::vector<uint8_t> resumed_state;  // the checkpoint it resumed from, until pushed
  bool resumed_pushed = false;
  std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints;  // (position, state) to cache
  bool cancelled = false;
  bool passed_over = false;                 // had tokens left but none in the last step
  bool put_this_round = false;              // has puts to wait for before the next step
  uint64_t bytes_counted = 0;               // of sink->bytes(), in stats_ already
  int64_t checkpoint_sent = 0;              // position of the checkpoint put to the target
  int64_t step_start = 0, step_tokens = 0;  // this step's slice of the prompt
  double compute_ms = 0;
  double wait_ms = 0;

  int64_t total() const { return static_cast<int64_t>(job.tokens.size()); }
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
      staging_(static_cast<size_t>(options.max_running * 2 * pool.layout().state_bytes())),
      cache_(options.prefix_cache ? std::make_unique<engine::PrefixCache>(pool, options.cache) : nullptr),
      scope_{options.model_identity, pool.layout().fingerprint()} {
  for (int32_t i = static_cast<int32_t>(options.max_running) - 1; i >= 0; --i) free_staging_.push_back(i);
}

PrefillWorker::~PrefillWorker() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  {
    // A fetch's completion still comes here (and the source still writes into its blocks).
    absl::MutexLock lock(&mu_);
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return fetches_in_flight_ == 0; };
    mu_.Await(absl::Condition(&settled));
  }
  // Blocks still read by unsettled puts go with the pool; the cache's references first.
  cache_.reset();
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
      job.target.state.length != static_cast<uint64_t>(layout.state_bytes()) ||
      (job.target.checkpoint.length != 0 && job.target.checkpoint.length != static_cast<uint64_t>(layout.state_bytes()))) {
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

void PrefillWorker::DropPrefixCache() {
  absl::MutexLock lock(&mu_);
  drop_cache_ = true;
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
    std::vector<std::pair<std::string, absl::StatusOr<int64_t>>> fetched;
    bool stopping, drop;
    {
      absl::MutexLock lock(&mu_);
      // With nothing running, a waiting job can always be admitted (every block and slot is
      // free), so sleep only when there is nothing at all.
      // With fetches out and nothing running, the waiting ones may be waiting for their blocks.
      if (running_.empty() && (waiting_.empty() || !fetching_.empty())) {
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || !inbox_.empty() || !cancels_.empty() || !fetched_.empty() || drop_cache_;
        };
        if (draining_.empty() && waiting_.empty()) {
          mu_.Await(absl::Condition(&ready));
        } else {
          mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
        }
      }
      std::swap(inbox, inbox_);
      std::swap(cancels, cancels_);
      std::swap(fetched, fetched_);
      stopping = stop_;
      drop = drop_cache_;
      drop_cache_ = false;
    }
    if (drop && cache_ != nullptr) cache_->Evict(std::numeric_limits<int64_t>::max());
    for (Job& j : inbox) waiting_.push_back(std::move(j));
    ReapDrained();
    FinishFetches(std::move(fetched));
    if (stopping) {
      for (auto& r : running_) Complete(*r, absl::UnavailableError("the prefill worker is shutting down"));
      for (Job& j : waiting_) j.done(absl::UnavailableError("the prefill worker is shutting down"));
      // Their blocks are the source's until it answers; the pool goes with the process.
      for (auto& [id, f] : fetching_) f->job.done(absl::UnavailableError("the prefill worker is shutting down"));
      return;
    }
    for (const std::string& id : cancels) {
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        if (it->id == id) {
          it->done(absl::CancelledError("the request was cancelled"));
          fetched_jobs_.erase(id);
          absl::MutexLock lock(&mu_);
          --queued_;
          stats_.queued = queued_;
          stats_.queued_tokens -= static_cast<int64_t>(it->tokens.size());
          waiting_.erase(it);
          break;
        }
      }
      if (auto it = fetching_.find(id); it != fetching_.end()) it->second->cancelled = true;
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
    const int64_t n = static_cast<int64_t>(job.tokens.size());
    std::vector<engine::BlockKey> keys;
    engine::PrefixHit hit;
    if (cache_ != nullptr) {
      keys = engine::PrefixBlockKeys(scope_, job.cache_namespace, job.tokens);
      hit = cache_->Match(keys, static_cast<int64_t>(keys.size()));
      if (options_.source != nullptr && !fetched_jobs_.contains(job.id) &&
          static_cast<int64_t>(keys.size() - hit.blocks.size()) >= options_.min_fetch_blocks) {
        // Worth asking the kvstore: the job waits aside for what it has.
        for (int32_t b : hit.blocks) pool_.Free(b);
        if (StartFetch(job, keys, static_cast<int64_t>(hit.blocks.size()))) {
          waiting_.pop_front();
          continue;
        }
        hit = cache_->Match(keys, static_cast<int64_t>(keys.size()));
      }
    }
    const int64_t need = layout.BlocksFor(n) - static_cast<int64_t>(hit.blocks.size());
    if (need > pool_.free_blocks() && cache_ != nullptr) cache_->Evict(need - pool_.free_blocks());
    if (need > pool_.free_blocks()) {
      for (int32_t b : hit.blocks) pool_.Free(b);
      break;
    }
    auto r = std::make_unique<Running>();
    r->keys = std::move(keys);
    // Checkpoints every `checkpoint_every` blocks, spaced out further for a prompt whose
    // checkpoints would take more than a quarter of the cache's budget for them.
    const int64_t budget_states =
        std::max<int64_t>(1, options_.cache.max_checkpoint_bytes / 4 / std::max<int64_t>(1, layout.state_bytes()));
    r->plan.every = cache_ == nullptr ? 0  // only the prompt's last full block, for the decode worker
                                      : std::max(options_.checkpoint_every,
                                                 (static_cast<int64_t>(r->keys.size()) + budget_states - 1) / budget_states);
    if (!hit.blocks.empty()) {
      absl::StatusOr<engine::SequenceCache> resumed = model_.ResumeSequence(hit.blocks, hit.checkpoint);
      if (resumed.ok()) {
        r->cache = std::move(*resumed);
        r->cached_blocks = static_cast<int64_t>(r->cache.blocks.size());
        r->resumed_state = std::move(hit.checkpoint);
      } else {
        spdlog::warn("request {}: {}; computing the whole prompt", job.id, resumed.status().ToString());
        r->cache = model_.NewSequence();
        r->resumed_pushed = true;
      }
    } else {
      r->cache = model_.NewSequence();
      r->resumed_pushed = true;  // nothing resumed
    }
    while (static_cast<int64_t>(r->cache.blocks.size()) < layout.BlocksFor(n)) {
      r->cache.blocks.push_back(*pool_.Allocate());
    }
    r->staging_slot = free_staging_.back();
    free_staging_.pop_back();
    r->job = std::move(job);
    waiting_.pop_front();
    {
      absl::MutexLock lock(&mu_);
      --queued_;
      stats_.queued = queued_;  // its tokens stay in queued_tokens until computed
      // The resumed ones need no computing.
      stats_.queued_tokens -= r->cache.position;
      stats_.running = static_cast<int64_t>(running_.size()) + 1;
    }
    auto ep = EndpointFor(r->job.target.transport_address);
    r->sink = std::make_unique<PushSink>(ep.ok() ? *ep : nullptr, r->job.target, Staging(r->staging_slot),
                                         layout.state_bytes());
    running_.push_back(std::move(r));
    if (!ep.ok()) {
      Complete(*running_.back(), Annotate(ep.status(), "connecting to the decode worker"));
      running_.pop_back();
      continue;
    }
  }
}

void PrefillWorker::PushResumed(Running& r) {
  r.resumed_pushed = true;
  const engine::KvLayout& layout = pool_.layout();
  std::vector<engine::KvPage> pages;
  for (int64_t b = 0; b < r.cached_blocks; ++b) {
    pages.push_back({pool_.block(r.cache.blocks[static_cast<size_t>(b)]), b, 0, layout.block_bytes()});
  }
  r.sink->PutPages(pages);
  TakeStates(r);
  r.put_this_round = true;
}

void PrefillWorker::TakeStates(Running& r) {
  const int64_t position = r.cache.position;
  const bool resumed_here = position == r.cached_blocks * engine::kBlockTokens && !r.resumed_state.empty();
  std::vector<uint8_t> resumed = std::move(r.resumed_state);
  r.resumed_state.clear();
  if (!r.plan.Due(position, r.total())) {
    if (position == r.total()) r.sink->PutState(model_.SnapshotState(r.cache), engine::KvStateKind::kFinal);
    return;
  }
  std::vector<uint8_t> state = resumed_here ? std::move(resumed) : model_.SnapshotState(r.cache);
  // The decode worker keeps the checkpoint at the prompt's last full block: the next turn of a
  // conversation resumes there without a transfer.
  if (position == r.total() / engine::kBlockTokens * engine::kBlockTokens) {
    r.sink->PutState(state, engine::KvStateKind::kCheckpoint);
    r.checkpoint_sent = position;
  }
  if (position == r.total()) r.sink->PutState(state, engine::KvStateKind::kFinal);
  if (cache_ != nullptr && !resumed_here) r.checkpoints.emplace_back(position, std::move(state));
}

void PrefillWorker::RunStep() {
  const engine::KvLayout& layout = pool_.layout();
  std::vector<engine::StepInput> inputs;
  std::vector<Running*> in_step;
  for (auto& r : running_) {
    if (!r->sink->attached()) {  // its endpoint was dropped after another job's pushes timed out
      auto ep = EndpointFor(r->job.target.transport_address);
      if (!ep.ok()) {
        Complete(*r, Annotate(ep.status(), "reconnecting to the decode worker"));
        continue;
      }
      r->sink->Attach(*ep);
    }
    r->put_this_round = false;
    if (!r->resumed_pushed) PushResumed(*r);
  }
  std::erase_if(running_, [](const auto& r) { return r == nullptr; });
  PlanStep();
  for (auto& r : running_) {
    if (r->step_tokens == 0) continue;
    const int64_t n = r->step_tokens;
    inputs.push_back({&r->cache, absl::MakeConstSpan(r->job.tokens).subspan(static_cast<size_t>(r->cache.position), static_cast<size_t>(n)), false});
    in_step.push_back(r.get());
  }

  // Ranges of each touched block, sent as one PutMany per job (one completion, one flush).
  std::vector<engine::KvPage> pages;
  auto add_range = [&](Running& r, int64_t block, int64_t offset, int64_t bytes) {
    pages.push_back({pool_.block(r.cache.blocks[static_cast<size_t>(block)]) + offset, block, offset, bytes});
  };
  auto put_pages = [&](Running& r) {
    if (!pages.empty()) r.sink->PutPages(pages);
    pages.clear();
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
      put_pages(*r);
    }
  };
  engine::LayerObserver observer = [&](int64_t layer, const float*, int64_t) {
    if (layer > 0) push_layer(layer - 1);
  };

  absl::Status status;
  double step_ms = 0;
  if (!inputs.empty()) {
    const auto step_begin = SteadyClock::now();
    status = model_.Step(inputs, nullptr, observer);
    step_ms = std::chrono::duration<double, std::milli>(SteadyClock::now() - step_begin).count();
    if (status.ok()) {
      double tokens = 0, token_positions = 0;
      for (Running* r : in_step) {
        const double n = static_cast<double>(r->step_tokens);
        tokens += n;
        token_positions += n * (static_cast<double>(r->step_start) + n / 2);
      }
      cost_.Observe(tokens, token_positions, step_ms);
    }
  }
  int64_t computed = 0;
  for (Running* r : in_step) {
    r->put_this_round = true;
    if (!status.ok()) {
      r->sink->Fail(Annotate(status, "model step"));
      continue;
    }
    r->compute_ms += step_ms;
    computed += r->step_tokens;
    // The headers Step just sealed, then the states due here: after the pages they cover.
    const int64_t first = r->step_start / engine::kBlockTokens;
    const int64_t last = (r->step_start + r->step_tokens - 1) / engine::kBlockTokens;
    for (int64_t b = first; b <= last; ++b) add_range(*r, b, 0, engine::kKvHeaderBytes);
    put_pages(*r);
    TakeStates(*r);
  }
  uint64_t bytes = 0;
  for (auto& slot : running_) {
    Running* r = slot.get();
    if (r == nullptr || !r->put_this_round) continue;
    const auto wait_begin = SteadyClock::now();
    absl::Status landed = r->sink->Wait(kTransferTimeout);
    r->wait_ms += std::chrono::duration<double, std::milli>(SteadyClock::now() - wait_begin).count();
    bytes += r->sink->bytes() - r->bytes_counted;
    r->bytes_counted = r->sink->bytes();
    if (!landed.ok()) {
      // Reconnect next time. Every job's hold on this endpoint goes, so that its destruction
      // completes (fails) whatever is still stuck in it and the local blocks can come back.
      const std::string address = r->job.target.transport_address;
      endpoints_.erase(address);
      for (auto& other : running_) {
        if (other != nullptr && other->job.target.transport_address == address) other->sink->Detach();
      }
      Complete(*r, Annotate(landed, "pushing KV to the decode worker"));
    } else if (r->cache.position == r->total()) {
      PrefillResult result{.tokens = r->cache.position,
                           .cached_tokens = r->cached_blocks * engine::kBlockTokens,
                           .checkpoint_tokens = r->checkpoint_sent,
                           .kv_bytes = r->sink->bytes(),
                           .compute_ms = r->compute_ms,
                           .transfer_wait_ms = r->wait_ms};
      CacheFinished(*r);
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
  if (cache_ != nullptr) stats_.prefix = cache_->stats();
}

bool PrefillWorker::StartFetch(Job& job, const std::vector<engine::BlockKey>& keys, int64_t /*local_blocks*/) {
  fetched_jobs_.insert(job.id);  // once, whatever it brings
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n > pool_.free_blocks()) cache_->Evict(n - pool_.free_blocks());
  if (n > pool_.free_blocks()) return false;
  auto f = std::make_unique<Fetching>();
  f->keys = keys;
  for (int64_t i = 0; i < n; ++i) f->blocks.push_back(*pool_.Allocate());
  f->checkpoint.resize(static_cast<size_t>(pool_.layout().state_bytes()));
  f->job = std::move(job);
  const std::string id = f->job.id;
  Fetching& fetch = *f;
  fetching_[id] = std::move(f);
  {
    absl::MutexLock lock(&mu_);
    ++fetches_in_flight_;
  }
  options_.source->Fetch(fetch.keys, n, fetch.blocks, fetch.checkpoint.data(), [this, id](absl::StatusOr<int64_t> got) {
    absl::MutexLock lock(&mu_);
    fetched_.emplace_back(id, std::move(got));
    --fetches_in_flight_;
  });
  return true;
}

void PrefillWorker::FinishFetches(std::vector<std::pair<std::string, absl::StatusOr<int64_t>>> done) {
  for (auto& [id, got] : done) {
    auto it = fetching_.find(id);
    if (it == fetching_.end()) continue;
    std::unique_ptr<Fetching> f = std::move(it->second);
    fetching_.erase(it);
    int64_t n = 0;
    if (!got.ok()) {
      spdlog::warn("request {}: fetching its prefix from the kvstore: {}; computing it", id, got.status().ToString());
    } else {
      n = std::min<int64_t>(*got, static_cast<int64_t>(f->blocks.size()));
    }
    if (n > 0 && !f->cancelled) {
      // Into the local cache, whose references keep the blocks; the job then resumes from there.
      cache_->Insert(absl::MakeConstSpan(f->keys).subspan(0, static_cast<size_t>(n)),
                     absl::MakeConstSpan(f->blocks).subspan(0, static_cast<size_t>(n)));
      cache_->InsertCheckpoint(f->keys[static_cast<size_t>(n - 1)], std::move(f->checkpoint));
    }
    for (int32_t b : f->blocks) pool_.Free(b);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.fetches;
      stats_.fetched_blocks += n;
    }
    if (f->cancelled) {
      f->job.done(absl::CancelledError("the request was cancelled"));
      fetched_jobs_.erase(id);
      absl::MutexLock lock(&mu_);
      --queued_;
      stats_.queued = queued_;
      stats_.queued_tokens -= static_cast<int64_t>(f->job.tokens.size());
      continue;
    }
    waiting_.push_front(std::move(f->job));
  }
}

void PrefillWorker::CacheFinished(Running& r) {
  if (cache_ == nullptr) return;
  if (options_.source != nullptr && static_cast<int64_t>(r.keys.size()) > r.cached_blocks) {
    // The whole chain goes (the store keeps what it lacks); the source takes a reference to each
    // block and lets go once written.
    std::vector<int32_t> blocks(r.cache.blocks.begin(), r.cache.blocks.begin() + static_cast<std::ptrdiff_t>(r.keys.size()));
    for (int32_t b : blocks) pool_.Ref(b);
    {
      absl::MutexLock lock(&mu_);
      stats_.written_back_blocks += static_cast<int64_t>(blocks.size()) - r.cached_blocks;
    }
    options_.source->WriteBack(r.keys, std::move(blocks), r.checkpoints);
  }
  cache_->Insert(r.keys, absl::MakeConstSpan(r.cache.blocks).subspan(0, r.keys.size()));
  for (auto& [position, state] : r.checkpoints) {
    cache_->InsertCheckpoint(r.keys[static_cast<size_t>(position / engine::kBlockTokens - 1)], std::move(state));
  }
  r.checkpoints.clear();
}

void PrefillWorker::ReapDrained() {
  std::erase_if(draining_, [this](Draining& d) {
    if (d.pending() > 0) return false;
    model_.Release(d.cache);
    if (d.staging_slot >= 0) free_staging_.push_back(d.staging_slot);
    return true;
  });
}

void PrefillWorker::PlanStep() {
  std::vector<Running*> order;
  for (auto& r : running_) {
    r->step_tokens = 0;
    if (r->cache.position < r->total()) order.push_back(r.get());
  }
  auto remaining = [](const Running* r) { return r->total() - r->cache.position; };
  std::stable_sort(order.begin(), order.end(), [&](const Running* x, const Running* y) {
    if (x->passed_over != y->passed_over) return x->passed_over;
    return remaining(x) < remaining(y);
  });
  int64_t tokens_left = options_.chunk_tokens;
  double ms_left = options_.step_target_ms > 0 ? options_.step_target_ms : 1e300;
  constexpr int64_t kMinChunk = 16;  // below this a step's fixed costs dominate
  for (Running* r : order) {
    // A step ends at the job's next checkpoint position, so the state there can be taken.
    const int64_t until = r->plan.ChunkEnd(r->cache.position, r->total());
    const int64_t want = std::min(until - r->cache.position, tokens_left);
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

// Ends `r` (its transfers have settled, or it goes to draining_): returns its blocks and staging
// slot; reports `status` unless the job already reported success. Nulls its entry in running_
// (callers erase).
void PrefillWorker::Complete(Running& r, absl::Status status) {
  {
    // Whatever of its prompt was not computed leaves the queue with it.
    absl::MutexLock lock(&mu_);
    stats_.queued_tokens -= r.total() - r.cache.position;
  }
  if (r.sink != nullptr && r.sink->Pending() > 0) {
    // Puts of it may still read these blocks (and land at the target): keep the blocks until they
    // settle, and tell the decode worker its target is not fenced.
    draining_.push_back({std::move(r.cache), r.staging_slot, r.sink->PendingProbe()});
    r.cache = engine::SequenceCache();
    r.staging_slot = -1;
    if (!status.ok()) status.SetPayload(kUnsettledPayload, absl::Cord("1"));
  } else {
    model_.Release(r.cache);
  }
  if (r.staging_slot >= 0) free_staging_.push_back(r.staging_slot);
  r.staging_slot = -1;
  if (r.job.done) r.job.done(std::move(status));
  fetched_jobs_.erase(r.job.id);
  for (auto& p : running_) {
    if (p.get() == &r) p.reset();
  }
}

}  // namespace strata::prefill
