#include "engine/model_ops.h"

#include <algorithm>
#include <cmath>

#include "engine/numerics.h"

namespace strata::engine {

void RoundBf16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = RoundToBf16(x[i]);
}

void RmsNorm(const float* x, const float* w, int64_t n, double eps, float* out) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = RoundToBf16(x[i] * r * w[i]);
}

Rope::Rope(const ModelConfig& c, bool compressed_layer) {
  const int64_t r = c.qk_rope_head_dim;
  const double theta = compressed_layer ? c.compress_rope_theta : c.rope_theta;
  freqs_.resize(static_cast<size_t>(r / 2));
  for (int64_t j = 0; j < r / 2; ++j) {
    const float power = static_cast<float>(std::pow(theta, static_cast<double>(2 * j) / static_cast<double>(r)));
    freqs_[static_cast<size_t>(j)] = 1.0f / power;
  }
  if (compressed_layer && c.has_rope_scaling) {
    const RopeScaling& y = c.rope_scaling;
    const double l0 = static_cast<double>(y.original_max_position_embeddings);
    const double two_ln_theta = 2.0 * std::log(theta);
    double low = std::floor(static_cast<double>(r) * std::log(l0 / (2 * M_PI * y.beta_fast)) / two_ln_theta);
    double high = std::ceil(static_cast<double>(r) * std::log(l0 / (2 * M_PI * y.beta_slow)) / two_ln_theta);
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(r - 1));
    if (low == high) high += 0.001;
    const float factor = static_cast<float>(y.factor);
    for (int64_t j = 0; j < r / 2; ++j) {
      float ramp = (static_cast<float>(j) - static_cast<float>(low)) / static_cast<float>(high - low);
      ramp = std::min(std::max(ramp, 0.0f), 1.0f);
      const float gamma = 1.0f - ramp;
      float& f = freqs_[static_cast<size_t>(j)];
      f = f / factor * (1.0f - gamma) + f * gamma;
    }
  }
}

void Rope::Apply(float* x, int64_t position, bool inverse) const {
  const float t = static_cast<float>(position);
  float* p = x;
  for (size_t j = 0; j < freqs_.size(); ++j, p += 2) {
    float angle = t * freqs_[j];
    if (inverse) angle = -angle;
    const float c = std::cos(angle), s = std::sin(angle);
    const float x0 = p[0], x1 = p[1];
    p[0] = RoundToBf16(x0 * c - x1 * s);
    p[1] = RoundToBf16(x0 * s + x1 * c);
  }
}

void ScaleHead(float* q, int64_t n, double eps) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += RoundToBf16(q[i] * q[i]);
  float s = RoundToBf16(sum / static_cast<float>(n));
  s = RoundToBf16(s + static_cast<float>(eps));
  const float g = RoundToBf16(1.0f / std::sqrt(s));
  for (int64_t i = 0; i < n; ++i) q[i] = RoundToBf16(q[i] * g);
}

void HadamardBf16(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i) x[i] = RoundToBf16(x[i] * scale);
}

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define STRATA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_CLONES
#endif

STRATA_CLONES float Dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[i & 15] += a[i] * b[i];
  float sum = 0;
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

STRATA_CLONES void IndexerScores(const float* q, const float* w, int64_t heads, const float* keys, int64_t count,
                                int64_t dim, float* out) {
  for (int64_t j = 0; j < count; ++j) {
    const float* key = keys + j * dim;
    float score = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + h * dim;
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= dim; i += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += qh[i + l] * key[i + l];
      }
      for (; i < dim; ++i) acc[i & 15] += qh[i] * key[i];
      float dot = 0;
      for (int l = 0; l < 16; ++l) dot += acc[l];
      score += w[h] * std::max(dot, 0.0f);
    }
    out[j] = score;
  }
}

STRATA_CLONES void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float Silu(float x) { return x * Sigmoid(x); }
float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

float HcRho(const float* streams, int64_t n, double eps) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += streams[i] * streams[i];
  return 1.0f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
}

void ComputeHcMix(const float* mu, const float* base, const float* scale, int64_t hc, int64_t iters, double eps_d,
                  HcMix* mix) {
  const float eps = static_cast<float>(eps_d);
  mix->pre.resize(static_cast<size_t>(hc));
  mix->post.resize(static_cast<size_t>(hc));
  mix->comb.resize(static_cast<size_t>(hc * hc));
  for (int64_t i = 0; i < hc; ++i) {
    mix->pre[static_cast<size_t>(i)] = Sigmoid(mu[i] * scale[0] + base[i]) + eps;
    mix->post[static_cast<size_t>(i)] = 2.0f * Sigmoid(mu[hc + i] * scale[1] + base[hc + i]);
  }
  float* c = mix->comb.data();
  for (int64_t i = 0; i < hc; ++i) {  // softmax over each row, + eps
    float m = -INFINITY;
    for (int64_t j = 0; j < hc; ++j) {
      c[i * hc + j] = mu[2 * hc + i * hc + j] * scale[2] + base[2 * hc + i * hc + j];
      m = std::max(m, c[i * hc + j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < hc; ++j) sum += (c[i * hc + j] = std::exp(c[i * hc + j] - m));
    for (int64_t j = 0; j < hc; ++j) c[i * hc + j] = c[i * hc + j] / sum + eps;
  }
  auto normalize_cols = [&] {
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += c[i * hc + j];
      for (int64_t i = 0; i < hc; ++i) c[i * hc + j] /= sum + eps;
    }
  };
  auto normalize_rows = [&] {
    for (int64_t i = 0; i < hc; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += c[i * hc + j];
      for (int64_t j = 0; j < hc; ++j) c[i * hc + j] /= sum + eps;
    }
  };
  normalize_cols();
  for (int64_t it = 1; it < iters; ++it) {
    normalize_rows();
    normalize_cols();
  }
}

}  // namespace strata::engine
