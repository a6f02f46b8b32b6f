#include "expert_pool/remote_experts.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/numerics.h"
#include "spdlog/spdlog.h"

namespace strata::expert_pool {

absl::StatusOr<std::unique_ptr<RemoteExperts>> RemoteExperts::Create(const engine::ModelConfig& config,
                                                                     transport::Transport& transport,
                                                                     std::vector<RankHandle> ranks,
                                                                     const RemoteExpertsOptions& options) {
  if (ranks.empty()) return absl::InvalidArgumentError("expert pool: no ranks");
  if (options.waves < 1 || options.max_rows < 1) {
    return absl::InvalidArgumentError("expert pool: waves and max_rows must be at least 1");
  }
  std::unique_ptr<RemoteExperts> r(new RemoteExperts(config, transport, options));
  const int64_t k = config.num_experts_per_tok, d = config.hidden_size;
  const size_t combine_bytes = static_cast<size_t>(options.max_rows * k * d * 2);
  STRATA_ASSIGN_OR_RETURN(r->staging_, transport.Allocate(static_cast<size_t>(r->part_bytes_) * ranks.size()));
  STRATA_ASSIGN_OR_RETURN(r->combine_, transport.Allocate(combine_bytes));
  transport.SetMessageHandler(kCombineMessage, [p = r.get()](std::string_view m) { p->OnCombine(m); });
  r->homes_.assign(static_cast<size_t>(config.num_hidden_layers),
                   std::vector<std::vector<int32_t>>(static_cast<size_t>(config.n_routed_experts)));
  for (size_t i = 0; i < ranks.size(); ++i) {
    Rank rank;
    rank.handle = std::move(ranks[i]);
    const transport::ByteRange whole{0, combine_bytes};
    STRATA_ASSIGN_OR_RETURN(rank.grant, transport.GrantAccess(*r->combine_, {&whole, 1}));
    AttachRequest request{.client_address = transport.address(),
                          .combine = rank.grant->Describe(),
                          .rank_index = static_cast<int32_t>(i),
                          .max_rows = options.max_rows};
    absl::StatusOr<RankAttachment> a = rank.handle.attach(request);
    if (!a.ok()) return Annotate(a.status(), absl::StrCat("attaching to expert rank ", rank.handle.name));
    if (a->dispatch.length < static_cast<uint64_t>(r->part_bytes_) ||
        a->experts.size() != static_cast<size_t>(config.num_hidden_layers)) {
      return absl::FailedPreconditionError(absl::StrCat("expert rank ", rank.handle.name,
                                                        " answered with another model's shape or a short region"));
    }
    rank.attachment = *std::move(a);
    STRATA_ASSIGN_OR_RETURN(rank.ep, transport.Connect(rank.attachment.address));
    for (size_t l = 0; l < rank.attachment.experts.size(); ++l) {
      for (int32_t e : rank.attachment.experts[l]) {
        if (e < 0 || e >= config.n_routed_experts) {
          return absl::FailedPreconditionError(absl::StrCat("expert rank ", rank.handle.name, " holds expert ", e));
        }
        r->homes_[l][static_cast<size_t>(e)].push_back(static_cast<int32_t>(i));
      }
    }
    r->ranks_.push_back(std::move(rank));
  }
  for (size_t l = 0; l < r->homes_.size(); ++l) {
    for (size_t e = 0; e < r->homes_[l].size(); ++e) {
      if (r->homes_[l][e].empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("expert pool: no rank holds expert ", e, " of layer ", l));
      }
    }
  }
  absl::MutexLock lock(&r->mu_);
  r->rank_answers_.assign(r->ranks_.size(), 0);
  r->unreachable_.assign(r->ranks_.size(), false);
  return r;
}

RemoteExperts::RemoteExperts(const engine::ModelConfig& config, transport::Transport& transport,
                             const RemoteExpertsOptions& options)
    : config_(config),
      transport_(transport),
      options_(options),
      d_(config.hidden_size),
      part_bytes_(DispatchBytes(config.hidden_size, config.num_experts_per_tok, options.max_rows)) {}

RemoteExperts::~RemoteExperts() {
  transport_.SetMessageHandler(kCombineMessage, [](std::string_view) {});
  for (Rank& r : ranks_) {
    if (r.handle.detach) r.handle.detach(r.attachment.client);
  }
}

RemoteExpertsStats RemoteExperts::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::Status RemoteExperts::Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                                const float* weights, int64_t k, float* out) {
  if (layer < 0 || layer >= static_cast<int64_t>(homes_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("expert pool: layer ", layer, " outside the model"));
  }
  if (k < 1 || k > config_.num_experts_per_tok) {
    return absl::InvalidArgumentError(absl::StrCat("expert pool: ", k, " experts per token, the model routes to ",
                                                   config_.num_experts_per_tok));
  }
  const auto start = std::chrono::steady_clock::now();
  for (int64_t t0 = 0; t0 < n; t0 += options_.max_rows) {
    const int64_t m = std::min(options_.max_rows, n - t0);
    absl::Status s = RunChunk(layer, x + t0 * d_, m, expert_ids + t0 * k, weights + t0 * k, k, out + t0 * d_);
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);
      ++stats_.failures;
      return Annotate(s, absl::StrCat("layer ", layer));
    }
  }
  absl::MutexLock lock(&mu_);
  ++stats_.runs;
  stats_.pairs += n * k;
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return absl::OkStatus();
}

absl::Status RemoteExperts::RunChunk(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                                     const float* weights, int64_t k, float* out) {
  const int64_t experts = config_.n_routed_experts, row_bytes = RowBytes(d_);
  const size_t R = ranks_.size();
  // Each pair to the live home with the fewest pairs so far (replicas share the load), and to
  // its wave there: the position of its expert among the rank's, cut into `waves` groups.
  std::vector<int32_t> rank_of(static_cast<size_t>(n * k));
  std::vector<std::vector<std::vector<int64_t>>> waves(R, std::vector<std::vector<int64_t>>(options_.waves));
  std::vector<int64_t> load(R, 0);
  for (int64_t p = 0; p < n * k; ++p) {
    const int32_t e = expert_ids[p];
    if (e < 0 || e >= experts) return absl::InvalidArgumentError(absl::StrCat("expert pool: expert id ", e));
    int32_t best = -1;
    for (int32_t r : homes_[static_cast<size_t>(layer)][static_cast<size_t>(e)]) {
      if (!ranks_[static_cast<size_t>(r)].failed && (best < 0 || load[static_cast<size_t>(r)] < load[static_cast<size_t>(best)])) best = r;
    }
    if (best < 0) {
      std::string names;
      for (int32_t r : homes_[static_cast<size_t>(layer)][static_cast<size_t>(e)]) {
        absl::StrAppend(&names, names.empty() ? "" : ", ", ranks_[static_cast<size_t>(r)].handle.name);
      }
      return absl::UnavailableError(absl::StrCat("expert pool: expert ", e, " lives only on failed rank(s) ", names));
    }
    ++load[static_cast<size_t>(best)];
    rank_of[static_cast<size_t>(p)] = best;
    const std::vector<int32_t>& held = ranks_[static_cast<size_t>(best)].attachment.experts[static_cast<size_t>(layer)];
    const int64_t pos = std::lower_bound(held.begin(), held.end(), e) - held.begin();
    waves[static_cast<size_t>(best)][static_cast<size_t>(pos * options_.waves / static_cast<int64_t>(held.size()))].push_back(p);
  }

  const uint64_t seq = ++seq_;
  std::vector<int64_t> expected(R, 0);
  for (size_t r = 0; r < R; ++r) {
    for (const auto& w : waves[r]) expected[r] += w.empty() ? 0 : 1;
  }
  {
    absl::MutexLock lock(&mu_);
    waiting_seq_ = seq;
    std::fill(rank_answers_.begin(), rank_answers_.end(), 0);
    std::fill(unreachable_.begin(), unreachable_.end(), false);
    answer_error_ = absl::OkStatus();
  }
  std::vector<int64_t> result_of(static_cast<size_t>(n * k));
  int64_t result_base = 0, sent_bytes = 0;
  auto* staging = reinterpret_cast<uint8_t*>(staging_->Describe().address);
  for (size_t r = 0; r < R; ++r) {
    if (expected[r] == 0) continue;
    Rank& rank = ranks_[r];
    uint8_t* part = staging + r * static_cast<size_t>(part_bytes_);
    std::vector<int32_t> row_of(static_cast<size_t>(n), -1);
    int32_t next_row = 0;
    uint64_t offset = 0;
    for (int w = 0; w < options_.waves; ++w) {
      const std::vector<int64_t>& ps = waves[r][static_cast<size_t>(w)];
      if (ps.empty()) continue;
      DispatchHeader h;
      h.client = rank.attachment.client;
      h.seq = seq;
      h.layer = static_cast<int32_t>(layer);
      h.wave = w;
      h.first_row = next_row;
      uint8_t* at = part + offset;
      for (int64_t p : ps) {
        const int64_t t = p / k;
        if (row_of[static_cast<size_t>(t)] >= 0) continue;
        row_of[static_cast<size_t>(t)] = next_row;
        EncodeRow(x + t * d_, d_, at + (next_row - h.first_row) * row_bytes);
        ++next_row;
      }
      h.new_rows = next_row - h.first_row;
      h.pairs = static_cast<int32_t>(ps.size());
      uint8_t* pairs = at + h.new_rows * row_bytes;
      for (size_t i = 0; i < ps.size(); ++i) {
        const int64_t p = ps[i];
        const Pair pair{row_of[static_cast<size_t>(p / k)], expert_ids[p], weights[p]};
        std::memcpy(pairs + i * sizeof(Pair), &pair, sizeof(pair));
        result_of[static_cast<size_t>(p)] = result_base + static_cast<int64_t>(i);
      }
      h.offset = offset;
      h.result_offset = static_cast<uint64_t>(result_base * d_ * 2);
      const size_t bytes = static_cast<size_t>(h.new_rows * row_bytes) + ps.size() * sizeof(Pair);
      auto failed = [this, seq, r, name = rank.handle.name](absl::Status s) {
        if (s.ok()) return;
        absl::MutexLock lock(&mu_);
        if (waiting_seq_ != seq) return;
        unreachable_[r] = true;
        // Whatever the transport's reason (a peer gone, its regions unregistered by a restart),
        // the rank cannot be reached: Unavailable, which callers may retry elsewhere.
        if (answer_error_.ok()) {
          answer_error_ = absl::UnavailableError(absl::StrCat("sending to expert rank ", name, ": ", s.message()));
        }
        answered_.Signal();
      };
      rank.ep->Put(at, bytes, rank.attachment.dispatch, offset, failed);
      rank.ep->Send(kDispatchMessage, Bytes(&h, sizeof(h)), failed);
      offset += bytes;
      result_base += h.pairs;
      sent_bytes += static_cast<int64_t>(bytes);
    }
  }

  // Every wave answered (well or not) by every rank that can still answer, or the deadline.
  absl::Status error;
  std::vector<int64_t> got;
  std::vector<bool> unreachable;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + options_.timeout;
    auto owed = [&] {
      for (size_t r = 0; r < R; ++r) {
        if (!unreachable_[r] && rank_answers_[r] < expected[r]) return true;
      }
      return false;
    };
    while (owed()) {
      if (answered_.WaitWithDeadline(&mu_, deadline)) break;
    }
    error = answer_error_;
    got = rank_answers_;
    unreachable = unreachable_;
    waiting_seq_ = 0;
    stats_.bytes_sent += sent_bytes;
    stats_.bytes_received += result_base * d_ * 2;
  }
  for (size_t r = 0; r < R; ++r) {
    if (!unreachable[r] && got[r] >= expected[r]) continue;
    ranks_[r].failed = true;
    ranks_[r].grant.reset();
    spdlog::warn("expert pool: rank {} failed (layer {}); avoided from now on", ranks_[r].handle.name, layer);
    if (error.ok()) {
      error = absl::UnavailableError(absl::StrCat("expert rank ", ranks_[r].handle.name, " did not answer within ",
                                                  absl::FormatDuration(options_.timeout)));
    }
  }
  if (!error.ok()) return error;

  // Σ per token in increasing expert id, from 0, in FP32: LocalExperts' order.
  const auto* results = reinterpret_cast<const uint16_t*>(combine_->Describe().address);
  std::vector<std::pair<int32_t, int64_t>> mine(static_cast<size_t>(k));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) mine[static_cast<size_t>(j)] = {expert_ids[t * k + j], result_of[static_cast<size_t>(t * k + j)]};
    std::sort(mine.begin(), mine.end());
    float* o = out + t * d_;
    std::fill(o, o + d_, 0.0f);
    for (const auto& [e, at] : mine) {
      const uint16_t* v = results + at * d_;
      for (int64_t i = 0; i < d_; ++i) o[i] += engine::Bf16ToFloat(v[i]);
    }
  }
  return absl::OkStatus();
}

void RemoteExperts::OnCombine(std::string_view payload) {
  absl::StatusOr<CombineHeader> h = ParseHeader<CombineHeader>(payload, "combine");
  if (!h.ok()) {
    spdlog::warn("{}", h.status().ToString());
    return;
  }
  absl::MutexLock lock(&mu_);
  if (waiting_seq_ == 0 || h->seq != waiting_seq_ || h->rank < 0 || h->rank >= static_cast<int32_t>(rank_answers_.size())) return;
  ++rank_answers_[static_cast<size_t>(h->rank)];
  if (h->code != 0 && answer_error_.ok()) {
    answer_error_ = absl::Status(static_cast<absl::StatusCode>(h->code),
                                 absl::StrCat("expert rank ", ranks_[static_cast<size_t>(h->rank)].handle.name, ": ",
                                              std::string(h->message, strnlen(h->message, sizeof(h->message)))));
  }
  answered_.Signal();
}

}  // namespace strata::expert_pool
