#include "kvstore/block_store.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "kvstore/slot.h"

namespace strata::kvstore {

using engine::BlockKey;
using engine::KvRecordKind;

struct BlockStore::Slot {
  enum class State : uint8_t { kFree, kWriting, kLoading, kReady };
  State state = State::kFree;
  BlockKey key;
  int32_t pins = 0;
};

struct BlockStore::Arena {
  KvRecordKind kind;
  int64_t record_bytes = 0, slot_bytes = 0, slots = 0;
  uint8_t* memory = nullptr;
  std::vector<Slot> slot;
  std::vector<int32_t> free;
  absl::flat_hash_map<BlockKey, int32_t> index;  // servable
  absl::flat_hash_set<BlockKey> writing;         // reserved, not committed
  std::list<int32_t> lru;                        // servable, most recently used first
  std::vector<std::list<int32_t>::iterator> where;

  ~Arena() {
    if (memory != nullptr) ::munmap(memory, static_cast<size_t>(slots * slot_bytes));
  }
  uint8_t* at(int32_t s) const { return memory + static_cast<size_t>(s) * static_cast<size_t>(slot_bytes); }
  void Serve(int32_t s) {
    slot[static_cast<size_t>(s)].state = Slot::State::kReady;
    index[slot[static_cast<size_t>(s)].key] = s;
    lru.push_front(s);
    where[static_cast<size_t>(s)] = lru.begin();
  }
  void Unserve(int32_t s) {
    index.erase(slot[static_cast<size_t>(s)].key);
    lru.erase(where[static_cast<size_t>(s)]);
  }
  void Touch(int32_t s) { lru.splice(lru.begin(), lru, where[static_cast<size_t>(s)]); }
  void Free(int32_t s) {
    slot[static_cast<size_t>(s)] = Slot{};
    free.push_back(s);
  }
};

BlockStore::BlockStore(const engine::KvLayout& layout, const BlockStoreOptions& options, Clock& clock)
    : layout_(layout), options_(options), clock_(clock) {}

BlockStore::~BlockStore() = default;

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Open(const engine::KvLayout& layout,
                                                             const BlockStoreOptions& options, Clock& clock) {
  std::unique_ptr<BlockStore> store(new BlockStore(layout, options, clock));
  const double share = std::clamp(options.checkpoint_share, 0.01, 0.99);
  for (auto [kind, record, fraction] : {std::tuple{KvRecordKind::kBlock, layout.block_bytes(), 1 - share},
                                        std::tuple{KvRecordKind::kState, layout.state_bytes(), share}}) {
    auto a = std::make_unique<Arena>();
    a->kind = kind;
    a->record_bytes = record;
    a->slot_bytes = SlotBytes(record);
    a->slots = static_cast<int64_t>(static_cast<double>(options.ram_bytes) * fraction) / a->slot_bytes;
    if (a->slots < 1) {
      return absl::InvalidArgumentError(absl::StrCat("kvstore: ram_mib gives no room for a ", a->slot_bytes,
                                                     "-byte ", kind == KvRecordKind::kBlock ? "block" : "checkpoint", " slot"));
    }
    void* m = ::mmap(nullptr, static_cast<size_t>(a->slots * a->slot_bytes), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("kvstore: cannot map ", a->slots * a->slot_bytes, " bytes of RAM tier"));
    }
    a->memory = static_cast<uint8_t*>(m);
    a->slot.resize(static_cast<size_t>(a->slots));
    a->where.resize(static_cast<size_t>(a->slots));
    for (int32_t s = static_cast<int32_t>(a->slots) - 1; s >= 0; --s) a->free.push_back(s);
    (kind == KvRecordKind::kBlock ? store->blocks_ : store->checkpoints_) = std::move(a);
  }
  if (!options.ssd_dir.empty()) {
    SsdTierOptions o;
    o.dir = options.ssd_dir;
    o.block_record_bytes = layout.block_bytes();
    o.checkpoint_record_bytes = layout.state_bytes();
    o.block_slots = static_cast<int64_t>(static_cast<double>(options.ssd_bytes) * (1 - share)) / SlotBytes(layout.block_bytes());
    o.checkpoint_slots = static_cast<int64_t>(static_cast<double>(options.ssd_bytes) * share) / SlotBytes(layout.state_bytes());
    o.fingerprint = layout.fingerprint();
    o.direct_io = options.direct_io;
    if (o.block_slots < 1 || o.checkpoint_slots < 1) {
      return absl::InvalidArgumentError("kvstore: ssd_mib gives no room for a block and a checkpoint");
    }
    absl::StatusOr<std::unique_ptr<SsdTier>> ssd = SsdTier::Open(o);
    if (!ssd.ok()) return ssd.status();
    store->ssd_ = *std::move(ssd);
  }
  return store;
}

BlockStore::Arena& BlockStore::arena_of(KvRecordKind kind) const {
  return kind == KvRecordKind::kBlock ? *blocks_ : *checkpoints_;
}
uint8_t* BlockStore::arena(KvRecordKind kind) const { return arena_of(kind).memory; }
int64_t BlockStore::arena_bytes(KvRecordKind kind) const { return arena_of(kind).slots * arena_of(kind).slot_bytes; }
int64_t BlockStore::slot_bytes(KvRecordKind kind) const { return arena_of(kind).slot_bytes; }
int64_t BlockStore::record_bytes(KvRecordKind kind) const { return arena_of(kind).record_bytes; }

bool BlockStore::StoredLocked(Arena& a, const BlockKey& key) {
  return a.index.contains(key) || (ssd_ != nullptr && ssd_->Contains(key, a.kind));
}

void BlockStore::Notify(std::vector<BlockKey> keys, bool added) {
  if (!keys.empty() && options_.on_change) options_.on_change(keys, added);
}

void BlockStore::FlushGone() {
  std::vector<BlockKey> gone;
  {
    absl::MutexLock lock(&mu_);
    gone.swap(gone_);
  }
  Notify(std::move(gone), false);
}

int32_t BlockStore::TakeSlot(Arena& a) {
  if (!a.free.empty()) {
    const int32_t s = a.free.back();
    a.free.pop_back();
    return s;
  }
  for (auto it = a.lru.rbegin(); it != a.lru.rend(); ++it) {
    Slot& victim = a.slot[static_cast<size_t>(*it)];
    if (victim.pins > 0) continue;
    const int32_t s = *it;
    const BlockKey key = victim.key;
    a.Unserve(s);
    ++stats_.ram_evictions;
    a.slot[static_cast<size_t>(s)] = Slot{};
    // With an SSD tier the record lives on there (written through at commit).
    if (a.kind == KvRecordKind::kBlock && (ssd_ == nullptr || !ssd_->Contains(key, a.kind))) gone_.push_back(key);
    return s;
  }
  return -1;
}

BlockStore::Found BlockStore::Find(absl::Span<const BlockKey> keys) {
  absl::MutexLock lock(&mu_);
  ++stats_.lookups;
  Found f;
  for (const BlockKey& k : keys) {
    if (!StoredLocked(*blocks_, k)) break;
    ++f.blocks;
    if (StoredLocked(*checkpoints_, k)) f.checkpoint_blocks = f.blocks;
  }
  return f;
}

absl::StatusOr<BlockStore::Pin> BlockStore::Acquire(absl::Span<const BlockKey> keys, int64_t max_blocks) {
  absl::StatusOr<Pin> out = AcquireOnce(keys, max_blocks);
  FlushGone();
  return out;
}

absl::StatusOr<BlockStore::Pin> BlockStore::AcquireOnce(absl::Span<const BlockKey> keys, int64_t max_blocks) {
  struct Load {
    KvRecordKind kind;
    int32_t slot;
    BlockKey key;
  };
  // A record that fails verification on the SSD tier is deleted there: the next try finds a
  // shorter prefix (or none). Each failed try deletes at least one record, so this ends.
  for (int attempt = 0; attempt < 64; ++attempt) {
    std::vector<Load> loads;
    PinRecord pin;
    int64_t n = 0;
    {
      absl::MutexLock lock(&mu_);
      int64_t run = 0, checkpoint = 0;
      for (const BlockKey& k : keys) {
        if (run >= max_blocks || !StoredLocked(*blocks_, k)) break;
        ++run;
        if (StoredLocked(*checkpoints_, k)) checkpoint = run;
      }
      n = checkpoint;
      if (n == 0) {
        ++stats_.misses;
        return Pin{};
      }
      auto take = [&](Arena& a, const BlockKey& key) -> bool {
        auto it = a.index.find(key);
        if (it != a.index.end()) {
          ++a.slot[static_cast<size_t>(it->second)].pins;
          a.Touch(it->second);
          pin.slots.emplace_back(a.kind, it->second);
          return true;
        }
        const int32_t s = TakeSlot(a);
        if (s < 0) return false;
        a.slot[static_cast<size_t>(s)] = Slot{Slot::State::kLoading, key, 1};
        pin.slots.emplace_back(a.kind, s);
        loads.push_back({a.kind, s, key});
        return true;
      };
      bool ok = true;
      for (int64_t b = 0; b < n && ok; ++b) ok = take(*blocks_, keys[static_cast<size_t>(b)]);
      if (ok) ok = take(*checkpoints_, keys[static_cast<size_t>(n - 1)]);
      if (!ok) {
        for (auto [kind, s] : pin.slots) {
          Arena& a = arena_of(kind);
          Slot& slot = a.slot[static_cast<size_t>(s)];
          if (--slot.pins == 0 && slot.state == Slot::State::kLoading) a.Free(s);
        }
        return absl::ResourceExhaustedError(
            absl::StrCat("kvstore: the RAM tier cannot hold a ", n, "-block prefix (every slot pinned or written)"));
      }
    }
    std::vector<SsdTier::Item> items;
    for (const Load& l : loads) items.push_back({l.key, l.kind, arena_of(l.kind).at(l.slot)});
    const std::vector<absl::Status> read =
        ssd_ != nullptr ? ssd_->Read(items) : std::vector<absl::Status>(items.size(), absl::NotFoundError("no SSD tier"));
    absl::MutexLock lock(&mu_);
    bool failed = false;
    for (size_t i = 0; i < loads.size(); ++i) {
      Arena& a = arena_of(loads[i].kind);
      if (read[i].ok()) {
        a.Serve(loads[i].slot);  // keeps the pin it was taken with
        ++stats_.hits_ssd;
        stats_.bytes_ssd += a.record_bytes;
        continue;
      }
      failed = true;
      if (read[i].code() == absl::StatusCode::kDataLoss) {
        ++stats_.corrupt;
        if (loads[i].kind == KvRecordKind::kBlock && !blocks_->index.contains(loads[i].key)) gone_.push_back(loads[i].key);
      }
      a.slot[static_cast<size_t>(loads[i].slot)].pins = 0;
      a.Free(loads[i].slot);
    }
    if (failed) {
      // Let go of what this try pinned (the loads that failed are freed already), and try again.
      for (auto [kind, s] : pin.slots) {
        Slot& slot = arena_of(kind).slot[static_cast<size_t>(s)];
        if (slot.state == Slot::State::kReady && slot.pins > 0) --slot.pins;
      }
      continue;
    }
    // What was not loaded came from RAM.
    int64_t loaded_blocks = 0, loaded_checkpoints = 0;
    for (const Load& l : loads) ++(l.kind == KvRecordKind::kBlock ? loaded_blocks : loaded_checkpoints);
    stats_.hits_ram += (n - loaded_blocks) + (1 - loaded_checkpoints);
    stats_.bytes_ram += (n - loaded_blocks) * blocks_->record_bytes + (1 - loaded_checkpoints) * checkpoints_->record_bytes;
    Pin out;
    out.id = next_id_++;
    for (auto [kind, s] : pin.slots) {
      const int64_t offset = static_cast<int64_t>(s) * arena_of(kind).slot_bytes;
      if (kind == KvRecordKind::kBlock) {
        out.blocks.push_back(offset);
      } else {
        out.checkpoint = offset;
      }
    }
    pin.until = clock_.Now() + options_.read_lease;
    pins_[out.id] = std::move(pin);
    return out;
  }
  return absl::DataLossError("kvstore: too many corrupt records in one prefix");
}

void BlockStore::Release(uint64_t pin) {
  absl::MutexLock lock(&mu_);
  auto it = pins_.find(pin);
  if (it == pins_.end()) return;
  for (auto [kind, s] : it->second.slots) --arena_of(kind).slot[static_cast<size_t>(s)].pins;
  pins_.erase(it);
}

absl::StatusOr<BlockStore::Reservation> BlockStore::Reserve(absl::Span<const Item> items) {
  absl::StatusOr<Reservation> out = ReserveLocked(items);
  FlushGone();
  return out;
}

absl::StatusOr<BlockStore::Reservation> BlockStore::ReserveLocked(absl::Span<const Item> items) {
  absl::MutexLock lock(&mu_);
  ReservationRecord record;
  Reservation out;
  for (const Item& item : items) {
    Arena& a = arena_of(item.kind);
    record.items.push_back(item);
    if (StoredLocked(a, item.key) || a.writing.contains(item.key)) {
      record.slots.push_back(-1);
      out.offsets.push_back(-1);
      continue;
    }
    const int32_t s = TakeSlot(a);
    if (s < 0) {
      for (size_t i = 0; i < record.slots.size(); ++i) {
        if (record.slots[i] < 0) continue;
        Arena& r = arena_of(record.items[i].kind);
        r.writing.erase(record.items[i].key);
        r.Free(record.slots[i]);
      }
      return absl::ResourceExhaustedError("kvstore: the RAM tier has no free slot (every one pinned or being written)");
    }
    a.slot[static_cast<size_t>(s)] = Slot{Slot::State::kWriting, item.key, 0};
    a.writing.insert(item.key);
    record.slots.push_back(s);
    out.offsets.push_back(static_cast<int64_t>(s) * a.slot_bytes);
  }
  out.id = next_id_++;
  record.until = clock_.Now() + options_.write_lease;
  reservations_[out.id] = std::move(record);
  return out;
}

absl::StatusOr<int64_t> BlockStore::Commit(uint64_t reservation) {
  ReservationRecord record;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(reservation);
    if (it == reservations_.end()) {
      return absl::NotFoundError(absl::StrCat("kvstore: no reservation ", reservation, " (expired or done)"));
    }
    record = std::move(it->second);
    reservations_.erase(it);
  }
  // Verified outside the lock: the slots are the writer's until now (and its access is revoked).
  std::vector<uint8_t> good(record.slots.size(), 0);
  for (size_t i = 0; i < record.slots.size(); ++i) {
    if (record.slots[i] < 0) continue;
    const Item& item = record.items[i];
    Arena& a = arena_of(item.kind);
    uint8_t* slot = a.at(record.slots[i]);
    if (!engine::VerifyKvRecord(slot, a.record_bytes, item.kind, layout_.fingerprint()).ok()) continue;
    if (reinterpret_cast<const engine::KvRecordHeader*>(slot)->tokens != static_cast<uint64_t>(item.tokens)) continue;
    std::memset(slot + a.record_bytes, 0, static_cast<size_t>(a.slot_bytes - a.record_bytes));
    WriteTail(slot, a.slot_bytes, item.key, item.kind, a.record_bytes, layout_.fingerprint(), 0);
    good[i] = 1;
  }
  int64_t stored = 0;
  std::vector<BlockKey> added;
  std::vector<SsdTier::Item> through;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < record.slots.size(); ++i) {
      if (record.slots[i] < 0) continue;
      const Item& item = record.items[i];
      Arena& a = arena_of(item.kind);
      a.writing.erase(item.key);
      if (!good[i]) {
        ++stats_.rejected;
        a.Free(record.slots[i]);
        continue;
      }
      a.Serve(record.slots[i]);
      ++a.slot[static_cast<size_t>(record.slots[i])].pins;  // until it is written through
      ++stats_.committed;
      ++stored;
      if (item.kind == KvRecordKind::kBlock) added.push_back(item.key);
      if (ssd_ != nullptr) through.push_back({item.key, item.kind, a.at(record.slots[i])});
    }
  }
  Notify(std::move(added), true);
  std::vector<std::pair<BlockKey, KvRecordKind>> evicted;
  if (!through.empty()) ssd_->Write(through, &evicted);  // a failed write leaves the record in RAM only
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < record.slots.size(); ++i) {
      if (record.slots[i] >= 0 && good[i]) --arena_of(record.items[i].kind).slot[static_cast<size_t>(record.slots[i])].pins;
    }
    for (const auto& [key, kind] : evicted) {
      if (kind == KvRecordKind::kBlock && !blocks_->index.contains(key)) gone_.push_back(key);
    }
  }
  FlushGone();
  return stored;
}

void BlockStore::Abort(uint64_t reservation) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation);
  if (it == reservations_.end()) return;
  for (size_t i = 0; i < it->second.slots.size(); ++i) {
    if (it->second.slots[i] < 0) continue;
    Arena& a = arena_of(it->second.items[i].kind);
    a.writing.erase(it->second.items[i].key);
    a.Free(it->second.slots[i]);
  }
  reservations_.erase(it);
}

std::vector<uint64_t> BlockStore::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  std::vector<uint64_t> expired_pins, expired_writes;
  for (const auto& [id, pin] : pins_) {
    if (pin.until <= now) expired_pins.push_back(id);
  }
  for (uint64_t id : expired_pins) {
    for (auto [kind, s] : pins_[id].slots) --arena_of(kind).slot[static_cast<size_t>(s)].pins;
    pins_.erase(id);
    ++stats_.read_lease_expiries;
  }
  for (auto& [id, r] : reservations_) {
    if (r.until <= now) {
      expired_writes.push_back(id);
      r.until = absl::InfiniteFuture();  // reported once
      ++stats_.write_lease_expiries;
    }
  }
  return expired_writes;
}

void BlockStore::DropRam() {
  std::vector<BlockKey> gone;
  {
    absl::MutexLock lock(&mu_);
    for (Arena* a : {blocks_.get(), checkpoints_.get()}) {
      std::vector<int32_t> victims;
      for (int32_t s : a->lru) {
        if (a->slot[static_cast<size_t>(s)].pins == 0) victims.push_back(s);
      }
      for (int32_t s : victims) {
        const BlockKey key = a->slot[static_cast<size_t>(s)].key;
        a->Unserve(s);
        a->Free(s);
        if (a->kind == KvRecordKind::kBlock && (ssd_ == nullptr || !ssd_->Contains(key, a->kind))) gone.push_back(key);
      }
    }
  }
  Notify(std::move(gone), false);
}

std::vector<BlockKey> BlockStore::StoredBlocks() const {
  std::vector<BlockKey> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, slot] : blocks_->index) out.push_back(key);
  }
  if (ssd_ != nullptr) {
    for (const BlockKey& k : ssd_->Keys(KvRecordKind::kBlock)) out.push_back(k);
  }
  std::sort(out.begin(), out.end(), [](const BlockKey& a, const BlockKey& b) {
    return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
  });
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

StoreStats BlockStore::stats() const {
  StoreStats s;
  {
    absl::MutexLock lock(&mu_);
    s = stats_;
    s.ram_blocks = static_cast<int64_t>(blocks_->index.size());
    s.ram_checkpoints = static_cast<int64_t>(checkpoints_->index.size());
  }
  if (ssd_ != nullptr) s.ssd = ssd_->stats();
  return s;
}

}  // namespace strata::kvstore
