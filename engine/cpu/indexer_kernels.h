// Private to engine/cpu: the inner loops of CpuBackend::IndexerTopK (the lightning indexer), one
// table per instruction set. engine/cpu/indexer_topk.h prepares the rows, keeps the top-k and
// holds the exact-arithmetic argument; CpuBackend::IndexerTopK (cpu_attention.cc) splits the work.
//
// Indexer queries and keys are simulated FP4: every value is a small integer times a power of two.
// So a head's dot product q·k is computed exactly as an integer Σ qc_i·kc_i (int8 codes, 32-bit
// sums: vpdpbusd on AVX512-VNNI) times 2^(eq+ek), and then goes through the same FP32 operations
// as the definition: w·ReLU(dot), summed over the heads in order.
//
// Key layout ("key groups"): keys are decoded 16 at a time, group g of a slice holding keys
// 16g … 16g+15 as [dim/4][16][4] bytes: the 4 codes of dims 4c … 4c+3 of key l at
// (c·16 + l)·4, each code stored as kc + 128 (kc ∈ [−96, 96], so the byte is unsigned), and each
// key's scale 2^ek as one float (kscale[16g + l]).
//
// As for linear_kernels.h, the per-ISA files (indexer_avx2.cc, indexer_avx512.cc) are compiled
// with their own -m flags and used only on CPUs that have them, so they include only this header,
// <immintrin.h> and <cstdint>/<cstring>, and keep all their code in an anonymous namespace.
#pragma once

#include <cstdint>

namespace strata::engine::cpu {

inline constexpr int64_t kIndexerGroupKeys = 16;
// Heads per call of IndexerKernelTable::heads (their accumulators stay in registers).
inline constexpr int kIndexerMaxHeads = 8;
// Key exponents (ek) and query exponents (eq) are kept within ±kIndexerMaxExponent and the head
// weights within [2^-kIndexerMaxExponent, 2^20] (or 0): then every product, dot and score of
// the fast path is a normal FP32 number, and scaling by 2^eq commutes with rounding.
inline constexpr int kIndexerMaxExponent = 40;

// One query row's heads as the kernels take them: for head p < heads, codes q[p][0:dim] (int8,
// q = code·2^eq exactly), qsum[p] = Σ codes, wq[p] = w_h · 2^eq.
struct IndexerHeads {
  const int8_t* const* q;
  const int32_t* qsum;
  const float* wq;
  int heads;  // 1 … kIndexerMaxHeads
};

struct IndexerKernelTable {
  const char* name;

  // Decodes `count` indexer entries (FP4 E2M1 codes, then dim/32 UE8M0 scales, as
  // IndexerEntryCodec) into key groups starting at `keys` (group g at keys + g·16·dim) and
  // kscale, and sets bit l of slow[g] for each key the integer form cannot hold exactly (a block
  // scale of 0xFF, exponents out of range, or block scales more than 8× apart where it matters);
  // those get code 0 and are scored by the caller. The lanes of the last group past `count`
  // become zero keys (not marked). dim % 32 == 0.
  void (*decode)(const uint8_t* const* entries, int64_t count, int64_t dim, uint8_t* keys,
                 float* kscale, uint16_t* slow);

  // For the keys of `groups` key groups: out[j] (+)= Σ_p wq[p] · (max(S_pj, 0) · kscale[j]) in p
  // order, each term rounded once to FP32 and added to the running sum in FP32, where S_pj is the
  // exact integer dot of head p's codes with key j's; out starts from 0 if `first`. (Because
  // kscale and 2^eq are powers of two, each term is fp32(w · ReLU(q·k)) bit for bit.)
  void (*heads)(const uint8_t* keys, const float* kscale, int64_t groups, int64_t dim,
                const IndexerHeads& h, bool first, float* out);

  // Bit l of masks[g] = !(scores[16g + l] < threshold), for g < groups.
  void (*pass_masks)(const float* scores, int64_t groups, float threshold, uint16_t* masks);
  // out[g] = the largest of scores[16g : 16g + 16], for g < groups (scores are not NaN).
  void (*group_max)(const float* scores, int64_t groups, float* out);
};

const IndexerKernelTable& GenericIndexerKernels();
// Null when this build has no such kernels (a non-x86 target); the caller checks the CPU.
const IndexerKernelTable* Avx2IndexerKernels();
const IndexerKernelTable* Avx512VnniIndexerKernels();

}  // namespace strata::engine::cpu
