// The kvstore's store (kvstore/block_store.h, ssd_tier.h) without RPC: two-phase puts that never
// serve a record before it verifies, reads that resume only at a checkpoint, LRU between and out
// of the tiers, leases that expire, corrupt or truncated SSD slots that are misses (counted,
// deleted) and never served, a restart that finds the SSD tier again — and a concurrent put /
// get / evict stress in which no reader ever sees a half-written or recycled record.
#include "kvstore/block_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "kvstore/slot.h"

namespace strata::kvstore {
namespace {

using engine::BlockKey;
using engine::KvRecordKind;

class BlockStoreTest : public ::testing::Test {
 protected:
  BlockStoreTest() : layout_(*engine::PresetConfig("tiny")) {}
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "strata_kvstore_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A store with room for exactly `ram_blocks` blocks in RAM (and 15 checkpoints), and at least
  // `ssd_blocks` on the SSD tier (none: RAM only).
  BlockStoreOptions Options(int64_t ram_blocks, int64_t ssd_blocks) const {
    const int64_t b = SlotBytes(layout_.block_bytes()), c = SlotBytes(layout_.state_bytes());
    BlockStoreOptions o;
    o.ram_bytes = ram_blocks * b + 16 * c;
    o.checkpoint_share = (16.0 * static_cast<double>(c) - 0.5) / static_cast<double>(o.ram_bytes);  // 15 fit
    if (ssd_blocks > 0) {
      o.ssd_dir = dir_ + "/ssd";
      o.ssd_bytes = static_cast<int64_t>(static_cast<double>(ssd_blocks * b) / (1 - o.checkpoint_share)) + 1;
    }
    return o;
  }
  std::unique_ptr<BlockStore> Open(const BlockStoreOptions& o, Clock& clock = Clock::Real()) {
    auto s = BlockStore::Open(layout_, o, clock);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  static std::vector<BlockKey> Chain(uint64_t doc, int n) {
    std::vector<BlockKey> keys;
    for (int i = 0; i < n; ++i) keys.push_back(BlockKey{doc * 1000 + static_cast<uint64_t>(i), doc});
    return keys;
  }
  // The record a writer puts for (doc, block), sealed; a checkpoint when `state`.
  std::vector<uint8_t> Record(uint64_t doc, int block, bool state) const {
    const int64_t bytes = state ? layout_.state_bytes() : layout_.block_bytes();
    std::vector<uint8_t> r(static_cast<size_t>(bytes));
    uint32_t x = static_cast<uint32_t>(doc * 7919 + static_cast<uint64_t>(block) * 104729 + (state ? 1 : 0));
    for (int64_t i = engine::kKvHeaderBytes; i < bytes; ++i) {
      x = x * 1103515245u + 12345u;
      r[static_cast<size_t>(i)] = static_cast<uint8_t>(x >> 24);
    }
    engine::SealKvRecord(r.data(), bytes, state ? KvRecordKind::kState : KvRecordKind::kBlock, layout_.fingerprint(),
                         state ? static_cast<uint64_t>((block + 1) * engine::kBlockTokens) : engine::kBlockTokens);
    return r;
  }
  // Puts blocks [0, n) of a doc and a checkpoint at the end of each, as a writer would: reserve,
  // copy into the lent slots, commit. Returns how many records were stored.
  int64_t Put(BlockStore& store, uint64_t doc, int n, bool corrupt_one = false) {
    std::vector<BlockStore::Item> items;
    const std::vector<BlockKey> keys = Chain(doc, n);
    for (int b = 0; b < n; ++b) {
      items.push_back({keys[static_cast<size_t>(b)], KvRecordKind::kBlock, engine::kBlockTokens});
      items.push_back({keys[static_cast<size_t>(b)], KvRecordKind::kState, (b + 1) * engine::kBlockTokens});
    }
    absl::StatusOr<BlockStore::Reservation> r = store.Reserve(items);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return 0;
    for (size_t i = 0; i < items.size(); ++i) {
      if (r->offsets[i] < 0) continue;
      const bool state = items[i].kind == KvRecordKind::kState;
      std::vector<uint8_t> rec = Record(doc, static_cast<int>(i / 2), state);
      if (corrupt_one && i == 2) rec[100] ^= 1;
      std::memcpy(store.arena(items[i].kind) + r->offsets[i], rec.data(), rec.size());
    }
    absl::StatusOr<int64_t> stored = store.Commit(r->id);
    EXPECT_TRUE(stored.ok()) << stored.status();
    return stored.value_or(0);
  }
  // Pins the doc's longest resumable prefix and checks every pinned byte; its length in blocks.
  int64_t Get(BlockStore& store, uint64_t doc, int n) {
    absl::StatusOr<BlockStore::Pin> pin = store.Acquire(Chain(doc, n), n);
    EXPECT_TRUE(pin.ok()) << pin.status();
    if (!pin.ok()) return -1;
    for (size_t b = 0; b < pin->blocks.size(); ++b) {
      const std::vector<uint8_t> want = Record(doc, static_cast<int>(b), false);
      EXPECT_EQ(std::memcmp(store.arena(KvRecordKind::kBlock) + pin->blocks[b], want.data(), want.size()), 0)
          << "doc " << doc << " block " << b;
    }
    if (!pin->blocks.empty()) {
      const std::vector<uint8_t> want = Record(doc, static_cast<int>(pin->blocks.size()) - 1, true);
      EXPECT_EQ(std::memcmp(store.arena(KvRecordKind::kState) + pin->checkpoint, want.data(), want.size()), 0);
    }
    store.Release(pin->id);
    return static_cast<int64_t>(pin->blocks.size());
  }

  engine::KvLayout layout_;
  std::string dir_;
};

TEST_F(BlockStoreTest, TwoPhasePutsServeOnlyVerifiedRecords) {
  auto store = Open(Options(16, 0));
  std::vector<BlockStore::Item> items = {{Chain(1, 1)[0], KvRecordKind::kBlock, engine::kBlockTokens},
                                         {Chain(1, 1)[0], KvRecordKind::kState, engine::kBlockTokens}};
  absl::StatusOr<BlockStore::Reservation> r = store->Reserve(items);
  ASSERT_TRUE(r.ok());
  // Reserved, written, not committed: not served.
  const std::vector<uint8_t> block = Record(1, 0, false), state = Record(1, 0, true);
  std::memcpy(store->arena(KvRecordKind::kBlock) + r->offsets[0], block.data(), block.size());
  std::memcpy(store->arena(KvRecordKind::kState) + r->offsets[1], state.data(), state.size());
  EXPECT_EQ(store->Find(Chain(1, 1)).blocks, 0);
  EXPECT_EQ(Get(*store, 1, 1), 0);
  // A second writer of the same keys is told they are taken.
  absl::StatusOr<BlockStore::Reservation> again = store->Reserve(items);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->offsets, (std::vector<int64_t>{-1, -1}));
  store->Abort(again->id);
  EXPECT_EQ(*store->Commit(r->id), 2);
  EXPECT_EQ(store->Find(Chain(1, 1)).blocks, 1);
  EXPECT_EQ(Get(*store, 1, 1), 1);
  EXPECT_EQ(store->Commit(r->id).status().code(), absl::StatusCode::kNotFound);
  // A corrupt record is dropped at commit; the prefix then ends before it.
  EXPECT_EQ(Put(*store, 2, 3, /*corrupt_one=*/true), 5);  // block 1 of 3 bad
  EXPECT_EQ(store->stats().rejected, 1);
  EXPECT_EQ(store->Find(Chain(2, 3)).blocks, 1);
  EXPECT_EQ(Get(*store, 2, 3), 1);
  // A checkpoint whose position is wrong is dropped too.
  std::vector<BlockStore::Item> bad = {{Chain(3, 1)[0], KvRecordKind::kState, 2 * engine::kBlockTokens}};
  r = store->Reserve(bad);
  ASSERT_TRUE(r.ok());
  std::memcpy(store->arena(KvRecordKind::kState) + r->offsets[0], state.data(), state.size());
  EXPECT_EQ(*store->Commit(r->id), 0);
}

TEST_F(BlockStoreTest, ReadsResumeAtTheDeepestCheckpointWithinTheLimit) {
  auto store = Open(Options(32, 0));
  EXPECT_EQ(Put(*store, 1, 6), 12);
  EXPECT_EQ(store->Find(Chain(1, 8)).blocks, 6);
  EXPECT_EQ(store->Find(Chain(1, 8)).checkpoint_blocks, 6);
  EXPECT_EQ(Get(*store, 1, 8), 6);
  absl::StatusOr<BlockStore::Pin> limited = store->Acquire(Chain(1, 8), 4);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->blocks.size(), 4u);
  store->Release(limited->id);
  std::vector<BlockKey> fork = Chain(1, 6);
  fork[3] = BlockKey{42, 42};
  EXPECT_EQ(store->Find(fork).blocks, 3);
  EXPECT_EQ(Get(*store, 9, 3), 0);
  EXPECT_GE(store->stats().misses, 1);
}

TEST_F(BlockStoreTest, TheRamTierEvictsToTheSsdTierAndTheSsdTierOutOfTheStore) {
  std::vector<std::pair<std::vector<BlockKey>, bool>> changes;
  BlockStoreOptions o = Options(8, 20);
  o.on_change = [&](absl::Span<const BlockKey> keys, bool added) {
    changes.emplace_back(std::vector<BlockKey>(keys.begin(), keys.end()), added);
  };
  auto store = Open(o);
  EXPECT_EQ(Put(*store, 1, 6), 12);
  EXPECT_EQ(Put(*store, 2, 6), 12);  // RAM holds 8 blocks: doc 1's go out of RAM, stay on SSD
  StoreStats s = store->stats();
  EXPECT_GT(s.ram_evictions, 0);
  EXPECT_EQ(s.ssd.blocks, 12);
  EXPECT_EQ(Get(*store, 1, 6), 6);  // read back from the SSD tier, verified
  EXPECT_GT(store->stats().hits_ssd, 0);
  // Past the SSD tier's 20 blocks the least recently used go for good, and the index hears it.
  EXPECT_EQ(Put(*store, 3, 6), 12);
  EXPECT_EQ(Put(*store, 4, 6), 12);
  s = store->stats();
  EXPECT_LE(s.ssd.blocks, 20);
  EXPECT_GT(s.ssd.evictions, 0);
  bool removed = false;
  for (const auto& [keys, added] : changes) removed = removed || !added;
  EXPECT_TRUE(removed);
  EXPECT_EQ(Get(*store, 4, 6), 6);
  store->DropRam();
  EXPECT_EQ(store->stats().ram_blocks, 0);
  EXPECT_EQ(Get(*store, 4, 6), 6);  // from SSD alone
}

TEST_F(BlockStoreTest, ARestartFindsTheSsdTierAndCorruptOrTruncatedSlotsAreMisses) {
  BlockStoreOptions o = Options(16, 64);
  {
    auto store = Open(o);
    EXPECT_EQ(Put(*store, 1, 5), 10);
    EXPECT_EQ(Put(*store, 2, 5), 10);
  }
  {
    auto store = Open(o);  // RAM empty; the index rebuilt from the slot tails
    EXPECT_EQ(store->stats().ssd.recovered, 20);
    EXPECT_EQ(store->Find(Chain(1, 5)).blocks, 5);
    EXPECT_EQ(Get(*store, 1, 5), 5);
    EXPECT_EQ(Get(*store, 2, 5), 5);
  }
  // Flip a byte inside doc 1's blocks on disk (wherever they are), and cut the checkpoints file.
  const std::string blocks = o.ssd_dir + "/blocks.slots";
  {
    const int fd = ::open(blocks.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const int64_t slot = SlotBytes(layout_.block_bytes());
    for (int64_t s = 0; s < 10; ++s) {
      SlotTail t;
      ASSERT_EQ(::pread(fd, &t, sizeof(t), static_cast<off_t>((s + 1) * slot - 64)), 64);
      if (t.key_hi == 1 && t.key_lo == 1002) {  // doc 1, block 2
        uint8_t b;
        ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(s * slot + 5000)), 1);
        b ^= 0x40;
        ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(s * slot + 5000)), 1);
      }
    }
    ::close(fd);
  }
  auto store = Open(o);
  EXPECT_EQ(Get(*store, 1, 5), 2) << "a corrupt block must end the prefix before it";
  EXPECT_EQ(store->stats().corrupt, 1);
  EXPECT_EQ(store->Find(Chain(1, 5)).blocks, 2);  // deleted, not served again
  EXPECT_EQ(Get(*store, 2, 5), 5);
  store.reset();
  ASSERT_EQ(::truncate((o.ssd_dir + "/checkpoints.slots").c_str(), 0), 0);
  store = Open(o);
  EXPECT_EQ(Get(*store, 2, 5), 0);  // no checkpoint survives: nothing to resume from
  EXPECT_EQ(Put(*store, 2, 5), 5);  // recomputed and written again: only the checkpoints were missing
  EXPECT_EQ(Get(*store, 2, 5), 5);
}

TEST_F(BlockStoreTest, LeasesExpire) {
  SimulatedClock clock;
  BlockStoreOptions o = Options(4, 0);
  o.write_lease = absl::Seconds(10);
  o.read_lease = absl::Seconds(10);
  auto store = Open(o, clock);
  EXPECT_EQ(Put(*store, 1, 2), 4);
  // A reader that dies keeps its pin only until the lease ends.
  absl::StatusOr<BlockStore::Pin> pin = store->Acquire(Chain(1, 2), 2);
  ASSERT_TRUE(pin.ok());
  // A writer that dies: its slots come back after the lease.
  std::vector<BlockStore::Item> items = {{Chain(2, 1)[0], KvRecordKind::kBlock, engine::kBlockTokens},
                                         {Chain(3, 1)[0], KvRecordKind::kBlock, engine::kBlockTokens}};
  ASSERT_TRUE(store->Reserve(items).ok());
  // RAM holds 4 blocks: 2 pinned, 2 reserved: nothing left.
  EXPECT_EQ(store->Reserve({{Chain(4, 1)[0], KvRecordKind::kBlock, engine::kBlockTokens}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store->ExpireLeases().empty());
  clock.Advance(absl::Seconds(11));
  const std::vector<uint64_t> expired = store->ExpireLeases();
  ASSERT_EQ(expired.size(), 1u);
  for (uint64_t id : expired) store->Abort(id);
  EXPECT_EQ(store->stats().write_lease_expiries, 1);
  EXPECT_EQ(store->stats().read_lease_expiries, 1);
  EXPECT_TRUE(store->Reserve({{Chain(4, 1)[0], KvRecordKind::kBlock, engine::kBlockTokens}}).ok());
}

// Writers, readers and eviction at once: every pinned record is exactly what its writer put.
TEST_F(BlockStoreTest, StressPutGetEvictNeverServesAHalfWrittenOrRecycledRecord) {
  auto store = Open(Options(24, 48));
  std::atomic<bool> stop{false};
  std::atomic<int64_t> reads{0}, resumed{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 random(static_cast<unsigned>(w));
      while (!stop.load()) {
        const uint64_t doc = 1 + random() % 30;
        std::vector<BlockStore::Item> items;
        const int n = 1 + static_cast<int>(random() % 5);
        const std::vector<BlockKey> keys = Chain(doc, n);
        for (int b = 0; b < n; ++b) {
          items.push_back({keys[static_cast<size_t>(b)], KvRecordKind::kBlock, engine::kBlockTokens});
          items.push_back({keys[static_cast<size_t>(b)], KvRecordKind::kState, (b + 1) * engine::kBlockTokens});
        }
        absl::StatusOr<BlockStore::Reservation> r = store->Reserve(items);
        if (!r.ok()) continue;  // everything pinned for a moment
        for (size_t i = 0; i < items.size(); ++i) {
          if (r->offsets[i] < 0) continue;
          const std::vector<uint8_t> rec = Record(doc, static_cast<int>(i / 2), items[i].kind == KvRecordKind::kState);
          // Written in two halves with a pause between: a reader must never see it half done.
          std::memcpy(store->arena(items[i].kind) + r->offsets[i], rec.data(), rec.size() / 2);
          std::this_thread::yield();
          std::memcpy(store->arena(items[i].kind) + r->offsets[i] + rec.size() / 2, rec.data() + rec.size() / 2,
                      rec.size() - rec.size() / 2);
        }
        ASSERT_TRUE(store->Commit(r->id).ok());
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(100 + t));
      while (!stop.load()) {
        const uint64_t doc = 1 + random() % 30;
        const int64_t got = Get(*store, doc, 5);
        ASSERT_GE(got, 0);
        reads.fetch_add(1);
        if (got > 0) resumed.fetch_add(1);
        if (random() % 16 == 0) store->DropRam();
      }
    });
  }
  absl::SleepFor(absl::Seconds(3));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_GT(reads.load(), 100);
  EXPECT_GT(resumed.load(), 10);
  const StoreStats s = store->stats();
  EXPECT_EQ(s.corrupt, 0);
  EXPECT_EQ(s.rejected, 0);
  EXPECT_GT(s.ram_evictions + s.ssd.evictions, 0);
}

}  // namespace
}  // namespace strata::kvstore
