// Fuzzes the KV record checks and decoders (engine/kv/kv_cache.h, engine/kv/kv_codec.h): what a decode
// worker runs on the blocks and state slot a prefill worker wrote into its memory, before and
// after trusting them. The records have the tiny preset's layout.
//
// Input: byte 0 picks the record kind (bit 0: block or state slot) and the mode (bit 1):
//   raw:    the rest is a whole record of that many bytes for VerifyKvRecord;
//   sealed: bytes 1-8 are the token count, 9-10 a position in the record and 11 a byte to write
//           there after sealing; the rest, repeated, is the payload.
// Besides ASan and UBSan it checks that a sealed record verifies, that a change to any byte the
// header vouches for (magic, version, kind, layout, size, checksum, payload) is refused, and that
// every main entry of a verified record decodes to the same floats through the reference codec
// and the CPU backend's vectorised decoder, bit for bit (any NaN matching any NaN).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cpu/vector_ops.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_codec.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"

namespace {

using strata::engine::KvLayout;
using strata::engine::KvRecordKind;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "kv_record_fuzzer: %s\n", what.c_str());
  std::abort();
}

struct Fixture {
  strata::engine::ModelConfig config;
  KvLayout layout;
};

const Fixture& Get() {
  static const Fixture* fixture = [] {
    absl::StatusOr<strata::engine::ModelConfig> config = strata::engine::PresetConfig("tiny");
    if (!config.ok()) Fail(std::string(config.status().message()));
    return new Fixture{*config, KvLayout(*config)};
  }();
  return *fixture;
}

bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof(float)) == 0;
}

// Decodes every main and indexer entry a verified record holds, as attention reads them.
void DecodeAll(const Fixture& f, const uint8_t* record, KvRecordKind kind) {
  const int64_t nope = f.config.nope_dim(), rope = f.config.qk_rope_head_dim;
  const strata::engine::MainEntryCodec main{nope, rope, f.layout.main_entry_bytes()};
  const strata::engine::IndexerEntryCodec indexer{f.config.index_head_dim,
                                                  f.layout.indexer_entry_bytes()};
  std::vector<float> reference(static_cast<size_t>(nope + rope)), vectorised(reference.size());
  std::vector<float> index(static_cast<size_t>(f.config.index_head_dim));
  auto check_main = [&](const uint8_t* entry) {
    main.Decode(entry, reference.data());
    strata::engine::cpu::DecodeMainEntry(entry, nope, rope, vectorised.data());
    for (size_t i = 0; i < reference.size(); ++i) {
      if (!SameFloat(reference[i], vectorised[i])) {
        Fail("main entry value " + std::to_string(i) + ": codec " + std::to_string(reference[i]) +
             ", vectorised " + std::to_string(vectorised[i]));
      }
    }
  };
  for (const strata::engine::LayerKvLayout& l : f.layout.layers()) {
    if (kind == KvRecordKind::kBlock) {
      for (int64_t e = 0; e < l.main_entries; ++e) {
        check_main(record + l.main_offset + e * f.layout.main_entry_bytes());
      }
      for (int64_t e = 0; e < l.indexer_entries; ++e) {
        indexer.Decode(record + l.indexer_offset + e * f.layout.indexer_entry_bytes(),
                       index.data());
      }
    } else {
      for (int64_t e = 0; e < f.config.sliding_window; ++e) {
        check_main(record + l.window_offset + e * f.layout.main_entry_bytes());
      }
    }
  }
}

// Header bytes VerifyKvRecord does not vouch for: the token count (checked by the caller against
// the request) and the reserved tail.
bool Unchecked(size_t position) {
  return (position >= offsetof(strata::engine::KvRecordHeader, tokens) &&
          position < offsetof(strata::engine::KvRecordHeader, checksum)) ||
         (position >= offsetof(strata::engine::KvRecordHeader, reserved) &&
          position < sizeof(strata::engine::KvRecordHeader));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixture& f = Get();
  const KvRecordKind kind = data[0] & 1 ? KvRecordKind::kState : KvRecordKind::kBlock;
  const int64_t total =
      kind == KvRecordKind::kBlock ? f.layout.block_bytes() : f.layout.state_bytes();
  if ((data[0] & 2) == 0) {
    // Exactly the input's bytes, so ASan sees any read past the record.
    std::vector<uint8_t> record(data + 1, data + size);
    const absl::Status status = strata::engine::VerifyKvRecord(
        record.data(), static_cast<int64_t>(record.size()), kind, f.layout.fingerprint());
    if (status.ok()) {
      if (static_cast<int64_t>(record.size()) != total) Fail("a record of the wrong size verified");
      DecodeAll(f, record.data(), kind);
    }
    return 0;
  }

  if (size < 12) return 0;
  uint64_t tokens;
  std::memcpy(&tokens, data + 1, sizeof(tokens));
  const size_t position = (static_cast<size_t>(data[9]) | static_cast<size_t>(data[10]) << 8) %
                          static_cast<size_t>(total);
  const uint8_t value = data[11];
  std::vector<uint8_t> record(static_cast<size_t>(total));
  const uint8_t* seed = data + 12;
  const size_t seed_size = size - 12;
  for (size_t i = strata::engine::kKvHeaderBytes; i < record.size() && seed_size > 0;
       i += seed_size) {
    std::memcpy(record.data() + i, seed, std::min(seed_size, record.size() - i));
  }
  strata::engine::SealKvRecord(record.data(), total, kind, f.layout.fingerprint(), tokens);
  absl::Status status =
      strata::engine::VerifyKvRecord(record.data(), total, kind, f.layout.fingerprint());
  if (!status.ok()) Fail("a freshly sealed record does not verify: " + status.ToString());

  const bool changed = record[position] != value;
  record[position] = value;
  status = strata::engine::VerifyKvRecord(record.data(), total, kind, f.layout.fingerprint());
  if (changed && !Unchecked(position) && status.ok()) {
    Fail("a record with byte " + std::to_string(position) + " changed still verifies");
  }
  if (status.ok()) DecodeAll(f, record.data(), kind);
  return 0;
}
