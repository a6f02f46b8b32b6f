// Vectorised loops of the CPU backend's non-linear ops (attention, indexer, norms, mHC). Each is
// compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and baseline, and the loader picks the
// best one for the CPU at run time (GCC target_clones); elsewhere the portable code runs.
//
// Summation orders are fixed (16 interleaved partial sums, then summed in order), so a result
// depends only on its inputs — never on the batch, the thread or the instruction set chosen.
#pragma once

#include <cstdint>

namespace strata::engine::cpu {

// Σ a[i]·b[i] in FP32.
float Dot(const float* a, const float* b, int64_t n);
// Σ x[i]² in FP32.
float SumSquares(const float* x, int64_t n);
// y[i] += alpha · x[i]
void Axpy(float alpha, const float* x, float* y, int64_t n);
// out[h·out_stride + j] = Dot(q + h·q_stride, rows[j], n) for h < nq, j < count, bit for bit,
// with each row read once for all nq queries.
void DotMany(const float* q, int64_t q_stride, int64_t nq, const float* const* rows, int64_t count,
             int64_t n, float* out, int64_t out_stride);
// For h < ny: Axpy(p[h·p_stride + j], rows[j], y + h·y_stride, n) for j = 0 … count−1 in turn,
// bit for bit, with each row read once for all ny outputs.
void AxpyMany(const float* p, int64_t p_stride, int64_t ny, const float* const* rows,
              int64_t count, int64_t n, float* y, int64_t y_stride);
// x[i] = bf16(x[i]) (nearest even; NaN stays NaN).
void RoundBf16(float* x, int64_t n);
// out[i] = bf16(x[i] · r · w[i])
void ScaleRoundBf16(const float* x, float r, const float* w, int64_t n, float* out);
// Simulated FP4 in blocks of 32 (n % 32 == 0): x becomes what IndexerEntryCodec::Encode leaves
// in it, bit for bit (engine/kv/kv_codec.h), without producing the codes.
void SimulateFp4(float* x, int64_t n);
// A main KV entry ([nope × E4M3][nope/64 × UE8M0][rope × BF16], engine/kv/kv_codec.h) decoded into
// v[nope + rope]: the same values as MainEntryCodec::Decode, branch-free so it vectorises.
void DecodeMainEntry(const uint8_t* in, int64_t nope, int64_t rope, float* v);
// out[k] = bf16(Σ_i coef[i] · rows[i][k]) for i < count (≥ 1; the sum starts from the first
// product and adds the others in order), k < n.
void MixRowsBf16(const float* coef, const float* const* rows, int64_t count, int64_t n, float* out);

}  // namespace strata::engine::cpu
