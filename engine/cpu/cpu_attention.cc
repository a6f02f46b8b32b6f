// CpuBackend: the attention side of a layer — RoPE, query preparation, KV entry encoding, the
// compressors, the lightning indexer's top-k, sparse attention with the sink and the window ring
// (see engine/backend.h for each op's contract).
//
// Work is split so both long prompts and single decode tokens keep every thread busy: per-row
// ops over rows (× heads), the indexer over slices of keys, attention over (row, head group).
// Every result is computed from its own row's inputs and the sequence's past in position order,
// so it does not depend on the batch or on the split.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/indexer_kernels.h"
#include "engine/cpu/indexer_topk.h"
#include "engine/cpu/vector_ops.h"
#include "engine/kv/kv_codec.h"
#include "engine/kv/kv_layout.h"
#include "engine/numerics.h"

namespace strata::engine {
namespace {

MainEntryCodec MainCodec(const KvEntryFormat& f) {
  return MainEntryCodec{f.nope, f.rope, f.main_bytes};
}
IndexerEntryCodec IndexCodec(const KvEntryFormat& f) {
  return IndexerEntryCodec{f.index_dim, f.index_bytes};
}

// cos/sin of the angles fp32(t·f_j) (negated for the inverse) of one position.
struct RopeAngles {
  float cos[256];
  float sin[256];
  int64_t pairs = 0;
  RopeAngles(const RopeTable& rope, int64_t position, bool inverse) : pairs(rope.dim / 2) {
    const float t = static_cast<float>(position);
    for (int64_t j = 0; j < pairs; ++j) {
      float angle = t * rope.freqs[j];
      if (inverse) angle = -angle;
      cos[j] = std::cos(angle);
      sin[j] = std::sin(angle);
    }
  }
  // Rotates the pairs of x[0 : 2·pairs]; results BF16.
  void Apply(float* x) const {
    for (int64_t j = 0; j < pairs; ++j) {
      const float x0 = x[2 * j], x1 = x[2 * j + 1];
      x[2 * j] = RoundToBf16(x0 * cos[j] - x1 * sin[j]);
      x[2 * j + 1] = RoundToBf16(x0 * sin[j] + x1 * cos[j]);
    }
  }
};

// The normalised Walsh–Hadamard rotation (butterfly in FP32, then bf16(x · 1/sqrt(n))).
void Hadamard(float* x, int64_t n) {
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

// A main entry's values (MainEntryCodec::Decode, vectorised).
inline void DecodeMain(const uint8_t* in, float* v, const MainEntryCodec& codec) {
  cpu::DecodeMainEntry(in, codec.nope, codec.rope, v);
}

const uint8_t* BlockEntry(const KvPoolView& pool, const StepSequence& s, int64_t entry,
                          int64_t per_block, int64_t offset, int64_t bytes) {
  return pool.base + static_cast<int64_t>(s.blocks[entry / per_block]) * pool.block_bytes + offset +
         (entry % per_block) * bytes;
}

}  // namespace

void CpuBackend::QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                            const RopeTable& rope, const int64_t* positions) {
  ForEachItem(rows, heads * dim * 8, [&](int, int64_t t) {
    const RopeAngles angles(rope, positions[t], /*inverse=*/false);
    for (int64_t h = 0; h < heads; ++h) {
      float* u = q + (t * heads + h) * dim;
      cpu::RoundBf16(u, dim);
      float sum = 0;
      for (int64_t i = 0; i < dim; ++i) sum += RoundToBf16(u[i] * u[i]);
      float s = RoundToBf16(sum / static_cast<float>(dim));
      s = RoundToBf16(s + eps);
      const float g = RoundToBf16(1.0f / std::sqrt(s));
      for (int64_t i = 0; i < dim; ++i) u[i] *= g;
      cpu::RoundBf16(u, dim);
      angles.Apply(u + dim - rope.dim);
    }
  });
}

void CpuBackend::Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
                      const int64_t* positions) {
  ForEachItem(rows, rope.dim * 16, [&](int, int64_t t) {
    RopeAngles(rope, positions[t], false).Apply(x + t * stride + stride - rope.dim);
  });
}

void CpuBackend::IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim,
                                const RopeTable& rope, const int64_t* positions) {
  ForEachItem(rows, heads * dim * 16, [&](int, int64_t t) {
    const RopeAngles angles(rope, positions[t], false);
    for (int64_t h = 0; h < heads; ++h) {
      float* u = q + (t * heads + h) * dim;
      cpu::RoundBf16(u, dim);
      angles.Apply(u + dim - rope.dim);
      Hadamard(u, dim);
      cpu::SimulateFp4(u, dim);
    }
  });
}

void CpuBackend::EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f, uint8_t* out) {
  const MainEntryCodec codec = MainCodec(f);
  ForEachItem(rows, (f.nope + f.rope) * 16, [&](int, int64_t t) {
    codec.Encode(v + t * (f.nope + f.rope), out + t * f.main_bytes);
  });
}

void CpuBackend::AddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
                        const int64_t* positions) {
  ForEachItem(rows, width, [&](int, int64_t t) {
    const float* a = ape + (positions[t] % ratio) * width;
    float* zt = z + t * width;
    for (int64_t i = 0; i < width; ++i) zt[i] += a[i];
  });
}

void CpuBackend::Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                          const float* a, const float* z, const KvPoolView& pool) {
  const int64_t m = p.ratio, width = p.width;
  const int64_t out_dim = m == 4 ? width / 2 : width;
  const int64_t per_block = kBlockTokens / m;
  // The entries this step completes: (sequence, group) pairs.
  struct Job {
    const StepSequence* s;
    int64_t group;
  };
  std::vector<Job> jobs;
  for (const StepSequence& s : step.host_seqs) {
    for (int64_t g = s.start / m; (g + 1) * m <= s.start + s.n; ++g) jobs.push_back(Job{&s, g});
  }
  const MainEntryCodec main_codec = MainCodec(f);
  const IndexerEntryCodec index_codec = IndexCodec(f);
  ForEachItem(static_cast<int64_t>(jobs.size()), out_dim * 2 * m * 8, [&](int, int64_t item) {
    const StepSequence& s = *jobs[static_cast<size_t>(item)].s;
    const int64_t g = jobs[static_cast<size_t>(item)].group;
    // Candidate rows (a, z) and the channel offset each uses, previous group first.
    const float* ra[256];
    const float* rz[256];
    int64_t count = 0;
    auto add = [&](int64_t pos, int64_t channel) {
      const float *ar, *zr;
      if (pos >= s.start) {
        ar = a + (s.row + pos - s.start) * width;
        zr = z + (s.row + pos - s.start) * width;
      } else {
        ar = reinterpret_cast<const float*>(s.state + p.carry_offset) +
             (pos % p.carry_rows) * 2 * width;
        zr = ar + width;
      }
      ra[count] = ar + channel;
      rz[count] = zr + channel;
      ++count;
    };
    if (m == 4 && g > 0) {
      for (int64_t pos = (g - 1) * m; pos < g * m; ++pos) add(pos, 0);
    }
    for (int64_t pos = g * m; pos < (g + 1) * m; ++pos) add(pos, m == 4 ? out_dim : 0);

    thread_local std::vector<float> mx, sum, acc, e;
    mx.assign(static_cast<size_t>(out_dim), -INFINITY);
    sum.assign(static_cast<size_t>(out_dim), 0.0f);
    acc.assign(static_cast<size_t>(out_dim), 0.0f);
    e.resize(static_cast<size_t>(count * out_dim));
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t ch = 0; ch < out_dim; ++ch)
        mx[static_cast<size_t>(ch)] = std::max(mx[static_cast<size_t>(ch)], rz[i][ch]);
    }
    for (int64_t i = 0; i < count; ++i) {
      float* ei = e.data() + i * out_dim;
      for (int64_t ch = 0; ch < out_dim; ++ch) {
        ei[ch] = std::exp(rz[i][ch] - mx[static_cast<size_t>(ch)]);
        sum[static_cast<size_t>(ch)] += ei[ch];
      }
    }
    for (int64_t i = 0; i < count; ++i) {
      const float* ei = e.data() + i * out_dim;
      for (int64_t ch = 0; ch < out_dim; ++ch)
        acc[static_cast<size_t>(ch)] += ei[ch] / sum[static_cast<size_t>(ch)] * ra[i][ch];
    }
    float* pooled = acc.data();
    cpu::RoundBf16(pooled, out_dim);
    const float inv =
        1.0f /
        std::sqrt(cpu::SumSquares(pooled, out_dim) / static_cast<float>(out_dim) + p.norm_eps);
    cpu::ScaleRoundBf16(pooled, inv, p.norm, out_dim, pooled);
    RopeAngles(p.rope, g * m, false).Apply(pooled + out_dim - p.rope.dim);
    uint8_t* block = pool.base + static_cast<int64_t>(s.blocks[g / per_block]) * pool.block_bytes;
    if (p.indexer) {
      Hadamard(pooled, out_dim);
      index_codec.Encode(pooled, block + p.entry_offset + (g % per_block) * index_codec.bytes);
    } else {
      main_codec.Encode(pooled, block + p.entry_offset + (g % per_block) * main_codec.bytes);
    }
  });
  // Then the carry ring: the last carry_rows new rows of each sequence.
  for (const StepSequence& s : step.host_seqs) {
    float* ring = reinterpret_cast<float*>(s.state + p.carry_offset);
    for (int64_t pos = std::max(s.start, s.start + s.n - p.carry_rows); pos < s.start + s.n;
         ++pos) {
      float* dst = ring + (pos % p.carry_rows) * 2 * width;
      std::memcpy(dst, a + (s.row + pos - s.start) * width, static_cast<size_t>(width) * 4);
      std::memcpy(dst + width, z + (s.row + pos - s.start) * width, static_cast<size_t>(width) * 4);
    }
  }
}

namespace {

// The indexer kernels for `isa`: VNNI where the CPU has it (CpuIsa's AVX-512 levels do not
// imply it), else AVX2, else portable.
const cpu::IndexerKernelTable& IndexerKernelsFor(CpuIsa isa) {
#if defined(__x86_64__)
  if ((isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16) &&
      cpu::Avx512VnniIndexerKernels() != nullptr && __builtin_cpu_supports("avx512vnni")) {
    return *cpu::Avx512VnniIndexerKernels();
  }
  if (isa != CpuIsa::kGeneric && cpu::Avx2IndexerKernels() != nullptr &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return *cpu::Avx2IndexerKernels();
  }
#else
  (void)isa;
#endif
  return cpu::GenericIndexerKernels();
}

// A sequence's indexer keys in the kernels' form (reused across calls by the calling thread).
struct IndexerKeyBuffers {
  std::vector<uint8_t> keys;
  std::vector<float> kscale, slow_values;
  std::vector<uint16_t> slow;
  std::vector<int32_t> slow_index;
};

}  // namespace

// Keys are decoded once per call into key groups, in slices of kSlice, in parallel. Rows are then
// scanned in blocks of kRowBlock, each block streaming the keys one slice at a time (a slice stays
// in L2 while the block's rows bound their scores with it), then each row scores in full the
// groups its bounds leave (IndexerRowScan); with few rows the keys are split into parts as well,
// each (block, part) keeping its own best k, merged at the end. See engine/cpu/indexer_topk.h.
void CpuBackend::IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                             const float* q, const float* w, const KvPoolView& pool,
                             int32_t* chosen, int32_t* count) {
  const int64_t ih = p.heads, ic = p.dim, m = 4, per_block = kBlockTokens / m, topk = p.topk;
  const IndexerEntryCodec codec = IndexCodec(f);
  const cpu::IndexerKernelTable& kernels = IndexerKernelsFor(isa_);
  constexpr int64_t kSlice = 1024, kRowBlock = 32, kGroups = cpu::kIndexerGroupKeys;
  using Entry = cpu::TopKCandidates::Entry;
  for (const StepSequence& s : step.host_seqs) {
    const int64_t max_visible = (s.start + s.n) / m;
    // Rows that see at most topk entries choose them all; the others are scanned.
    int64_t first_scan = s.n;
    for (int64_t i = s.n - 1; i >= 0; --i) {
      const int64_t visible = (s.start + i + 1) / m, k = std::min(topk, visible);
      count[s.row + i] = static_cast<int32_t>(k);
      if (k < visible) {
        first_scan = i;
      } else {
        std::iota(chosen + (s.row + i) * topk, chosen + (s.row + i) * topk + k, 0);
      }
    }
    const int64_t scan_rows = s.n - first_scan;
    if (scan_rows == 0) continue;

    // Decode [0, max_visible) into key groups; the caller thread's buffers, used through
    // pointers on the workers.
    thread_local IndexerKeyBuffers buffers;
    const int64_t groups = (max_visible + kGroups - 1) / kGroups;
    const int64_t slices = (max_visible + kSlice - 1) / kSlice;
    buffers.keys.resize(static_cast<size_t>(groups * kGroups * ic));
    buffers.kscale.resize(static_cast<size_t>(groups * kGroups));
    buffers.slow.resize(static_cast<size_t>(groups));
    uint8_t* const keys = buffers.keys.data();
    float* const kscale = buffers.kscale.data();
    uint16_t* const slow = buffers.slow.data();
    ForEachItem(slices, kSlice * ic * 2, [&](int, int64_t slice) {
      const int64_t j0 = slice * kSlice, j1 = std::min(max_visible, j0 + kSlice);
      const uint8_t* entries[kSlice];
      for (int64_t j = j0; j < j1; ++j)
        entries[j - j0] = BlockEntry(pool, s, j, per_block, p.entry_offset, codec.bytes);
      kernels.decode(entries, j1 - j0, ic, keys + j0 * ic, kscale + j0, slow + j0 / kGroups);
    });
    // Keys the integer form cannot hold: decoded values, scored by the definition's loop.
    buffers.slow_index.clear();
    for (int64_t g = 0; g < groups; ++g) {
      for (uint32_t bits = slow[g]; bits != 0; bits &= bits - 1)
        buffers.slow_index.push_back(static_cast<int32_t>(g * kGroups + __builtin_ctz(bits)));
    }
    buffers.slow_values.resize(buffers.slow_index.size() * static_cast<size_t>(ic));
    for (size_t i = 0; i < buffers.slow_index.size(); ++i) {
      codec.Decode(BlockEntry(pool, s, buffers.slow_index[i], per_block, p.entry_offset, codec.bytes),
                   buffers.slow_values.data() + i * static_cast<size_t>(ic));
    }
    const cpu::IndexerKeyView view{keys,
                                   kscale,
                                   slow,
                                   buffers.slow_index.data(),
                                   buffers.slow_values.data(),
                                   static_cast<int64_t>(buffers.slow_index.size()),
                                   ic};

    // Work items: (row block, key part). Enough of them to balance the threads.
    const int64_t row_blocks = (scan_rows + kRowBlock - 1) / kRowBlock;
    const int64_t parts =
        std::clamp<int64_t>((4 * threads() + row_blocks - 1) / row_blocks, 1, slices);
    thread_local std::vector<Entry> kept_buffer;
    thread_local std::vector<int64_t> kept_count_buffer;
    kept_buffer.resize(static_cast<size_t>(scan_rows * parts * topk));
    kept_count_buffer.resize(static_cast<size_t>(scan_rows * parts));
    Entry* const kept = kept_buffer.data();
    int64_t* const kept_count = kept_count_buffer.data();
    ForEachItem(row_blocks * parts, kRowBlock * max_visible / parts * ih * ic, [&](int,
                                                                                   int64_t item) {
      const int64_t block = item / parts, part = item % parts;
      const int64_t r0 = first_scan + block * kRowBlock, r1 = std::min(s.n, r0 + kRowBlock);
      const int64_t key_begin = part * slices / parts * kSlice;
      const int64_t key_end = std::min(max_visible, (part + 1) * slices / parts * kSlice);
      thread_local std::vector<cpu::IndexerRowForm> forms;
      thread_local std::vector<cpu::IndexerRowScan> scans;
      thread_local std::vector<cpu::TopKCandidates> tops;
      thread_local std::vector<uint8_t> fast;
      thread_local cpu::IndexerScanScratch scratch;
      thread_local std::vector<float> key_values;
      forms.resize(static_cast<size_t>(kRowBlock));
      scans.resize(static_cast<size_t>(kRowBlock));
      tops.resize(static_cast<size_t>(kRowBlock));
      fast.resize(static_cast<size_t>(kRowBlock));
      // Each row's part of the range: the keys it sees.
      auto row_end = [&](int64_t i) { return std::min(key_end, (s.start + i + 1) / m); };
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t row = s.row + i;
        fast[i - r0] = forms[i - r0].Prepare(q + row * ih * ic, w + row * ih, ih, ic);
        scans[i - r0].Begin(key_begin, std::max(key_begin, row_end(i)));
        tops[i - r0].Reset(topk);
      }
      for (int64_t j0 = key_begin; j0 < key_end; j0 += kSlice) {
        const int64_t j1 = std::min(key_end, j0 + kSlice);
        for (int64_t i = r0; i < r1; ++i) {
          const int64_t row = s.row + i, end = std::min(j1, row_end(i));
          if (end <= j0) continue;
          if (fast[i - r0]) {
            scans[i - r0].Slice(kernels, forms[i - r0], view, j0, end, scratch, tops[i - r0]);
            continue;
          }
          // A row without the integer form: the definition's loop over decoded keys.
          key_values.resize(static_cast<size_t>(ic));
          for (int64_t j = j0; j < end; ++j) {
            codec.Decode(BlockEntry(pool, s, j, per_block, p.entry_offset, codec.bytes),
                         key_values.data());
            tops[i - r0].Offer(
                cpu::ReferenceScore(q + row * ih * ic, w + row * ih, ih, key_values.data(), ic),
                static_cast<int32_t>(j));
          }
        }
      }
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t row = s.row + i;
        if (fast[i - r0] && row_end(i) > key_begin) {
          scans[i - r0].Finish(kernels, forms[i - r0], view, q + row * ih * ic, w + row * ih, ih,
                               scratch, tops[i - r0]);
        }
      }
      for (int64_t i = r0; i < r1; ++i) {
        int64_t n = 0;
        const Entry* best = tops[i - r0].Finish(&n);
        const int64_t at = (i - first_scan) * parts + part;
        std::copy_n(best, n, kept + at * topk);
        kept_count[at] = n;
      }
    });
    // Per row: the best k of its parts' best, in increasing j.
    ForEachItem(scan_rows, parts * topk * 16, [&](int, int64_t r) {
      thread_local std::vector<Entry> all;
      all.clear();
      for (int64_t part = 0; part < parts; ++part) {
        const Entry* e = kept + (r * parts + part) * topk;
        all.insert(all.end(), e, e + kept_count[r * parts + part]);
      }
      const int64_t row = s.row + first_scan + r;
      const int64_t k = count[row];
      if (static_cast<int64_t>(all.size()) > k) {
        std::nth_element(all.begin(), all.begin() + (k - 1), all.end(),
                         cpu::TopKCandidates::Better);
      }
      int32_t* out = chosen + row * topk;
      for (int64_t c = 0; c < k; ++c) out[c] = all[static_cast<size_t>(c)].index;
      std::sort(out, out + k);
    });
  }
}

void CpuBackend::AttendSequence(const StepSequence& s, const AttentionParams& p,
                                const KvEntryFormat& f, const float* q, const float* kv,
                                const int32_t* chosen, const int32_t* count, const KvPoolView& pool,
                                float* o) {
  const int64_t H = p.heads, hd = p.head_dim, w = p.window, m = p.ratio;
  const MainEntryCodec codec = MainCodec(f);
  // Shared by the sequence's rows: the window entries before the step (from the ring) and, for
  // HCA, every entry visible to its last row.
  const int64_t ring_first = std::max<int64_t>(0, s.start - w + 1);
  // Backend members reused across calls: no allocation or zeroing per layer and step. The
  // lambdas below run on worker threads too, so they use these pointers, not the vectors.
  attention_ring_.resize(static_cast<size_t>(std::max<int64_t>(s.start - ring_first, 1) * hd));
  float* const ring = attention_ring_.data();
  // Decode-sized steps (few rows, CSA) also decode each row's chosen entries here, once, rather
  // than once per head group below; both in one parallel pass of kDecodeSlice entries per item.
  constexpr int64_t kDecodeSlice = 32;
  const bool chosen_here = m == 4 && s.n <= kChosenHereRows;
  const int64_t ring_items = (s.start - ring_first + kDecodeSlice - 1) / kDecodeSlice;
  const int64_t row_items = (p.topk + kDecodeSlice - 1) / kDecodeSlice;
  if (chosen_here) attention_chosen_.resize(static_cast<size_t>(s.n * p.topk * hd));
  float* const chosen_rows = chosen_here ? attention_chosen_.data() : nullptr;
  ForEachItem(ring_items + (chosen_here ? s.n * row_items : 0), kDecodeSlice * hd * 4,
              [&](int, int64_t item) {
                if (item < ring_items) {
                  const int64_t end = std::min(s.start, ring_first + (item + 1) * kDecodeSlice);
                  for (int64_t u = ring_first + item * kDecodeSlice; u < end; ++u) {
                    DecodeMain(s.state + p.window_offset + (u % w) * codec.bytes,
                               ring + (u - ring_first) * hd, codec);
                  }
                  return;
                }
                const int64_t i = (item - ring_items) / row_items;
                const int64_t first = (item - ring_items) % row_items * kDecodeSlice;
                const int64_t row = s.row + i;
                for (int64_t c = first; c < std::min<int64_t>(count[row], first + kDecodeSlice);
                     ++c) {
                  DecodeMain(BlockEntry(pool, s, chosen[row * p.topk + c], kBlockTokens / m,
                                        p.entry_offset, codec.bytes),
                             chosen_rows + (i * p.topk + c) * hd, codec);
                }
              });
  float* hca = nullptr;
  if (m == 128) {
    const int64_t visible = (s.start + s.n) / m;
    attention_hca_.resize(static_cast<size_t>(std::max<int64_t>(visible, 1) * hd));
    hca = attention_hca_.data();
    constexpr int64_t kSlice = 64;
    ForEachItem((visible + kSlice - 1) / kSlice, kSlice * hd * 4, [&](int, int64_t slice) {
      for (int64_t j = slice * kSlice; j < std::min(visible, (slice + 1) * kSlice); ++j) {
        DecodeMain(BlockEntry(pool, s, j, kBlockTokens / m, p.entry_offset, codec.bytes),
                   hca + j * hd, codec);
      }
    });
  }
  // Few rows (decode): split the heads too, so every thread has work.
  const int64_t groups = std::clamp<int64_t>(threads() / s.n, 1, H);
  const int64_t heads_per_group = (H + groups - 1) / groups;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  ForEachItem(s.n * groups, (w + p.topk + 64) * hd * heads_per_group * 2, [&](int, int64_t item) {
    const int64_t i = item / groups, group = item % groups;
    const int64_t row = s.row + i, pos = s.start + i;
    thread_local std::vector<const float*> cand;
    thread_local std::vector<float> decoded, logits;
    cand.clear();
    for (int64_t u = std::max<int64_t>(0, pos - w + 1); u <= pos; ++u) {
      cand.push_back(u >= s.start ? kv + (s.row + u - s.start) * hd
                                  : ring + (u - ring_first) * hd);
    }
    if (chosen_here) {
      for (int64_t c = 0; c < count[row]; ++c) cand.push_back(chosen_rows + (i * p.topk + c) * hd);
    } else if (m == 4) {
      const int64_t n = count[row];
      decoded.resize(static_cast<size_t>(n * hd));
      for (int64_t c = 0; c < n; ++c) {
        const int32_t j = chosen[row * p.topk + c];
        DecodeMain(BlockEntry(pool, s, j, kBlockTokens / m, p.entry_offset, codec.bytes),
                   decoded.data() + c * hd, codec);
        cand.push_back(decoded.data() + c * hd);
      }
    } else if (m == 128) {
      for (int64_t j = 0; j < (pos + 1) / m; ++j) cand.push_back(hca + j * hd);
    }
    const int64_t n = static_cast<int64_t>(cand.size());
    const int64_t h0 = group * heads_per_group, nh = std::min(H, h0 + heads_per_group) - h0;
    const RopeAngles inverse(p.rope, pos, /*inverse=*/true);
    // The group's logits in one pass over the candidates (each read once for all its heads),
    // then per head the softmax in candidate order, then the weighted sum in one more pass.
    logits.resize(static_cast<size_t>(nh * n));
    cpu::DotMany(q + (row * H + h0) * hd, hd, nh, cand.data(), n, hd, logits.data(), n);
    for (int64_t h = h0; h < h0 + nh; ++h) {
      float* lg = logits.data() + (h - h0) * n;
      const float sink = p.sink[h];
      float mx = sink;
      for (int64_t j = 0; j < n; ++j) {
        lg[j] = lg[j] * scale;
        mx = std::max(mx, lg[j]);
      }
      float denom = std::exp(sink - mx);
      for (int64_t j = 0; j < n; ++j) denom += (lg[j] = std::exp(lg[j] - mx));
      for (int64_t j = 0; j < n; ++j) lg[j] = lg[j] / denom;
      float* oh = o + (row * H + h) * hd;
      std::fill(oh, oh + hd, 0.0f);
    }
    cpu::AxpyMany(logits.data(), n, nh, cand.data(), n, hd, o + (row * H + h0) * hd, hd);
    for (int64_t h = h0; h < h0 + nh; ++h) {
      float* oh = o + (row * H + h) * hd;
      cpu::RoundBf16(oh, hd);
      inverse.Apply(oh + hd - p.rope.dim);
    }
  });
}

void CpuBackend::Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                           const float* q, const float* kv, const int32_t* chosen,
                           const int32_t* count, const KvPoolView& pool, float* o) {
  for (const StepSequence& s : step.host_seqs)
    AttendSequence(s, p, f, q, kv, chosen, count, pool, o);
}

void CpuBackend::StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                             int64_t window_offset, const uint8_t* entries) {
  for (const StepSequence& s : step.host_seqs) {
    uint8_t* ring = s.state + window_offset;
    for (int64_t i = std::max<int64_t>(0, s.n - window); i < s.n; ++i) {
      std::memcpy(ring + ((s.start + i) % window) * f.main_bytes,
                  entries + (s.row + i) * f.main_bytes, static_cast<size_t>(f.main_bytes));
    }
  }
}

}  // namespace strata::engine
