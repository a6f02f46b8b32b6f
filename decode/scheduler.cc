#include "decode/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

namespace strata::decode {

Scheduler::Scheduler(engine::Model& model, engine::KvPool& pool, const SchedulerOptions& options)
    : model_(model),
      pool_(pool),
      options_(options),
      landing_(static_cast<size_t>(2 * options.max_batch * pool.layout().state_bytes())),
      cache_(options.prefix_cache ? std::make_unique<engine::PrefixCache>(pool, options.cache) : nullptr),
      scope_{options.model_identity, pool.layout().fingerprint()} {
  for (int32_t i = static_cast<int32_t>(options_.max_batch) - 1; i >= 0; --i) free_slots_.push_back(i);
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
  cache_.reset();  // its references, before the pool goes
}

int64_t Scheduler::BlocksNeeded(const Request& r) const {
  return pool_.layout().BlocksFor(static_cast<int64_t>(r.prompt.size()) + r.max_tokens);
}

absl::Status Scheduler::Submit(Request request, Callbacks callbacks) {
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t limit = model_.config().max_position_embeddings;
  if (prompt == 0) return absl::InvalidArgumentError("the prompt is empty");
  if (request.max_tokens <= 0) return absl::InvalidArgumentError("max_tokens must be at least 1");
  if (prompt + request.max_tokens > limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt, " tokens) + max_tokens (", request.max_tokens,
                                                   ") exceeds the model's context of ", limit));
  }
  if (BlocksNeeded(request) > pool_.num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat("the request needs ", BlocksNeeded(request),
                                                   " KV blocks; this worker has ", pool_.num_blocks(), " in all"));
  }
  if (request.remote_prefill_tokens < 0 || request.remote_prefill_tokens >= prompt) {
    return absl::InvalidArgumentError(absl::StrCat("remote_prefill_tokens ", request.remote_prefill_tokens,
                                                   " must lie in [0, ", prompt, ")"));
  }
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= model_.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary"));
    }
  }
  if (request.remote_prefill_tokens > 0 && !callbacks.on_admitted) {
    return absl::InvalidArgumentError("a remotely prefilled request needs on_admitted");
  }
  auto seq = std::make_unique<Sequence>();
  seq->request = std::move(request);
  seq->callbacks = std::move(callbacks);
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the decode worker is shutting down");
  if (queued_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("the decode worker's queue is full (", options_.max_queue,
                                                     " requests wait for KV blocks)"));
  }
  ++queued_;
  stats_.queued = queued_;
  stats_.queued_tokens += static_cast<int64_t>(seq->request.prompt.size());
  inbox_.submitted.push_back(std::move(seq));
  return absl::OkStatus();
}

void Scheduler::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  inbox_.cancelled.push_back(id);
}

void Scheduler::Landed(const std::string& id, Landing landing) {
  absl::MutexLock lock(&mu_);
  inbox_.landed.emplace_back(id, std::move(landing));
}

void Scheduler::DropPrefixCache() {
  absl::MutexLock lock(&mu_);
  inbox_.drop_cache = true;
}

SchedulerStats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  SchedulerStats s = stats_;
  s.free_blocks = pool_.free_blocks();
  s.total_blocks = pool_.num_blocks();
  return s;
}

void Scheduler::Loop() {
  for (;;) {
    Inbox inbox;
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      // Sleep only when nothing can make progress without new input.
      const bool admissible = !waiting_.empty() && static_cast<int64_t>(admitted_.size()) < options_.max_batch &&
                              !free_slots_.empty() && BlocksNeeded(waiting_.front()->request) <= AvailableBlocks();
      const bool runnable = admissible || std::any_of(admitted_.begin(), admitted_.end(), [](const auto& s) {
                              return s->phase == Phase::kRunning || (s->phase == Phase::kLanding && s->has_landed);
                            });
      if (!runnable) {
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || !inbox_.submitted.empty() || !inbox_.cancelled.empty() || !inbox_.landed.empty() ||
                 inbox_.drop_cache;
        };
        if (quarantined_.empty()) {
          mu_.Await(absl::Condition(&ready));
        } else {
          mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));  // to release them in time
        }
      }
      std::swap(inbox, inbox_);
      stopping = stop_;
    }
    if (stopping) {
      for (auto& s : inbox.submitted) waiting_.push_back(std::move(s));
      for (auto& s : waiting_) End(*s, Finish::kNone, absl::UnavailableError("the decode worker is shutting down"));
      for (auto& s : admitted_) {
        // A landing request's blocks may still be written by its prefill worker; the pool dies
        // with us, so nothing is reused.
        End(*s, Finish::kNone, absl::UnavailableError("the decode worker is shutting down"));
      }
      ReleaseQuarantined(true);
      return;
    }
    Drain(inbox);
    ReleaseQuarantined(false);
    SettleLandings();
    Admit();
    RunStep();
    absl::MutexLock lock(&mu_);
    stats_.running = static_cast<int64_t>(admitted_.size());
    stats_.steps = steps_;
    stats_.generated_tokens = generated_total_;
    stats_.handoffs = handoffs_;
    stats_.handoff_seconds = handoff_seconds_;
    stats_.local_resumes = local_resumes_;
    if (cache_ != nullptr) stats_.prefix = cache_->stats();
  }
}

int64_t Scheduler::AvailableBlocks() const {
  return pool_.free_blocks() + (cache_ != nullptr ? cache_->Evictable() : 0);
}

void Scheduler::Drain(Inbox& inbox) {
  if (inbox.drop_cache && cache_ != nullptr) cache_->Evict(std::numeric_limits<int64_t>::max());
  for (auto& s : inbox.submitted) waiting_.push_back(std::move(s));
  for (auto& [id, landing] : inbox.landed) {
    for (auto& s : admitted_) {
      if (s->request.id == id && s->phase == Phase::kLanding) {
        s->has_landed = true;
        s->landed = landing;
      }
    }
  }
  for (const std::string& id : inbox.cancelled) {
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
      if ((*it)->request.id == id) {
        End(**it, Finish::kNone, absl::CancelledError("the request was cancelled"));
        waiting_.erase(it);
        break;
      }
    }
    for (auto& s : admitted_) {
      if (s->request.id == id) s->cancelled = true;
    }
  }
}

absl::Status Scheduler::VerifyLanded(Sequence& s) {
  const engine::KvLayout& layout = pool_.layout();
  const uint8_t* state = landing_.data() + static_cast<size_t>(s.landing_slot) * static_cast<size_t>(layout.state_bytes());
  STRATA_RETURN_IF_ERROR(
      Annotate(engine::VerifyKvRecord(state, layout.state_bytes(), engine::KvRecordKind::kState, layout.fingerprint()),
               "landed state slot"));
  const auto* header = reinterpret_cast<const engine::KvRecordHeader*>(state);
  if (static_cast<int64_t>(header->tokens) != s.request.remote_prefill_tokens) {
    return absl::DataLossError(absl::StrCat("landed state is at position ", header->tokens, ", want ",
                                            s.request.remote_prefill_tokens));
  }
  const int64_t blocks = layout.BlocksFor(s.request.remote_prefill_tokens);
  for (int64_t b = 0; b < blocks; ++b) {
    STRATA_RETURN_IF_ERROR(Annotate(engine::VerifyKvRecord(pool_.block(s.cache.blocks[static_cast<size_t>(b)]),
                                                           layout.block_bytes(), engine::KvRecordKind::kBlock,
                                                           layout.fingerprint()),
                                    absl::StrCat("landed KV block ", b)));
  }
  std::memcpy(s.cache.state.data(), state, static_cast<size_t>(layout.state_bytes()));
  s.cache.position = s.request.remote_prefill_tokens;
  s.cached_tokens = s.landed.cached_tokens;
  // The checkpoint at the prompt's last full block, for the prefix cache: used only if it is the
  // record it should be (a prefill worker that sent none, or a bad one, costs only a later reuse).
  const int64_t want = s.request.remote_prefill_tokens / engine::kBlockTokens * engine::kBlockTokens;
  if (cache_ != nullptr && want > 0 && s.landed.checkpoint_tokens == want) {
    const uint8_t* checkpoint = landing_.data() + static_cast<size_t>(options_.max_batch + s.landing_slot) *
                                                      static_cast<size_t>(layout.state_bytes());
    const auto* h = reinterpret_cast<const engine::KvRecordHeader*>(checkpoint);
    if (engine::VerifyKvRecord(checkpoint, layout.state_bytes(), engine::KvRecordKind::kState, layout.fingerprint())
            .ok() &&
        h->tokens == static_cast<uint64_t>(want)) {
      s.latest = {want, std::vector<uint8_t>(checkpoint, checkpoint + layout.state_bytes())};
    }
  }
  return absl::OkStatus();
}

void Scheduler::SettleLandings() {
  for (auto& s : admitted_) {
    if (s->phase != Phase::kLanding || !s->has_landed) continue;
    // The transfer has settled (landed or failed): the blocks are ours again.
    if (s->cancelled) {
      End(*s, Finish::kNone, absl::CancelledError("the request was cancelled"));
      continue;
    }
    absl::Status status = s->landed.status;
    const auto verify_begin = std::chrono::steady_clock::now();
    if (status.ok()) status = VerifyLanded(*s);
    if (!status.ok()) {
      End(*s, Finish::kNone, Annotate(status, "prefill"));
      continue;
    }
    ++handoffs_;
    handoff_seconds_ += s->landed.transfer_wait_ms / 1e3 +
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - verify_begin).count();
    s->phase = Phase::kRunning;
    s->cacheable = true;
  }
  std::erase_if(admitted_, [](const auto& s) { return s == nullptr; });
}

bool Scheduler::AdmitFromCache(Sequence& s) {
  if (cache_ == nullptr) return false;
  const int64_t prompt = static_cast<int64_t>(s.request.prompt.size());
  const std::vector<engine::BlockKey> keys = engine::PrefixBlockKeys(scope_, s.request.cache_namespace, s.request.prompt);
  // The prompt's last token is always computed here: its logits give the first token.
  engine::PrefixHit hit = cache_->Match(keys, (prompt - 1) / engine::kBlockTokens);
  const bool worth = !hit.blocks.empty() &&
                     (s.request.remote_prefill_tokens == 0 || prompt - hit.tokens() <= options_.local_prefill_limit);
  const int64_t need = BlocksNeeded(s.request) - static_cast<int64_t>(hit.blocks.size());
  if (worth && need > pool_.free_blocks()) cache_->Evict(need - pool_.free_blocks());
  if (!worth || need > pool_.free_blocks()) {
    for (int32_t b : hit.blocks) pool_.Free(b);
    return false;
  }
  absl::StatusOr<engine::SequenceCache> resumed = model_.ResumeSequence(std::move(hit.blocks), hit.checkpoint);
  if (!resumed.ok()) {
    spdlog::warn("request {}: {}; not reusing its cached prefix", s.request.id, resumed.status().ToString());
    return false;
  }
  s.cache = std::move(*resumed);
  s.cached_tokens = s.cache.position;
  s.request.remote_prefill_tokens = 0;  // the rest is computed here
  ++local_resumes_;
  return true;
}

void Scheduler::Admit() {
  while (!waiting_.empty() && static_cast<int64_t>(admitted_.size()) < options_.max_batch && !free_slots_.empty()) {
    Sequence& s = *waiting_.front();
    const int64_t need = BlocksNeeded(s.request);
    if (need > AvailableBlocks()) break;  // first come, first served: no overtaking
    const bool resumed = AdmitFromCache(s);
    if (!resumed) {
      if (need > pool_.free_blocks() && cache_ != nullptr) cache_->Evict(need - pool_.free_blocks());
      if (need > pool_.free_blocks()) break;
      s.cache = model_.NewSequence();
    }
    bool ok = true;
    while (static_cast<int64_t>(s.cache.blocks.size()) < need) {
      auto id = pool_.Allocate();
      if (!id.ok()) {
        ok = false;
        break;
      }
      s.cache.blocks.push_back(*id);
    }
    if (!ok) {
      model_.Release(s.cache);
      break;
    }
    s.plan.every = cache_ != nullptr ? options_.checkpoint_every : 0;
    s.sampler = std::make_unique<engine::Sampler>(s.request.sampling, options_.num_tokens);
    s.landing_slot = free_slots_.back();
    free_slots_.pop_back();
    {
      absl::MutexLock lock(&mu_);
      --queued_;
      stats_.queued = queued_;
      stats_.queued_tokens -= static_cast<int64_t>(s.request.prompt.size());
    }
    if (s.request.remote_prefill_tokens > 0) {
      s.phase = Phase::kLanding;
      Admission admission;
      admission.blocks = s.cache.blocks;
      admission.landing_slot = s.landing_slot;
      const int64_t state_bytes = pool_.layout().state_bytes();
      admission.state_offset = s.landing_slot * state_bytes;
      admission.checkpoint_offset = (options_.max_batch + s.landing_slot) * state_bytes;
      // No stale record from the slot's last user can pass for this request's checkpoint.
      std::memset(landing_.data() + admission.checkpoint_offset, 0, engine::kKvHeaderBytes);
      s.callbacks.on_admitted(admission);
    } else {
      s.phase = Phase::kRunning;
      s.cacheable = true;
    }
    admitted_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Scheduler::TakeCheckpoint(Sequence& s) {
  const int64_t position = s.cache.position;
  if (cache_ == nullptr || position == 0 || position % engine::kBlockTokens != 0) return;
  std::vector<uint8_t> state = model_.SnapshotState(s.cache);
  if (s.plan.every > 0 && (position / engine::kBlockTokens) % s.plan.every == 0) {
    s.checkpoints.emplace_back(position, std::move(state));
  } else {
    s.latest = {position, std::move(state)};
  }
}

void Scheduler::CacheFinished(Sequence& s) {
  if (cache_ == nullptr || !s.cacheable) return;
  // The tokens its KV covers: the prompt, then what it generated and fed back.
  std::vector<int32_t> tokens = s.request.prompt;
  tokens.insert(tokens.end(), s.generated_tokens.begin(), s.generated_tokens.end());
  tokens.resize(static_cast<size_t>(std::min<int64_t>(s.cache.position, static_cast<int64_t>(tokens.size()))));
  const std::vector<engine::BlockKey> keys = engine::PrefixBlockKeys(scope_, s.request.cache_namespace, tokens);
  if (keys.empty()) return;
  cache_->Insert(keys, absl::MakeConstSpan(s.cache.blocks).subspan(0, keys.size()));
  if (!s.latest.second.empty()) s.checkpoints.push_back(std::move(s.latest));
  for (auto& [position, state] : s.checkpoints) {
    const size_t block = static_cast<size_t>(position / engine::kBlockTokens);
    if (block >= 1 && block <= keys.size()) cache_->InsertCheckpoint(keys[block - 1], std::move(state));
  }
  s.checkpoints.clear();
}

void Scheduler::RunStep() {
  // Cancelled running requests leave first.
  for (auto& s : admitted_) {
    if (s->phase == Phase::kRunning && s->cancelled) End(*s, Finish::kNone, absl::CancelledError("the request was cancelled"));
  }
  std::erase_if(admitted_, [](const auto& s) { return s == nullptr; });

  std::vector<engine::StepInput> inputs;
  std::vector<Sequence*> in_step;
  std::vector<int32_t> one_tokens;  // decode tokens, stable storage for the spans
  one_tokens.reserve(admitted_.size());
  // Prompts still to compute share the step's budget, the shortest remainder first (a short
  // prompt is never stuck behind a long one); every prompt gets at least one token, so a long one
  // never starves behind the others either.
  std::vector<Sequence*> prompts;
  for (auto& s : admitted_) {
    if (s->phase == Phase::kRunning && s->cache.position < static_cast<int64_t>(s->request.prompt.size())) {
      prompts.push_back(s.get());
    }
  }
  auto remaining = [](const Sequence* s) { return static_cast<int64_t>(s->request.prompt.size()) - s->cache.position; };
  std::stable_sort(prompts.begin(), prompts.end(),
                   [&](const Sequence* a, const Sequence* b) { return remaining(a) < remaining(b); });
  absl::flat_hash_map<const Sequence*, int64_t> chunk;
  int64_t budget = options_.chunk_tokens;
  for (const Sequence* s : prompts) {
    // A chunk ends at the next checkpoint position, where the state is taken for the cache.
    const int64_t to_checkpoint =
        s->plan.ChunkEnd(s->cache.position, static_cast<int64_t>(s->request.prompt.size())) - s->cache.position;
    const int64_t n = std::min({remaining(s), std::max<int64_t>(budget, 1), to_checkpoint});
    budget -= n;
    chunk[s] = n;
  }
  for (auto& s : admitted_) {
    if (s->phase != Phase::kRunning) continue;
    const int64_t prompt = static_cast<int64_t>(s->request.prompt.size());
    if (s->cache.position < prompt) {
      const int64_t n = chunk[s.get()];
      inputs.push_back({&s->cache, absl::MakeConstSpan(s->request.prompt).subspan(static_cast<size_t>(s->cache.position), static_cast<size_t>(n)),
                        s->cache.position + n == prompt});
    } else {
      one_tokens.push_back(s->next_token);
      inputs.push_back({&s->cache, absl::MakeConstSpan(&one_tokens.back(), 1), true});
    }
    in_step.push_back(s.get());
  }
  if (inputs.empty()) return;

  std::vector<float> logits;
  absl::Status status = model_.Step(inputs, &logits);
  ++steps_;
  if (!status.ok()) {
    spdlog::error("decode step over {} requests failed: {}", inputs.size(), status.ToString());
    for (Sequence* s : in_step) {
      s->cacheable = false;
      End(*s, Finish::kNone, Annotate(status, "model step"));
    }
    std::erase_if(admitted_, [](const auto& s) { return s == nullptr; });
    return;
  }
  const int64_t vocab = model_.config().vocab_size;
  size_t row = 0;
  for (size_t i = 0; i < in_step.size(); ++i) {
    TakeCheckpoint(*in_step[i]);
    if (!inputs[i].want_logits) continue;
    Sequence& s = *in_step[i];
    const float* l = logits.data() + row * static_cast<size_t>(vocab);
    ++row;
    const int32_t token = s.sampler->Sample(l);
    Event event;
    event.tokens.push_back(token);
    if (s.request.logprobs) event.logprobs.push_back(static_cast<float>(s.sampler->LogProb(l, token)));
    ++s.generated;
    ++generated_total_;
    s.next_token = token;
    s.generated_tokens.push_back(token);
    Finish finish = Finish::kNone;
    if (token == options_.eos_id && !s.request.ignore_eos) {
      finish = Finish::kStop;
    } else if (s.generated >= s.request.max_tokens) {
      finish = Finish::kLength;
    }
    if (finish != Finish::kNone) {
      event.done = true;
      event.finish = finish;
      event.cached_tokens = s.cached_tokens;
    }
    s.callbacks.on_event(std::move(event));
    if (finish != Finish::kNone) End(s, finish, absl::OkStatus());
  }
  std::erase_if(admitted_, [](const auto& s) { return s == nullptr; });
}

void Scheduler::ReleaseQuarantined(bool all) {
  const absl::Time now = absl::Now();
  std::erase_if(quarantined_, [&](Quarantined& q) {
    if (!all && q.until > now) return false;
    model_.Release(q.cache);
    free_slots_.push_back(q.landing_slot);
    return true;
  });
}

// Ends `s`: frees its blocks and slot (or quarantines them: an unfenced transfer), sends the final
// event unless a token event already carried it, and drops it from admitted_ (by nulling its slot
// there; callers erase).
void Scheduler::End(Sequence& s, Finish finish, absl::Status status) {
  const bool queued = s.phase == Phase::kQueued;
  if (!queued && s.landed.fenced) CacheFinished(s);
  if (!queued && !s.landed.fenced) {
    spdlog::warn("request {}: its KV transfer could not be fenced; {} blocks held back for {}", s.request.id,
                 s.cache.blocks.size(), absl::FormatDuration(options_.quarantine));
    quarantined_.push_back({std::move(s.cache), s.landing_slot, absl::Now() + options_.quarantine});
    s.cache = engine::SequenceCache();
    s.landing_slot = -1;
  } else if (!queued) {
    model_.Release(s.cache);
    if (s.landing_slot >= 0) free_slots_.push_back(s.landing_slot);
    s.landing_slot = -1;
  }
  if (finish == Finish::kNone) {
    Event event;
    event.done = true;
    event.status = std::move(status);
    event.cached_tokens = s.cached_tokens;
    s.callbacks.on_event(std::move(event));
  }
  {
    absl::MutexLock lock(&mu_);
    if (queued) {
      --queued_;
      stats_.queued = queued_;
      stats_.queued_tokens -= static_cast<int64_t>(s.request.prompt.size());
    }
  }
  for (auto& p : admitted_) {
    if (p.get() == &s) p.reset();
  }
}

}  // namespace strata::decode
