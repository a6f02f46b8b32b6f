#include "engine/kv/kv_cache.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "xxhash.h"

namespace strata::engine {

void SealKvRecord(uint8_t* record, int64_t total_bytes, KvRecordKind kind, uint64_t fingerprint,
                  uint64_t tokens) {
  KvRecordHeader h{};
  h.magic = kKvMagic;
  h.version = kKvVersion;
  h.kind = static_cast<uint16_t>(kind);
  h.fingerprint = fingerprint;
  h.payload_bytes = static_cast<uint64_t>(total_bytes - kKvHeaderBytes);
  h.tokens = tokens;
  h.checksum = XXH3_64bits(record + kKvHeaderBytes, h.payload_bytes);
  std::memcpy(record, &h, sizeof(h));
}

absl::Status VerifyKvRecord(const uint8_t* record, int64_t total_bytes, KvRecordKind kind,
                            uint64_t fingerprint) {
  const char* what = kind == KvRecordKind::kBlock ? "KV block" : "KV state slot";
  if (total_bytes < kKvHeaderBytes)
    return absl::DataLossError(absl::StrCat(what, ": shorter than its header"));
  KvRecordHeader h;
  std::memcpy(&h, record, sizeof(h));
  if (h.magic != kKvMagic)
    return absl::DataLossError(absl::StrCat(what, ": bad magic (not a Strata KV record)"));
  if (h.version != kKvVersion) {
    return absl::DataLossError(
        absl::StrCat(what, ": version ", h.version, ", this build reads ", kKvVersion));
  }
  if (h.kind != static_cast<uint16_t>(kind))
    return absl::DataLossError(absl::StrCat(what, ": wrong record kind ", h.kind));
  if (h.fingerprint != fingerprint) {
    return absl::DataLossError(absl::StrCat(what, ": written for another model layout"));
  }
  if (h.payload_bytes != static_cast<uint64_t>(total_bytes - kKvHeaderBytes)) {
    return absl::DataLossError(absl::StrCat(what, ": payload is ", h.payload_bytes, " bytes, want ",
                                            total_bytes - kKvHeaderBytes));
  }
  if (XXH3_64bits(record + kKvHeaderBytes, h.payload_bytes) != h.checksum) {
    return absl::DataLossError(absl::StrCat(what, ": checksum mismatch (corrupt)"));
  }
  return absl::OkStatus();
}

KvPool::KvPool(const KvLayout& layout, int64_t num_blocks, Backend* backend)
    : layout_(layout),
      num_blocks_(num_blocks),
      backend_(backend != nullptr && !backend->host_memory() ? backend : nullptr) {
  const int64_t bytes = num_blocks * layout.block_bytes();
  if (backend_ == nullptr) {
    host_.reset(new uint8_t[static_cast<size_t>(bytes)]);
  } else {
    absl::StatusOr<DeviceBuffer> memory = DeviceBuffer::Allocate(*backend_, bytes);
    if (!memory.ok()) {
      std::fprintf(stderr, "KV pool of %lld blocks: %s\n", static_cast<long long>(num_blocks),
                   std::string(memory.status().message()).c_str());
      std::abort();
    }
    device_ = std::move(*memory);
  }
  absl::MutexLock lock(&mu_);
  free_.resize(static_cast<size_t>(num_blocks));
  refs_.assign(static_cast<size_t>(num_blocks), 0);
  // Hand out low ids first.
  std::iota(free_.rbegin(), free_.rend(), 0);
}

absl::StatusOr<int32_t> KvPool::Allocate() {
  int32_t id;
  {
    absl::MutexLock lock(&mu_);
    if (free_.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat("KV pool full (", num_blocks_, " blocks of ",
                                                       layout_.block_bytes(), " bytes)"));
    }
    id = free_.back();
    free_.pop_back();
    refs_[static_cast<size_t>(id)] = 1;
  }
  if (backend_ != nullptr) {
    backend_->Zero(block(id), layout_.block_bytes());
  } else {
    std::memset(block(id), 0, static_cast<size_t>(layout_.block_bytes()));
  }
  return id;
}

void KvPool::Ref(int32_t id) {
  absl::MutexLock lock(&mu_);
  CheckHeld(id);
  ++refs_[static_cast<size_t>(id)];
}

void KvPool::Free(int32_t id) {
  absl::MutexLock lock(&mu_);
  CheckHeld(id);
  if (--refs_[static_cast<size_t>(id)] == 0) free_.push_back(id);
}

int32_t KvPool::refs(int32_t id) const {
  absl::MutexLock lock(&mu_);
  return id >= 0 && id < num_blocks_ ? refs_[static_cast<size_t>(id)] : 0;
}

void KvPool::CheckHeld(int32_t id) const {
  if (id < 0 || id >= num_blocks_ || refs_[static_cast<size_t>(id)] <= 0) {
    // A double free or a reference to a block nobody holds: the program's own bug, and reusing
    // the block would hand one request's KV to another.
    std::fprintf(stderr, "KvPool: block %d is not held (%s)\n", id,
                 id < 0 || id >= num_blocks_ ? "out of range" : "free");
    std::abort();
  }
}

int64_t KvPool::free_blocks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(free_.size());
}

}  // namespace strata::engine
