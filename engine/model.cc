#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/numerics.h"

namespace strata::engine {

Model::Model(const ModelWeights& weights, Backend& backend, ExpertExecutor& experts, KvPool& pool,
             ThreadPool& threads)
    : weights_(weights),
      backend_(backend),
      experts_(experts),
      pool_(pool),
      threads_(threads),
      rope_window_(weights.config(), /*compressed_layer=*/false),
      rope_compressed_(weights.config(), /*compressed_layer=*/true) {
  const ModelConfig& c = weights.config();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    attention_.push_back(std::make_unique<AttentionLayer>(c, weights.layer(i), i, pool.layout(),
                                                          c.ratio(i) > 0 ? rope_compressed_ : rope_window_,
                                                          backend, threads));
  }
}

SequenceCache Model::NewSequence() const {
  SequenceCache cache;
  cache.state.assign(static_cast<size_t>(pool_.layout().state_bytes()), 0);
  return cache;
}

void Model::Release(SequenceCache& cache) {
  for (int32_t id : cache.blocks) pool_.Free(id);
  cache.blocks.clear();
}

void Model::HcPre(const HcWeights& hc, const float* streams, int64_t rows, std::vector<HcMix>& mixes,
                  float* x_in) {
  const ModelConfig& c = config();
  const int64_t n = c.hc_mult, d = c.hidden_size;
  std::vector<float> mu(static_cast<size_t>(rows * hc.rows));
  backend_.Linear(WeightView{WeightFormat::kF32, hc.fn, nullptr, hc.rows, n * d}, streams, rows, mu.data());
  mixes.resize(static_cast<size_t>(rows));
  threads_.ParallelFor(static_cast<size_t>(rows), [&](size_t t) {
    const float* x = streams + static_cast<int64_t>(t) * n * d;
    float* m = mu.data() + static_cast<int64_t>(t) * hc.rows;
    const float rho = HcRho(x, n * d, c.rms_norm_eps);
    for (int64_t i = 0; i < hc.rows; ++i) m[i] *= rho;
    ComputeHcMix(m, hc.base.data(), hc.scale.data(), n, c.hc_sinkhorn_iters, c.hc_eps, &mixes[t]);
    float* out = x_in + static_cast<int64_t>(t) * d;
    for (int64_t j = 0; j < d; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += mixes[t].pre[static_cast<size_t>(i)] * x[i * d + j];
      out[j] = RoundToBf16(sum);
    }
  });
}

void Model::HcPost(const std::vector<HcMix>& mixes, const float* y, int64_t rows, float* streams) {
  const int64_t n = config().hc_mult, d = config().hidden_size;
  threads_.ParallelFor(static_cast<size_t>(rows), [&](size_t t) {
    float* x = streams + static_cast<int64_t>(t) * n * d;
    const float* yt = y + static_cast<int64_t>(t) * d;
    const HcMix& mix = mixes[t];
    std::vector<float> next(static_cast<size_t>(n * d));
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t k = 0; k < d; ++k) {
        float sum = mix.post[static_cast<size_t>(j)] * yt[k];
        for (int64_t i = 0; i < n; ++i) sum += mix.comb[static_cast<size_t>(i * n + j)] * x[i * d + k];
        next[static_cast<size_t>(j * d + k)] = RoundToBf16(sum);
      }
    }
    std::copy(next.begin(), next.end(), x);
  });
}

absl::Status Model::Ffn(int64_t layer, const float* x, int64_t rows, const std::vector<int32_t>& tokens, float* y) {
  const ModelConfig& c = config();
  const LayerWeights& l = weights_.layer(layer);
  const int64_t E = c.n_routed_experts, k = c.num_experts_per_tok, d = c.hidden_size;
  std::vector<float> logits(static_cast<size_t>(rows * E));
  backend_.Linear(l.gate, x, rows, logits.data());
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  std::vector<float> weights(static_cast<size_t>(rows * k));
  threads_.ParallelFor(static_cast<size_t>(rows), [&](size_t t) {
    float* s = logits.data() + static_cast<int64_t>(t) * E;
    for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(Softplus(s[e]));
    int32_t* chosen = ids.data() + static_cast<int64_t>(t) * k;
    if (l.hash_routed) {
      std::copy_n(l.tid2eid.data() + static_cast<int64_t>(tokens[t]) * k, k, chosen);
    } else {
      std::vector<int32_t> order(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) order[static_cast<size_t>(e)] = static_cast<int32_t>(e);
      auto biased = [&](int32_t e) { return s[e] + l.gate_bias[static_cast<size_t>(e)]; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float ba = biased(a), bb = biased(b);
        return ba != bb ? ba > bb : a < b;  // ties: the lower expert id first
      });
      std::copy_n(order.begin(), k, chosen);
    }
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += s[chosen[j]];
    for (int64_t j = 0; j < k; ++j) {
      weights[static_cast<size_t>(t * k + j)] = s[chosen[j]] / sum * static_cast<float>(c.routed_scaling_factor);
    }
  });
  STRATA_RETURN_IF_ERROR(experts_.Run(layer, x, rows, ids.data(), weights.data(), k, y));
  std::vector<float> shared(static_cast<size_t>(rows * d));
  RunExpertFfn(backend_, l.shared, x, rows, nullptr, static_cast<float>(c.swiglu_limit), shared.data());
  for (int64_t i = 0; i < rows * d; ++i) y[i] = RoundToBf16(y[i] + shared[static_cast<size_t>(i)]);
  return absl::OkStatus();
}

void Model::Logits(const float* streams, const std::vector<int64_t>& rows, std::vector<float>* logits) {
  const ModelConfig& c = config();
  const int64_t n = c.hc_mult, d = c.hidden_size, V = c.vocab_size;
  const HcWeights& hc = weights_.hc_head();
  const int64_t r = static_cast<int64_t>(rows.size());
  std::vector<float> picked(static_cast<size_t>(r * n * d)), mu(static_cast<size_t>(r * n));
  for (int64_t i = 0; i < r; ++i) {
    std::copy_n(streams + rows[static_cast<size_t>(i)] * n * d, n * d, picked.begin() + i * n * d);
  }
  backend_.Linear(WeightView{WeightFormat::kF32, hc.fn, nullptr, hc.rows, n * d}, picked.data(), r, mu.data());
  std::vector<float> h(static_cast<size_t>(r * d));
  for (int64_t i = 0; i < r; ++i) {
    const float* x = picked.data() + i * n * d;
    const float rho = HcRho(x, n * d, c.rms_norm_eps);
    std::vector<float> pre(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      pre[static_cast<size_t>(j)] = Sigmoid(mu[static_cast<size_t>(i * n + j)] * rho * hc.scale[0] +
                                            hc.base[static_cast<size_t>(j)]) +
                                    static_cast<float>(c.hc_eps);
    }
    float* hi = h.data() + i * d;
    for (int64_t k = 0; k < d; ++k) {
      float sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += pre[static_cast<size_t>(j)] * x[j * d + k];
      hi[k] = RoundToBf16(sum);
    }
    RmsNorm(hi, weights_.final_norm().data(), d, c.rms_norm_eps, hi);
  }
  const size_t at = logits->size();
  logits->resize(at + static_cast<size_t>(r * V));
  backend_.Linear(weights_.head(), h.data(), r, logits->data() + at);
}

absl::Status Model::Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                         const LayerObserver& observer) {
  const ModelConfig& c = config();
  const int64_t n = c.hc_mult, d = c.hidden_size;
  // Validate and plan before touching any cache.
  StepLayout step;
  std::vector<int32_t> tokens;
  std::vector<int64_t> logit_rows;
  int64_t blocks_needed = 0;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const StepInput& in = inputs[s];
    const int64_t count = static_cast<int64_t>(in.tokens.size());
    if (count == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has no new tokens"));
    const int64_t end = in.cache->position + count;
    if (end > c.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat("sequence ", s, " would reach position ", end,
                                                ", past the model's limit of ", c.max_position_embeddings));
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary (0..",
                                                       c.vocab_size - 1, ")"));
      }
    }
    blocks_needed += std::max<int64_t>(0, pool_.layout().BlocksFor(end) - static_cast<int64_t>(in.cache->blocks.size()));
    step.seqs.push_back(StepSequenceRef{in.cache, in.cache->position, count, step.rows()});
    for (int64_t i = 0; i < count; ++i) {
      step.positions.push_back(in.cache->position + i);
      step.seq_of_row.push_back(static_cast<int32_t>(s));
      tokens.push_back(in.tokens[static_cast<size_t>(i)]);
    }
    if (in.want_logits) logit_rows.push_back(step.rows() - 1);
  }
  if (blocks_needed > pool_.free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool has ", pool_.free_blocks(), " free blocks, the step needs ",
                                                     blocks_needed));
  }
  for (const StepSequenceRef& s : step.seqs) {
    while (static_cast<int64_t>(s.cache->blocks.size()) < pool_.layout().BlocksFor(s.start + s.n)) {
      STRATA_ASSIGN_OR_RETURN(int32_t id, pool_.Allocate());
      s.cache->blocks.push_back(id);
    }
  }

  const int64_t T = step.rows();
  std::vector<float> streams(static_cast<size_t>(T * n * d));
  const uint16_t* embed = weights_.embed();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < d; ++k) {
        streams[static_cast<size_t>((t * n + i) * d + k)] = Bf16ToFloat(embed[static_cast<int64_t>(tokens[static_cast<size_t>(t)]) * d + k]);
      }
    }
  }
  std::vector<HcMix> mixes;
  std::vector<float> x_in(static_cast<size_t>(T * d)), y(static_cast<size_t>(T * d));
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (observer) observer(layer, streams.data(), T);
    const LayerWeights& l = weights_.layer(layer);
    HcPre(l.hc_attn, streams.data(), T, mixes, x_in.data());
    for (int64_t t = 0; t < T; ++t) RmsNorm(x_in.data() + t * d, l.attn_norm.data(), d, c.rms_norm_eps, x_in.data() + t * d);
    attention_[static_cast<size_t>(layer)]->Forward(step, x_in.data(), pool_, y.data());
    HcPost(mixes, y.data(), T, streams.data());

    HcPre(l.hc_ffn, streams.data(), T, mixes, x_in.data());
    for (int64_t t = 0; t < T; ++t) RmsNorm(x_in.data() + t * d, l.ffn_norm.data(), d, c.rms_norm_eps, x_in.data() + t * d);
    STRATA_RETURN_IF_ERROR(Ffn(layer, x_in.data(), T, tokens, y.data()));
    HcPost(mixes, y.data(), T, streams.data());
  }
  if (observer) observer(c.num_hidden_layers, streams.data(), T);

  for (const StepSequenceRef& s : step.seqs) {
    s.cache->position += s.n;
    // Seal the blocks this step wrote and the state slot: their bytes are now valid records.
    const int64_t first_block = s.start / kBlockTokens, last_block = (s.start + s.n - 1) / kBlockTokens;
    for (int64_t b = first_block; b <= last_block; ++b) {
      const int64_t filled = std::min<int64_t>(kBlockTokens, s.cache->position - b * kBlockTokens);
      SealKvRecord(pool_.block(s.cache->blocks[static_cast<size_t>(b)]), pool_.layout().block_bytes(),
                   KvRecordKind::kBlock, pool_.layout().fingerprint(), static_cast<uint64_t>(filled));
    }
    SealKvRecord(s.cache->state.data(), pool_.layout().state_bytes(), KvRecordKind::kState,
                 pool_.layout().fingerprint(), static_cast<uint64_t>(s.cache->position));
  }
  if (!logit_rows.empty()) Logits(streams.data(), logit_rows, logits);
  return absl::OkStatus();
}

}  // namespace strata::engine
