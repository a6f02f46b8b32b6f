#include "kvstore/ssd_tier.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kvstore/slot.h"
#include "spdlog/spdlog.h"

namespace strata::kvstore {

using engine::BlockKey;
using engine::KvRecordKind;

struct SsdTier::File {
  KvRecordKind kind;
  std::string path;
  int fd = -1;
  int64_t slot_bytes = 0, record_bytes = 0, slots = 0;
  std::vector<int32_t> free;
  absl::flat_hash_map<BlockKey, int32_t> index;
  std::list<int32_t> lru;  // indexed slots, most recently used first
  std::vector<std::list<int32_t>::iterator> where;
  std::vector<int32_t> pins;  // reads in flight
  std::vector<uint8_t> busy;  // being written
  std::vector<BlockKey> key_of;  // of indexed slots

  ~File() {
    if (fd >= 0) ::close(fd);
  }
  uint64_t offset(int32_t slot) const { return static_cast<uint64_t>(slot) * static_cast<uint64_t>(slot_bytes); }
  void Unindex(int32_t slot, const BlockKey& key) {
    index.erase(key);
    lru.erase(where[static_cast<size_t>(slot)]);
  }
  void Index(int32_t slot, const BlockKey& key) {
    index[key] = slot;
    key_of[static_cast<size_t>(slot)] = key;
    lru.push_front(slot);
    where[static_cast<size_t>(slot)] = lru.begin();
  }
  void Touch(int32_t slot) { lru.splice(lru.begin(), lru, where[static_cast<size_t>(slot)]); }
};

// Whole-slot reads and writes, a batch at a time: io_uring when the kernel allows it (one
// submission for the batch, the device sees them all at once), else pread/pwrite one by one.
class SsdTier::Io {
 public:
  struct Op {
    int fd;
    uint8_t* buffer;
    int64_t bytes;
    uint64_t offset;
    bool write;
  };
  Io() { uring_ = io_uring_queue_init(kDepth, &ring_, 0) == 0; }
  ~Io() {
    if (uring_) io_uring_queue_exit(&ring_);
  }
  bool uring() const { return uring_; }

  // Runs every op; each result is the bytes moved or -errno. Ops on adjacent file ranges (a
  // prefix's blocks, written one after the other) go as one vectored read or write: the device
  // sees large transfers, as dd's.
  std::vector<int64_t> Run(absl::Span<const Op> ops) {
    std::vector<int64_t> results(ops.size(), 0);
    if (!uring_) {
      for (size_t i = 0; i < ops.size(); ++i) results[i] = Sync(ops[i]);
      return results;
    }
    std::vector<size_t> order(ops.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      return std::tie(ops[x].fd, ops[x].write, ops[x].offset) < std::tie(ops[y].fd, ops[y].write, ops[y].offset);
    });
    struct Group {
      size_t first, count;  // into `order`
      int64_t bytes;
    };
    std::vector<Group> groups;
    for (size_t k = 0; k < order.size(); ++k) {
      const Op& op = ops[order[k]];
      if (!groups.empty()) {
        Group& g = groups.back();
        const Op& last = ops[order[g.first + g.count - 1]];
        if (last.fd == op.fd && last.write == op.write && last.offset + static_cast<uint64_t>(last.bytes) == op.offset &&
            g.count < kMaxIovecs && g.bytes + op.bytes <= kMaxGroupBytes) {
          ++g.count;
          g.bytes += op.bytes;
          continue;
        }
      }
      groups.push_back({k, 1, op.bytes});
    }
    std::vector<std::vector<iovec>> iovecs(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t k = 0; k < groups[g].count; ++k) {
        const Op& op = ops[order[groups[g].first + k]];
        iovecs[g].push_back({op.buffer, static_cast<size_t>(op.bytes)});
      }
    }
    std::vector<int64_t> moved(groups.size(), 0);
    {
      absl::MutexLock lock(&mu_);  // one ring: batches take turns
      size_t submitted = 0, completed = 0;
      bool broken = false;
      while (completed < groups.size() && !broken) {
        while (submitted < groups.size() && submitted - completed < kDepth) {
          io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
          if (sqe == nullptr) break;
          const Op& op = ops[order[groups[submitted].first]];
          if (op.write) {
            io_uring_prep_writev(sqe, op.fd, iovecs[submitted].data(), static_cast<unsigned>(iovecs[submitted].size()), op.offset);
          } else {
            io_uring_prep_readv(sqe, op.fd, iovecs[submitted].data(), static_cast<unsigned>(iovecs[submitted].size()), op.offset);
          }
          io_uring_sqe_set_data64(sqe, submitted);
          ++submitted;
        }
        io_uring_submit(&ring_);
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(&ring_, &cqe) < 0) {
          broken = true;  // the ring broke: what is unfinished is done synchronously below
          break;
        }
        unsigned head;
        unsigned seen = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
          moved[io_uring_cqe_get_data64(cqe)] = cqe->res;
          ++seen;
        }
        io_uring_cq_advance(&ring_, seen);
        completed += seen;
      }
    }
    // A group that moved less than all its bytes (rare: signals, the end of the file, an error) is
    // done again op by op, synchronously, so each op gets its own result.
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t k = 0; k < groups[g].count; ++k) {
        const size_t i = order[groups[g].first + k];
        results[i] = moved[g] == groups[g].bytes ? ops[i].bytes : Sync(ops[i]);
      }
    }
    return results;
  }

 private:
  static constexpr unsigned kDepth = 64;
  static constexpr size_t kMaxIovecs = 256;
  static constexpr int64_t kMaxGroupBytes = 8 << 20;
  static int64_t Sync(const Op& op) {
    int64_t done = 0;
    while (done < op.bytes) {
      const ssize_t n = op.write ? ::pwrite(op.fd, op.buffer + done, static_cast<size_t>(op.bytes - done),
                                            static_cast<off_t>(op.offset + static_cast<uint64_t>(done)))
                                 : ::pread(op.fd, op.buffer + done, static_cast<size_t>(op.bytes - done),
                                           static_cast<off_t>(op.offset + static_cast<uint64_t>(done)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return -errno;
      if (n == 0) break;
      done += n;
    }
    return done;
  }
  bool uring_ = false;
  absl::Mutex mu_;
  io_uring ring_{};
};

SsdTier::SsdTier(const SsdTierOptions& options) : options_(options), io_(std::make_unique<Io>()) {}

SsdTier::~SsdTier() = default;

SsdTier::File& SsdTier::file(KvRecordKind kind) const {
  return kind == KvRecordKind::kBlock ? *blocks_ : *checkpoints_;
}

int64_t SsdTier::slot_bytes(KvRecordKind kind) const { return file(kind).slot_bytes; }

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(const SsdTierOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("kvstore SSD tier: creating ", options.dir, ": ", ec.message()));
  std::unique_ptr<SsdTier> tier(new SsdTier(options));
  for (auto [kind, name, slots, record] :
       {std::tuple{KvRecordKind::kBlock, "blocks.slots", options.block_slots, options.block_record_bytes},
        std::tuple{KvRecordKind::kState, "checkpoints.slots", options.checkpoint_slots, options.checkpoint_record_bytes}}) {
    auto f = std::make_unique<File>();
    f->kind = kind;
    f->path = absl::StrCat(options.dir, "/", name);
    f->record_bytes = record;
    f->slot_bytes = SlotBytes(record);
    f->slots = slots;
    int flags = O_RDWR | O_CREAT | O_CLOEXEC;
    if (options.direct_io) flags |= O_DIRECT;
    f->fd = ::open(f->path.c_str(), flags, 0644);
    if (f->fd < 0 && options.direct_io && errno == EINVAL) {
      spdlog::warn("kvstore: {} does not take O_DIRECT; using buffered I/O", options.dir);
      f->fd = ::open(f->path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    }
    if (f->fd < 0) return absl::FailedPreconditionError(absl::StrCat("kvstore SSD tier: opening ", f->path, ": ", strerror(errno)));
    struct stat st {};
    ::fstat(f->fd, &st);
    const int64_t want = f->slots * f->slot_bytes;
    // A smaller file grows (sparse); a larger one (ssd_mib shrank) keeps its bytes but only the
    // first `slots` slots are used.
    if (st.st_size < want && ::ftruncate(f->fd, want) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("kvstore SSD tier: sizing ", f->path, ": ", strerror(errno)));
    }
    f->where.resize(static_cast<size_t>(f->slots));
    f->key_of.resize(static_cast<size_t>(f->slots));
    f->pins.assign(static_cast<size_t>(f->slots), 0);
    f->busy.assign(static_cast<size_t>(f->slots), 0);
    (kind == KvRecordKind::kBlock ? tier->blocks_ : tier->checkpoints_) = std::move(f);
    STRATA_RETURN_IF_ERROR(tier->Recover(tier->file(kind)));
  }
  absl::MutexLock lock(&tier->mu_);
  tier->stats_.io_uring = tier->io_->uring();
  return tier;
}

// Reads every slot's tail (buffered: 64 bytes each) and indexes the valid ones, newest first.
absl::Status SsdTier::Recover(File& f) {
  const int scan = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (scan < 0) return absl::FailedPreconditionError(absl::StrCat("kvstore SSD tier: reading ", f.path, ": ", strerror(errno)));
  std::vector<std::pair<uint64_t, int32_t>> found;  // (sequence, slot)
  absl::flat_hash_map<BlockKey, std::pair<uint64_t, int32_t>> newest;
  for (int32_t slot = 0; slot < f.slots; ++slot) {
    SlotTail t;
    const off_t at = static_cast<off_t>(f.offset(slot) + static_cast<uint64_t>(f.slot_bytes) - sizeof(SlotTail));
    if (::pread(scan, &t, sizeof(t), at) != static_cast<ssize_t>(sizeof(t)) ||
        !TailValid(t, f.kind, f.record_bytes, options_.fingerprint)) {
      continue;
    }
    const BlockKey key{t.key_lo, t.key_hi};
    auto [it, inserted] = newest.try_emplace(key, t.sequence, slot);
    if (!inserted && it->second.first < t.sequence) it->second = {t.sequence, slot};
  }
  ::close(scan);
  for (const auto& [key, seq_slot] : newest) found.push_back(seq_slot);
  std::sort(found.begin(), found.end());  // oldest first: each goes to the front of the LRU
  std::vector<uint8_t> used(static_cast<size_t>(f.slots), 0);
  absl::flat_hash_map<int32_t, BlockKey> key_of;
  for (const auto& [key, seq_slot] : newest) key_of[seq_slot.second] = key;
  absl::MutexLock lock(&mu_);
  for (const auto& [sequence, slot] : found) {
    f.Index(slot, key_of[slot]);
    used[static_cast<size_t>(slot)] = 1;
    sequence_ = std::max(sequence_, sequence + 1);
  }
  for (int32_t slot = static_cast<int32_t>(f.slots) - 1; slot >= 0; --slot) {
    if (!used[static_cast<size_t>(slot)]) f.free.push_back(slot);
  }
  stats_.recovered += static_cast<int64_t>(found.size());
  (f.kind == KvRecordKind::kBlock ? stats_.blocks : stats_.checkpoints) = static_cast<int64_t>(found.size());
  return absl::OkStatus();
}

std::vector<absl::Status> SsdTier::Write(absl::Span<const Item> items,
                                         std::vector<std::pair<BlockKey, KvRecordKind>>* evicted) {
  std::vector<absl::Status> out(items.size());
  std::vector<Io::Op> ops;
  std::vector<std::pair<size_t, int32_t>> slots;  // (item, slot) of each op
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < items.size(); ++i) {
      File& f = file(items[i].kind);
      // Keys name contents: a record already stored under its key is already these bytes.
      if (auto it = f.index.find(items[i].key); it != f.index.end()) {
        f.Touch(it->second);
        continue;
      }
      int32_t slot = -1;
      if (!f.free.empty()) {
        slot = f.free.back();
        f.free.pop_back();
      } else {
        for (auto it = f.lru.rbegin(); it != f.lru.rend(); ++it) {
          if (f.pins[static_cast<size_t>(*it)] == 0) {
            slot = *it;
            break;
          }
        }
        if (slot < 0) {
          out[i] = absl::ResourceExhaustedError("kvstore SSD tier: every slot is being read");
          continue;
        }
        f.Unindex(slot, f.key_of[static_cast<size_t>(slot)]);  // evicted: overwritten below
        if (evicted != nullptr) evicted->emplace_back(f.key_of[static_cast<size_t>(slot)], f.kind);
        ++stats_.evictions;
        --(f.kind == KvRecordKind::kBlock ? stats_.blocks : stats_.checkpoints);
      }
      f.busy[static_cast<size_t>(slot)] = 1;
      // The tail's sequence: this write's place in the LRU order a restart rebuilds.
      SlotTail* tail = TailOf(items[i].slot, f.slot_bytes);
      tail->sequence = sequence_++;
      tail->checksum = TailChecksum(*tail);
      ops.push_back({f.fd, items[i].slot, f.slot_bytes, f.offset(slot), true});
      slots.emplace_back(i, slot);
    }
  }
  const std::vector<int64_t> results = io_->Run(ops);
  absl::MutexLock lock(&mu_);
  for (size_t k = 0; k < ops.size(); ++k) {
    const auto [i, slot] = slots[k];
    File& f = file(items[i].kind);
    f.busy[static_cast<size_t>(slot)] = 0;
    if (results[k] != ops[k].bytes) {
      out[i] = absl::DataLossError(absl::StrCat("kvstore SSD tier: writing ", f.path, ": ",
                                                results[k] < 0 ? strerror(static_cast<int>(-results[k])) : "short write"));
      f.free.push_back(slot);
      continue;
    }
    f.Index(slot, items[i].key);
    ++(f.kind == KvRecordKind::kBlock ? stats_.blocks : stats_.checkpoints);
    ++stats_.writes;
    stats_.write_bytes += f.slot_bytes;
  }
  return out;
}

std::vector<absl::Status> SsdTier::Read(absl::Span<const Item> items) {
  std::vector<absl::Status> out(items.size());
  std::vector<Io::Op> ops;
  std::vector<std::pair<size_t, int32_t>> slots;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < items.size(); ++i) {
      File& f = file(items[i].kind);
      auto it = f.index.find(items[i].key);
      if (it == f.index.end()) {
        out[i] = absl::NotFoundError("not on the SSD tier");
        continue;
      }
      ++f.pins[static_cast<size_t>(it->second)];
      f.Touch(it->second);
      ops.push_back({f.fd, items[i].slot, f.slot_bytes, f.offset(it->second), false});
      slots.emplace_back(i, it->second);
    }
  }
  const std::vector<int64_t> results = io_->Run(ops);
  std::vector<std::pair<File*, int32_t>> erase;
  {
  absl::MutexLock lock(&mu_);
  for (size_t k = 0; k < ops.size(); ++k) {
    const auto [i, slot] = slots[k];
    File& f = file(items[i].kind);
    --f.pins[static_cast<size_t>(slot)];
    absl::Status s;
    if (results[k] != ops[k].bytes) {
      s = absl::DataLossError(absl::StrCat("kvstore SSD tier: reading ", f.path, ": ",
                                           results[k] < 0 ? strerror(static_cast<int>(-results[k])) : "short read"));
    } else {
      const SlotTail& t = *TailOf(items[i].slot, f.slot_bytes);
      if (!TailValid(t, f.kind, f.record_bytes, options_.fingerprint) || t.key_lo != items[i].key.lo ||
          t.key_hi != items[i].key.hi) {
        s = absl::DataLossError("kvstore SSD tier: a slot's tail does not name its record (torn write?)");
      } else {
        s = engine::VerifyKvRecord(items[i].slot, f.record_bytes, f.kind, options_.fingerprint);
      }
    }
    if (!s.ok()) {
      // Never served again: unindexed now, its tail erased on disk (so a restart does not bring
      // it back), then freed; and counted.
      auto it = f.index.find(items[i].key);
      if (it != f.index.end() && it->second == slot) {
        f.Unindex(slot, items[i].key);
        f.busy[static_cast<size_t>(slot)] = 1;
        erase.emplace_back(&f, slot);
        --(f.kind == KvRecordKind::kBlock ? stats_.blocks : stats_.checkpoints);
      }
      if (++stats_.corrupt <= 10 || stats_.corrupt % 1000 == 0) {
        spdlog::warn("kvstore: a record in {} (slot {}) failed verification: {}; dropped, it will be recomputed ({} so far)",
                     f.path, slot, s.ToString(), stats_.corrupt);
      }
      out[i] = s;
      continue;
    }
    ++stats_.reads;
    stats_.read_bytes += f.slot_bytes;
  }
  }
  for (auto [f, slot] : erase) Erase(*f, slot);
  return out;
}

void SsdTier::Erase(File& f, int32_t slot) {
  // The slot's last page holds its tail: zeroed, the slot names nothing (it was unindexed and
  // marked busy by the caller, so nothing else touches it meanwhile).
  alignas(kSlotAlign) static const uint8_t kZeros[kSlotAlign] = {};
  const Io::Op op{f.fd, const_cast<uint8_t*>(kZeros), kSlotAlign,
                  f.offset(slot) + static_cast<uint64_t>(f.slot_bytes - kSlotAlign), true};
  const std::vector<int64_t> done = io_->Run(absl::MakeConstSpan(&op, 1));
  if (done[0] != kSlotAlign) spdlog::warn("kvstore: erasing a slot of {} failed; a restart may find it again", f.path);
  absl::MutexLock lock(&mu_);
  f.busy[static_cast<size_t>(slot)] = 0;
  f.free.push_back(slot);
}

bool SsdTier::Contains(const BlockKey& key, KvRecordKind kind) const {
  absl::MutexLock lock(&mu_);
  return file(kind).index.contains(key);
}

std::vector<BlockKey> SsdTier::Keys(KvRecordKind kind) const {
  absl::MutexLock lock(&mu_);
  std::vector<BlockKey> out;
  for (const auto& [key, slot] : file(kind).index) out.push_back(key);
  return out;
}

void SsdTier::Remove(const BlockKey& key, KvRecordKind kind) {
  File& f = file(kind);
  int32_t slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = f.index.find(key);
    if (it == f.index.end() || f.pins[static_cast<size_t>(it->second)] > 0) return;
    slot = it->second;
    f.Unindex(slot, key);
    f.busy[static_cast<size_t>(slot)] = 1;
    --(kind == KvRecordKind::kBlock ? stats_.blocks : stats_.checkpoints);
  }
  Erase(f, slot);
}

SsdStats SsdTier::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace strata::kvstore
