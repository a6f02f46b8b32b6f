// The model's small per-token operations (MODEL.md §4–§5), scalar and exact: RMSNorm, RoPE with
// YaRN, the per-head q scaling in BF16 arithmetic, the Walsh–Hadamard rotation, and the mHC
// residual mixing. The heavy ops (linears) go through engine::Backend.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace strata::engine {

// out[i] = bf16(x[i] · rsqrt(mean(x²) + eps) · w[i]); statistics in FP32. `out` may alias `x`.
void RmsNorm(const float* x, const float* w, int64_t n, double eps, float* out);

// Rounds n values to BF16 in place.
void RoundBf16(float* x, int64_t n);

// Rotation frequencies of one layer kind: f_j = fp32(1 / fp32(θ^(2j/r))), with YaRN applied for
// compressed layers (ratio > 0).
class Rope {
 public:
  Rope(const ModelConfig& config, bool compressed_layer);
  // Rotates the last `dim()` values of x (consecutive pairs) by angle ±t·f_j; results BF16.
  void Apply(float* x, int64_t position, bool inverse) const;
  int64_t dim() const { return static_cast<int64_t>(freqs_.size()) * 2; }
  const std::vector<float>& freqs() const { return freqs_; }

 private:
  std::vector<float> freqs_;
};

// The per-head q scaling, in BF16 arithmetic as the reference: s = bf16(mean(bf16(q²))),
// s = bf16(s + eps), g = bf16(1/sqrt(s)), q = bf16(q·g).
void ScaleHead(float* q, int64_t n, double eps);

// Normalised Walsh–Hadamard rotation of n (a power of two) values, scale n^-1/2; results BF16.
void HadamardBf16(float* x, int64_t n);

// mHC: the mixing coefficients of one sublayer for one token (MODEL.md §4).
struct HcMix {
  std::vector<float> pre;   // [hc]
  std::vector<float> post;  // [hc]
  std::vector<float> comb;  // [hc][hc], row-major: comb[i*hc + j] mixes stream i into stream j
};

// From μ (already multiplied by ρ), the base and the three scales.
void ComputeHcMix(const float* mu, const float* base, const float* scale, int64_t hc, int64_t sinkhorn_iters,
                  double eps, HcMix* mix);
// ρ = 1/sqrt(mean(x̂²) + eps) of the flattened streams.
float HcRho(const float* streams, int64_t n, double eps);

// Σ a[i]·b[i] in FP32 with 16 partial sums (a fixed order: the same result for the same inputs
// whatever the batch), vectorised for the CPU it runs on.
float Dot(const float* a, const float* b, int64_t n);
// The lightning indexer's scores of `count` keys [count][dim]: out[j] = Σ_h w[h]·ReLU(q_h·k_j),
// heads in order, each dot product with Dot's summation order. One call per slice of keys.
void IndexerScores(const float* q, const float* w, int64_t heads, const float* keys, int64_t count, int64_t dim,
                   float* out);
// y[i] += alpha · x[i]
void Axpy(float alpha, const float* x, float* y, int64_t n);

float Sigmoid(float x);
float Silu(float x);
// torch.nn.functional.softplus (threshold 20).
float Softplus(float x);

}  // namespace strata::engine
