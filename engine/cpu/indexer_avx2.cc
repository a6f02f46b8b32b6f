// AVX2 indexer kernels (indexer_kernels.h). Compiled with -mavx2 -mfma and run only where the CPU
// has them (CpuBackend checks); see linear_kernels.h for why everything here has internal linkage.
//
// Without VNNI the byte products go through vpmaddubsw, whose 16-bit pair sums saturate: the key
// bytes are made signed again (kc = byte ^ 0x80), their sign moves onto the row's codes (vpsignb)
// and |kc| ≤ 96 times |qc| ≤ 127 keeps each pair within ±24384; vpmaddwd then widens to 32 bits.
// Decoding is the portable one.
#include "engine/cpu/indexer_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <cstring>

namespace strata::engine::cpu {
namespace {

constexpr int kHeadsPerPass = 4;  // 2 accumulators per head, 16 registers in all

template <int P>
inline void Tile(const uint8_t* group, const float* kscale, int64_t dim, const int8_t* const* q,
                 const float* wq, __m256 score[2]) {
  __m256i acc[P][2];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_si256();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t c = 0; c < dim / 4; ++c) {
    __m256i ks[2], ka[2];
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + c * 64 + 32 * half));
      ks[half] = _mm256_xor_si256(u, flip);
      ka[half] = _mm256_abs_epi8(ks[half]);
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      int32_t word;
      std::memcpy(&word, q[p] + 4 * c, 4);
      const __m256i b = _mm256_set1_epi32(word);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        const __m256i pairs = _mm256_maddubs_epi16(ka[half], _mm256_sign_epi8(b, ks[half]));
        acc[p][half] = _mm256_add_epi32(acc[p][half], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  const __m256i zero = _mm256_setzero_si256();
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    const __m256 s = _mm256_loadu_ps(kscale + 8 * half);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_max_epi32(acc[p][half], zero)), s);
      score[half] = _mm256_fmadd_ps(_mm256_set1_ps(wq[p]), x, score[half]);
    }
  }
}

void Heads(const uint8_t* keys, const float* kscale, int64_t groups, int64_t dim,
           const IndexerHeads& h, bool first, float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = keys + g * kIndexerGroupKeys * dim;
    const float* ks = kscale + g * kIndexerGroupKeys;
    float* o = out + g * kIndexerGroupKeys;
    __m256 score[2];
    score[0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(o);
    score[1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(o + 8);
    // Heads in order, a few per pass over the group (the running sums stay in order).
    for (int p0 = 0; p0 < h.heads; p0 += kHeadsPerPass) {
      const int n = h.heads - p0 < kHeadsPerPass ? h.heads - p0 : kHeadsPerPass;
      switch (n) {
        case 1: Tile<1>(group, ks, dim, h.q + p0, h.wq + p0, score); break;
        case 2: Tile<2>(group, ks, dim, h.q + p0, h.wq + p0, score); break;
        case 3: Tile<3>(group, ks, dim, h.q + p0, h.wq + p0, score); break;
        default: Tile<4>(group, ks, dim, h.q + p0, h.wq + p0, score); break;
      }
    }
    _mm256_storeu_ps(o, score[0]);
    _mm256_storeu_ps(o + 8, score[1]);
  }
}

void PassMasks(const float* scores, int64_t groups, float threshold, uint16_t* masks) {
  const __m256 t = _mm256_set1_ps(threshold);
  for (int64_t g = 0; g < groups; ++g) {
    const int lo = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scores + 16 * g), t, _CMP_NLT_UQ));
    const int hi =
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scores + 16 * g + 8), t, _CMP_NLT_UQ));
    masks[g] = static_cast<uint16_t>(lo | (hi << 8));
  }
}

void GroupMax(const float* scores, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    __m256 m = _mm256_max_ps(_mm256_loadu_ps(scores + 16 * g), _mm256_loadu_ps(scores + 16 * g + 8));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    out[g] = _mm_cvtss_f32(h);
  }
}

void Decode(const uint8_t* const* entries, int64_t count, int64_t dim, uint8_t* keys,
            float* kscale, uint16_t* slow) {
  GenericIndexerKernels().decode(entries, count, dim, keys, kscale, slow);
}

constexpr IndexerKernelTable kAvx2Table{
    .name = "avx2",
    .decode = Decode,
    .heads = Heads,
    .pass_masks = PassMasks,
    .group_max = GroupMax,
};

}  // namespace

const IndexerKernelTable* Avx2IndexerKernels() { return &kAvx2Table; }

}  // namespace strata::engine::cpu

#else  // not built for AVX2 (e.g. a non-x86 target)

namespace strata::engine::cpu {
const IndexerKernelTable* Avx2IndexerKernels() { return nullptr; }
}  // namespace strata::engine::cpu

#endif
