#include "engine/model_writer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file.h"
#include "common/progress.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "engine/checkpoint.h"
#include "engine/numerics.h"
#include "xxhash.h"

namespace strata::engine {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per independently seeded chunk

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A stream of pseudo-random values for one chunk of one tensor.
class ChunkRng {
 public:
  ChunkRng(uint64_t seed, uint64_t name_hash, uint64_t chunk)
      : state_(seed ^ (name_hash * 0x9E3779B97F4A7C15ull) ^ (chunk * 0xD1B54A32D192ED03ull)) {
    SplitMix64(state_);
  }
  uint64_t Next() { return SplitMix64(state_); }
  // Approximately N(0, 1): the sum of four 16-bit uniforms, centred and scaled (Irwin–Hall).
  // Bounded at ±3.46: no outliers to blow up FP8/FP4 block scales.
  float Normal() {
    uint64_t r = Next();
    float s = static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48));
    return (s / 65536.0f - 2.0f) * 1.7320508f;
  }
  float Uniform() { return static_cast<float>(Next() >> 40) / static_cast<float>(1 << 24); }

 private:
  uint64_t state_;
};

// Fills `out` (n floats) with std × N(0,1) + mean, chunk by chunk.
void FillNormal(float* out, int64_t n, uint64_t seed, uint64_t name_hash, float mean, float std, int64_t first = 0) {
  for (int64_t c = first / kChunk; c * kChunk < first + n; ++c) {
    ChunkRng rng(seed, name_hash, static_cast<uint64_t>(c));
    for (int64_t i = c * kChunk; i < (c + 1) * kChunk && i < first + n; ++i) {
      float v = mean + std * rng.Normal();
      if (i >= first) out[i - first] = v;
    }
  }
}

float FanInStd(int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); }

// Generates the bytes of one tensor. FP8/FP4 weights also produce their scale tensor's bytes,
// which the caller stores under the paired ".scale" spec.
class TensorGenerator {
 public:
  TensorGenerator(const ModelConfig& c, uint64_t seed) : c_(c), seed_(seed) {}

  // `scale_out` receives the paired scale bytes for kLinearFp8 / kExpertFp4.
  void Generate(const TensorSpec& spec, std::vector<uint8_t>* out, std::vector<uint8_t>* scale_out) const {
    const uint64_t h = XXH3_64bits(spec.name.data(), spec.name.size());
    const int64_t n = NumElements(spec.shape);
    out->assign(static_cast<size_t>(n) * DTypeSize(spec.dtype), 0);
    switch (spec.role) {
      case TensorRole::kEmbedding:
      case TensorRole::kLinearBf16: {
        // Embeddings N(0,1); projections (including the head) keep variance: std 1/sqrt(in).
        const bool embed = spec.name == "embed.weight";
        Bf16Normal(spec, h, 0.0f, embed ? 1.0f : FanInStd(spec.shape[1]), out);
        break;
      }
      case TensorRole::kNormWeight:
        Bf16Constant(n, 1.0f, out);
        break;
      case TensorRole::kLinearFp8:
        Fp8Weight(spec, h, out, scale_out);
        break;
      case TensorRole::kExpertFp4:
        Fp4Weight(spec, h, out, scale_out);
        break;
      case TensorRole::kHcFn:  // μ ≈ N(0,1) for an RMS-normalised input
        F32Normal(n, h, 0.0f, FanInStd(spec.shape[1]), out);
        break;
      case TensorRole::kHcBase:
        HcBase(spec, out);
        break;
      case TensorRole::kHcScale:
        F32Constant(n, 0.5f, out);
        break;
      case TensorRole::kAttnSink:
      case TensorRole::kApe:
      case TensorRole::kGateBias:
        F32Normal(n, h, 0.0f, 0.1f, out);
        break;
      case TensorRole::kHashTable:
        HashTable(spec, h, out);
        break;
      case TensorRole::kFp8Scale:
      case TensorRole::kFp4Scale:
        break;  // produced with their weights
    }
  }

 private:
  void Bf16Normal(const TensorSpec& spec, uint64_t h, float mean, float std, std::vector<uint8_t>* out) const {
    const int64_t n = NumElements(spec.shape);
    std::vector<float> tmp(static_cast<size_t>(std::min<int64_t>(n, kChunk)));
    uint16_t* dst = reinterpret_cast<uint16_t*>(out->data());
    for (int64_t first = 0; first < n; first += kChunk) {
      int64_t len = std::min(kChunk, n - first);
      FillNormal(tmp.data(), len, seed_, h, mean, std, first);
      for (int64_t i = 0; i < len; ++i) dst[first + i] = FloatToBf16(tmp[static_cast<size_t>(i)]);
    }
  }
  static void Bf16Constant(int64_t n, float v, std::vector<uint8_t>* out) {
    uint16_t bits = FloatToBf16(v);
    uint16_t* dst = reinterpret_cast<uint16_t*>(out->data());
    std::fill(dst, dst + n, bits);
  }
  void F32Normal(int64_t n, uint64_t h, float mean, float std, std::vector<uint8_t>* out) const {
    FillNormal(reinterpret_cast<float*>(out->data()), n, seed_, h, mean, std);
  }
  static void F32Constant(int64_t n, float v, std::vector<uint8_t>* out) {
    float* dst = reinterpret_cast<float*>(out->data());
    std::fill(dst, dst + n, v);
  }

  // mHC bias: pre and post logits 0 (σ = 0.5, post = 1); the residual mix favours identity.
  void HcBase(const TensorSpec& spec, std::vector<uint8_t>* out) const {
    float* dst = reinterpret_cast<float*>(out->data());
    const int64_t hc = c_.hc_mult, n = spec.shape[0];
    std::fill(dst, dst + n, 0.0f);
    if (n == (2 + hc) * hc) {
      for (int64_t i = 0; i < hc; ++i) dst[2 * hc + i * hc + i] = 2.0f;
    }
  }

  // FP8 E4M3 with one UE8M0 scale per 128×128 block: w ~ N(0, 1/in), scale = 2^ceil(log2(amax/448)).
  void Fp8Weight(const TensorSpec& spec, uint64_t h, std::vector<uint8_t>* out, std::vector<uint8_t>* scale) const {
    const int64_t rows = spec.shape[0], cols = spec.shape[1];
    const int64_t srows = (rows + 127) / 128, scols = (cols + 127) / 128;
    scale->assign(static_cast<size_t>(srows * scols), 0);
    std::vector<float> w(static_cast<size_t>(rows * cols));
    FillNormal(w.data(), rows * cols, seed_, h, 0.0f, FanInStd(cols));
    for (int64_t br = 0; br < srows; ++br) {
      for (int64_t bc = 0; bc < scols; ++bc) {
        float amax = 0;
        for (int64_t r = br * 128; r < std::min(rows, br * 128 + 128); ++r)
          for (int64_t col = bc * 128; col < std::min(cols, bc * 128 + 128); ++col)
            amax = std::max(amax, std::fabs(w[static_cast<size_t>(r * cols + col)]));
        int e = PowerOfTwoScaleExponent(amax, kE4M3Max, 1e-4f);
        (*scale)[static_cast<size_t>(br * scols + bc)] = Ue8m0FromExponent(e);
        float inv = std::ldexp(1.0f, -e);
        for (int64_t r = br * 128; r < std::min(rows, br * 128 + 128); ++r)
          for (int64_t col = bc * 128; col < std::min(cols, bc * 128 + 128); ++col)
            (*out)[static_cast<size_t>(r * cols + col)] = FloatToE4M3(w[static_cast<size_t>(r * cols + col)] * inv);
      }
    }
  }

  // Packed FP4 E2M1 [out, in/2] with one UE8M0 scale per 32 inputs: w ~ N(0, 1/in).
  void Fp4Weight(const TensorSpec& spec, uint64_t h, std::vector<uint8_t>* out, std::vector<uint8_t>* scale) const {
    const int64_t rows = spec.shape[0], in = spec.shape[1] * 2;
    scale->assign(static_cast<size_t>(rows * (in / 32)), 0);
    std::vector<float> w(static_cast<size_t>(rows * in));
    FillNormal(w.data(), rows * in, seed_, h, 0.0f, FanInStd(in));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t b = 0; b < in / 32; ++b) {
        const float* blk = &w[static_cast<size_t>(r * in + b * 32)];
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(blk[i]));
        int e = PowerOfTwoScaleExponent(amax, kE2M1Max, 6 * std::ldexp(1.0f, -126));
        (*scale)[static_cast<size_t>(r * (in / 32) + b)] = Ue8m0FromExponent(e);
        float inv = std::ldexp(1.0f, -e);
        uint8_t* dst = out->data() + r * (in / 2) + b * 16;
        for (int i = 0; i < 16; ++i) {
          dst[i] = static_cast<uint8_t>(FloatToE2M1(blk[2 * i] * inv) | (FloatToE2M1(blk[2 * i + 1] * inv) << 4));
        }
      }
    }
  }

  // Each token's k experts: distinct ids in [0, E).
  void HashTable(const TensorSpec& spec, uint64_t h, std::vector<uint8_t>* out) const {
    const int64_t rows = spec.shape[0], k = spec.shape[1], E = c_.n_routed_experts;
    int64_t* dst = reinterpret_cast<int64_t*>(out->data());
    for (int64_t r = 0; r < rows; ++r) {
      ChunkRng rng(seed_, h, static_cast<uint64_t>(r));
      for (int64_t j = 0; j < k; ++j) {
        int64_t id;
        do {
          id = static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(E));
        } while (std::find(dst + r * k, dst + r * k + j, id) != dst + r * k + j);
        dst[r * k + j] = id;
      }
    }
  }

  const ModelConfig& c_;
  const uint64_t seed_;
};

absl::Status CopyFile(const std::string& from, const std::string& to) {
  STRATA_ASSIGN_OR_RETURN(std::string contents, ReadFile(from));
  return WriteFileAtomically(to, contents);
}

}  // namespace

absl::Status WriteRandomModel(const ModelConfig& config, const ModelWriterOptions& options) {
  STRATA_RETURN_IF_ERROR(config.Validate());
  if (options.out_dir.empty()) return absl::InvalidArgumentError("no output folder given");
  std::string tok_json = options.tokenizer_dir + "/tokenizer.json";
  std::string tok_config = options.tokenizer_dir + "/tokenizer_config.json";
  if (::access(tok_json.c_str(), R_OK) != 0 || ::access(tok_config.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("tokenizer files not found in '", options.tokenizer_dir,
                                            "' (run `make tokenizer`, or pass --tokenizer-dir)"));
  }
  std::error_code ec;
  std::filesystem::create_directories(options.out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", options.out_dir, ": ", ec.message()));

  std::vector<TensorSpec> specs = ExpectedTensors(config);
  // Scales are generated with their weights: index the pairs.
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < specs.size(); ++i) by_name[specs[i].name] = i;

  uint64_t total = 0;
  for (const TensorSpec& s : specs) total += static_cast<uint64_t>(NumElements(s.shape)) * DTypeSize(s.dtype);
  uint64_t shard_bytes = options.shard_bytes;
  if (shard_bytes == 0) shard_bytes = std::clamp<uint64_t>(total / 4, 64ull << 20, 4ull << 30);

  // Plan shards in layout order (a weight and its scale stay together).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].role == TensorRole::kFp8Scale || specs[i].role == TensorRole::kFp4Scale) continue;
    uint64_t bytes = static_cast<uint64_t>(NumElements(specs[i].shape)) * DTypeSize(specs[i].dtype);
    const bool paired = specs[i].role == TensorRole::kLinearFp8 || specs[i].role == TensorRole::kExpertFp4;
    size_t scale_index = paired ? by_name.at(specs[i].name.substr(0, specs[i].name.size() - 7) + ".scale") : 0;
    if (paired) bytes += static_cast<uint64_t>(NumElements(specs[scale_index].shape));
    if (in_shard > 0 && in_shard + bytes > shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    if (paired) shards.back().push_back(scale_index);
    in_shard += bytes;
  }

  TensorGenerator generator(config, options.seed);
  ThreadPool pool(static_cast<size_t>(std::max(options.threads, 0)));
  Progress progress(absl::StrCat("writing ", options.out_dir), total, options.progress && ::isatty(2) == 1);
  std::map<std::string, std::string> weight_map;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file_name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    const std::vector<size_t>& members = shards[s];
    std::vector<std::vector<uint8_t>> data(members.size());
    std::map<size_t, size_t> slot;  // spec index -> data slot
    for (size_t m = 0; m < members.size(); ++m) slot[members[m]] = m;
    pool.ParallelFor(members.size(), [&](size_t m) {
      const TensorSpec& spec = specs[members[m]];
      if (spec.role == TensorRole::kFp8Scale || spec.role == TensorRole::kFp4Scale) return;
      std::vector<uint8_t> scale;
      generator.Generate(spec, &data[m], &scale);
      if (!scale.empty()) data[slot.at(by_name.at(spec.name.substr(0, spec.name.size() - 7) + ".scale"))] = std::move(scale);
      progress.Advance(data[m].size());
    });
    SafetensorsWriter writer;
    writer.SetMetadata("format", "pt");
    for (size_t m = 0; m < members.size(); ++m) {
      const TensorSpec& spec = specs[members[m]];
      STRATA_RETURN_IF_ERROR(writer.Add(spec.name, spec.dtype, spec.shape, data[m]));
      weight_map[spec.name] = file_name;
    }
    STRATA_RETURN_IF_ERROR(writer.Write(options.out_dir + "/" + file_name));
  }
  STRATA_RETURN_IF_ERROR(WriteSafetensorsIndex(options.out_dir, total, weight_map));
  STRATA_RETURN_IF_ERROR(CopyFile(tok_json, options.out_dir + "/tokenizer.json"));
  STRATA_RETURN_IF_ERROR(CopyFile(tok_config, options.out_dir + "/tokenizer_config.json"));
  // config.json last: its presence marks a complete checkpoint.
  return WriteFileAtomically(options.out_dir + "/config.json", config.ToJson());
}

}  // namespace strata::engine
