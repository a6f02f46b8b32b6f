#include "expert_pool/expert_rank.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/numerics.h"
#include "spdlog/spdlog.h"

namespace strata::expert_pool {
namespace {

// Waves queued at once over all workers; past it a wave is answered ResourceExhausted (a worker
// has at most a Run's waves in flight, so only a flood of workers reaches it).
constexpr size_t kMaxQueuedWaves = 4096;

}  // namespace

int64_t DispatchBytes(int64_t d, int64_t k, int64_t max_rows) {
  return max_rows * RowBytes(d) + max_rows * k * static_cast<int64_t>(sizeof(Pair));
}

absl::StatusOr<std::unique_ptr<ExpertRank>> ExpertRank::Create(const engine::ModelWeights& weights,
                                                               engine::Backend& backend,
                                                               transport::Transport& transport,
                                                               std::vector<std::vector<int32_t>> experts) {
  const engine::ModelConfig& c = weights.config();
  if (static_cast<int64_t>(experts.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expert rank: experts for ", experts.size(), " layers, the model has ",
                                                   c.num_hidden_layers));
  }
  for (size_t l = 0; l < experts.size(); ++l) {
    auto& ids = experts[l];
    std::sort(ids.begin(), ids.end());
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t e = ids[i];
      if (e < 0 || e >= c.n_routed_experts || (i > 0 && ids[i - 1] == e)) {
        return absl::InvalidArgumentError(absl::StrCat("expert rank: layer ", l, " lists expert ", e,
                                                       " twice or outside [0, ", c.n_routed_experts, ")"));
      }
      const engine::LayerWeights& lw = weights.layer(static_cast<int64_t>(l));
      if (static_cast<size_t>(e) >= lw.experts.size() || lw.experts[static_cast<size_t>(e)].w1.data == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("expert rank: expert ", e, " of layer ", l, " is placed here but was not loaded"));
      }
    }
  }
  std::unique_ptr<ExpertRank> r(new ExpertRank(weights, backend, transport, std::move(experts)));
  transport.SetMessageHandler(kDispatchMessage, [p = r.get()](std::string_view m) { p->OnDispatch(m); });
  r->thread_ = std::thread([p = r.get()] { p->Loop(); });
  return r;
}

ExpertRank::ExpertRank(const engine::ModelWeights& weights, engine::Backend& backend, transport::Transport& transport,
                       std::vector<std::vector<int32_t>> experts)
    : weights_(weights),
      backend_(backend),
      transport_(transport),
      experts_(std::move(experts)),
      d_(weights.config().hidden_size),
      k_(weights.config().num_experts_per_tok) {
  const int64_t n = weights.config().n_routed_experts;
  for (size_t l = 0; l < experts_.size(); ++l) {
    const engine::LayerWeights& lw = weights.layer(static_cast<int64_t>(l));
    held_.emplace_back();
    local_.emplace_back(static_cast<size_t>(n), -1);
    for (int32_t e : experts_[l]) {
      local_[l][static_cast<size_t>(e)] = static_cast<int32_t>(held_[l].size());
      held_[l].push_back(lw.experts[static_cast<size_t>(e)]);
    }
  }
}

ExpertRank::~ExpertRank() {
  transport_.SetMessageHandler(kDispatchMessage, [](std::string_view) {});
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    wake_.SignalAll();
  }
  thread_.join();
}

absl::StatusOr<RankAttachment> ExpertRank::Attach(const AttachRequest& request) {
  if (request.max_rows < 1 || request.max_rows > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("expert rank: max_rows ", request.max_rows, " outside [1, 2^20]"));
  }
  auto c = std::make_shared<Client>();
  c->rank_index = request.rank_index;
  c->max_rows = request.max_rows;
  c->combine = request.combine;
  c->dispatch_bytes = DispatchBytes(d_, k_, request.max_rows);
  STRATA_ASSIGN_OR_RETURN(c->ep, transport_.Connect(request.client_address));
  STRATA_ASSIGN_OR_RETURN(c->dispatch, transport_.Allocate(static_cast<size_t>(c->dispatch_bytes)));
  STRATA_ASSIGN_OR_RETURN(c->staging, transport_.Allocate(static_cast<size_t>(request.combine.length)));
  c->x.resize(static_cast<size_t>(request.max_rows * d_));
  RankAttachment a;
  a.address = transport_.address();
  a.dispatch = c->dispatch->Describe();
  a.experts = experts_;
  absl::MutexLock lock(&mu_);
  c->id = a.client = next_client_++;
  clients_[c->id] = std::move(c);
  ++stats_.clients;
  return a;
}

void ExpertRank::Detach(uint64_t client) {
  absl::MutexLock lock(&mu_);
  if (clients_.erase(client) > 0) --stats_.clients;
}

ExpertRankStats ExpertRank::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void ExpertRank::OnDispatch(std::string_view payload) {
  absl::StatusOr<DispatchHeader> h = ParseHeader<DispatchHeader>(payload, "dispatch");
  if (!h.ok()) {
    spdlog::warn("{}", h.status().ToString());
    return;
  }
  absl::MutexLock lock(&mu_);
  jobs_.push_back(Job{h->client, *h});
  wake_.Signal();
}

void ExpertRank::Loop() {
  std::vector<float> xs, out;
  for (;;) {
    Job job;
    std::shared_ptr<Client> c;
    bool overflow = false;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && jobs_.empty()) wake_.Wait(&mu_);
      if (stop_) return;
      job = jobs_.front();
      jobs_.pop_front();
      overflow = jobs_.size() >= kMaxQueuedWaves;
      auto it = clients_.find(job.client);
      if (it != clients_.end()) c = it->second;
    }
    if (c == nullptr) {
      spdlog::warn("expert rank: a wave from worker {}, which is not attached (detached?): dropped", job.client);
      continue;
    }
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = overflow ? absl::ResourceExhaustedError("expert rank: too many waves queued")
                              : Compute(*c, job.header, xs, out);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Answer(*c, job.header, s);
    absl::MutexLock lock(&mu_);
    ++stats_.waves;
    stats_.compute_seconds += seconds;
    if (s.ok()) {
      stats_.pairs += job.header.pairs;
      stats_.rows += job.header.new_rows;
    } else {
      ++stats_.failed_waves;
    }
  }
}

absl::Status ExpertRank::Compute(Client& c, const DispatchHeader& h, std::vector<float>& xs, std::vector<float>& out) {
  if (h.seq != c.seq) {
    c.seq = h.seq;
    c.rows = 0;
  }
  const int64_t row_bytes = RowBytes(d_);
  const int64_t bytes = h.new_rows * row_bytes + h.pairs * static_cast<int64_t>(sizeof(Pair));
  if (h.layer < 0 || h.layer >= static_cast<int32_t>(held_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", h.layer, " outside the model"));
  }
  if (h.first_row != c.rows || h.new_rows < 0 || h.pairs < 0 || h.first_row + h.new_rows > c.max_rows) {
    return absl::InvalidArgumentError(absl::StrCat("rows [", h.first_row, ", +", h.new_rows, ") after ", c.rows,
                                                   " of at most ", c.max_rows));
  }
  if (h.offset > static_cast<uint64_t>(c.dispatch_bytes) || bytes > c.dispatch_bytes - static_cast<int64_t>(h.offset)) {
    return absl::InvalidArgumentError(absl::StrCat("a wave of ", bytes, " bytes at ", h.offset, " leaves the ",
                                                   c.dispatch_bytes, "-byte dispatch region"));
  }
  const uint64_t result_bytes = static_cast<uint64_t>(h.pairs) * static_cast<uint64_t>(d_) * 2;
  if (h.result_offset > c.combine.length || result_bytes > c.combine.length - h.result_offset) {
    return absl::InvalidArgumentError(absl::StrCat("results of ", result_bytes, " bytes at ", h.result_offset,
                                                   " leave the ", c.combine.length, "-byte combine region"));
  }
  const uint8_t* base = reinterpret_cast<const uint8_t*>(c.dispatch->Describe().address) + h.offset;
  for (int32_t i = 0; i < h.new_rows; ++i) {
    DecodeRow(base + i * row_bytes, d_, c.x.data() + (h.first_row + i) * d_);
  }
  c.rows = h.first_row + h.new_rows;
  if (h.pairs == 0) return absl::OkStatus();
  const std::vector<int32_t>& local = local_[static_cast<size_t>(h.layer)];
  std::vector<int32_t> ids(static_cast<size_t>(h.pairs));
  std::vector<float> weights(static_cast<size_t>(h.pairs));
  xs.resize(static_cast<size_t>(h.pairs * d_));
  out.assign(static_cast<size_t>(h.pairs * d_), 0.0f);
  const uint8_t* pairs = base + h.new_rows * row_bytes;
  for (int32_t i = 0; i < h.pairs; ++i) {
    Pair p;
    std::memcpy(&p, pairs + i * sizeof(Pair), sizeof(p));
    if (p.row < 0 || p.row >= c.rows) return absl::InvalidArgumentError(absl::StrCat("pair of row ", p.row));
    if (p.expert < 0 || p.expert >= static_cast<int32_t>(local.size()) || local[static_cast<size_t>(p.expert)] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("expert ", p.expert, " of layer ", h.layer, " is not held here"));
    }
    ids[static_cast<size_t>(i)] = local[static_cast<size_t>(p.expert)];
    weights[static_cast<size_t>(i)] = p.weight;
    std::memcpy(xs.data() + i * d_, c.x.data() + p.row * d_, static_cast<size_t>(d_) * sizeof(float));
  }
  // One expert per row: out = 0 + bf16(expert(x)·w), a BF16 value, so two bytes carry it exactly.
  STRATA_RETURN_IF_ERROR(backend_.RoutedExperts(held_[static_cast<size_t>(h.layer)], xs.data(), h.pairs, ids.data(),
                                                weights.data(), 1, static_cast<float>(weights_.config().swiglu_limit),
                                                out.data()));
  auto* staged = reinterpret_cast<uint16_t*>(c.staging->Describe().address + h.result_offset);
  for (size_t i = 0; i < out.size(); ++i) staged[i] = engine::FloatToBf16(out[i]);
  return absl::OkStatus();
}

void ExpertRank::Answer(Client& c, const DispatchHeader& h, const absl::Status& status) {
  CombineHeader a;
  a.seq = h.seq;
  a.rank = c.rank_index;
  a.wave = h.wave;
  a.pairs = h.pairs;
  a.code = static_cast<int32_t>(status.code());
  if (!status.ok()) {
    const std::string m(status.message());
    std::memcpy(a.message, m.data(), std::min(m.size(), sizeof(a.message) - 1));
    spdlog::warn("expert rank: a wave of layer {} from worker {} failed: {}", h.layer, c.id, status.ToString());
  } else if (h.pairs > 0) {
    const size_t bytes = static_cast<size_t>(h.pairs) * static_cast<size_t>(d_) * 2;
    c.ep->Put(reinterpret_cast<const void*>(c.staging->Describe().address + h.result_offset), bytes, c.combine,
              h.result_offset, [](absl::Status s) {
                if (!s.ok()) spdlog::warn("expert rank: results not delivered: {}", s.ToString());
              });
  }
  c.ep->Send(kCombineMessage, Bytes(&a, sizeof(a)), [](absl::Status s) {
    if (!s.ok()) spdlog::warn("expert rank: an answer not delivered: {}", s.ToString());
  });
}

}  // namespace strata::expert_pool
