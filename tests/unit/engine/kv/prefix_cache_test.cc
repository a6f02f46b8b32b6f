// The shared KV pool and the prefix cache (engine/kv/kv_cache.h, prefix_cache.h): blocks are
// reference counted and go back to the free list only when nobody holds them; the cache evicts
// least recently used chains deepest block first, never a block someone else still holds, and
// resumes only where a checkpoint is. The stress test shares, evicts and reuses blocks while
// other threads read them as transfers would, and every read block still verifies.
#include "engine/kv/prefix_cache.h"

#include <atomic>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

class PrefixCacheTest : public ::testing::Test {
 protected:
  PrefixCacheTest() : layout_(*PresetConfig("tiny")) {}

  // A block's payload for (doc, index): every byte derived from both, then sealed.
  void Fill(int32_t block, uint32_t doc, uint32_t index, KvPool& pool) const {
    uint8_t* b = pool.block(block);
    uint32_t x = doc * 2654435761u ^ index * 40503u;
    for (int64_t i = kKvHeaderBytes; i < layout_.block_bytes(); ++i) {
      x = x * 1103515245u + 12345u;
      b[i] = static_cast<uint8_t>(x >> 24);
    }
    SealKvRecord(b, layout_.block_bytes(), KvRecordKind::kBlock, layout_.fingerprint(), kBlockTokens);
  }
  bool Holds(const KvPool& pool, int32_t block, uint32_t doc, uint32_t index) const {
    if (!VerifyKvRecord(pool.block(block), layout_.block_bytes(), KvRecordKind::kBlock, layout_.fingerprint()).ok()) {
      return false;
    }
    KvPool scratch(layout_, 1);
    const int32_t id = *scratch.Allocate();
    Fill(id, doc, index, scratch);
    return std::memcmp(scratch.block(id), pool.block(block), static_cast<size_t>(layout_.block_bytes())) == 0;
  }
  // A state record at `tokens`.
  std::vector<uint8_t> State(int64_t tokens) const {
    std::vector<uint8_t> s(static_cast<size_t>(layout_.state_bytes()), 7);
    SealKvRecord(s.data(), layout_.state_bytes(), KvRecordKind::kState, layout_.fingerprint(),
                 static_cast<uint64_t>(tokens));
    return s;
  }
  static std::vector<BlockKey> Chain(uint64_t doc, int n) {
    std::vector<BlockKey> keys;
    for (int i = 0; i < n; ++i) keys.push_back(BlockKey{doc, static_cast<uint64_t>(i)});
    return keys;
  }
  // Allocates and fills a chain's blocks, inserts them (with a checkpoint at every block end) and
  // drops the writer's references: the cache then holds them alone.
  void Cache(PrefixCache& cache, KvPool& pool, uint64_t doc, int n) {
    std::vector<BlockKey> keys = Chain(doc, n);
    std::vector<int32_t> blocks;
    for (int i = 0; i < n; ++i) {
      blocks.push_back(*pool.Allocate());
      Fill(blocks.back(), static_cast<uint32_t>(doc), static_cast<uint32_t>(i), pool);
    }
    cache.Insert(keys, blocks);
    for (int i = 0; i < n; ++i) cache.InsertCheckpoint(keys[static_cast<size_t>(i)], State((i + 1) * kBlockTokens));
    for (int32_t b : blocks) pool.Free(b);
  }

  KvLayout layout_;
};

TEST_F(PrefixCacheTest, PoolBlocksAreFreedOnlyByTheirLastHolder) {
  KvPool pool(layout_, 4);
  const int32_t b = *pool.Allocate();
  EXPECT_EQ(pool.refs(b), 1);
  pool.Ref(b);
  pool.Ref(b);
  EXPECT_EQ(pool.free_blocks(), 3);
  pool.Free(b);
  pool.Free(b);
  EXPECT_EQ(pool.free_blocks(), 3);  // one holder left
  pool.Free(b);
  EXPECT_EQ(pool.free_blocks(), 4);
  EXPECT_EQ(pool.refs(b), 0);
  EXPECT_DEATH(pool.Free(b), "not held");
  EXPECT_DEATH(pool.Ref(b), "not held");
}

TEST_F(PrefixCacheTest, MatchResumesAtTheDeepestCheckpointWithinTheLimit) {
  KvPool pool(layout_, 16);
  PrefixCache cache(pool, {});
  std::vector<BlockKey> keys = Chain(1, 6);
  std::vector<int32_t> blocks;
  for (int i = 0; i < 6; ++i) blocks.push_back(*pool.Allocate());
  for (int i = 0; i < 6; ++i) Fill(blocks[static_cast<size_t>(i)], 1, static_cast<uint32_t>(i), pool);
  cache.Insert(keys, blocks);
  // No checkpoint yet: the blocks are there but nothing to resume from.
  PrefixHit none = cache.Match(keys, 6);
  EXPECT_EQ(none.matched_blocks, 6);
  EXPECT_TRUE(none.blocks.empty());
  cache.InsertCheckpoint(keys[1], State(2 * kBlockTokens));
  cache.InsertCheckpoint(keys[4], State(5 * kBlockTokens));
  cache.InsertCheckpoint(keys[5], State(5 * kBlockTokens));  // wrong position: never used

  PrefixHit hit = cache.Match(keys, 6);
  EXPECT_EQ(hit.matched_blocks, 6);
  ASSERT_EQ(hit.blocks.size(), 5u);
  EXPECT_EQ(hit.tokens(), 5 * kBlockTokens);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(hit.blocks[i], blocks[i]);
    EXPECT_EQ(pool.refs(blocks[i]), 3);  // writer, cache, this hit
  }
  EXPECT_EQ(hit.checkpoint, State(5 * kBlockTokens));
  // A caller that must compute from block 4 on resumes at block 2.
  PrefixHit shorter = cache.Match(keys, 4);
  EXPECT_EQ(shorter.blocks.size(), 2u);
  // A different continuation shares only the common start.
  std::vector<BlockKey> other = keys;
  other[3] = BlockKey{99, 3};
  PrefixHit fork = cache.Match(other, 6);
  EXPECT_EQ(fork.matched_blocks, 3);
  EXPECT_EQ(fork.blocks.size(), 2u);
  // A corrupt checkpoint is not resumed from.
  std::vector<uint8_t> bad = State(2 * kBlockTokens);
  bad[100] ^= 1;
  cache.InsertCheckpoint(keys[1], bad);
  EXPECT_EQ(cache.Match(other, 6).blocks.size(), 0u);

  for (PrefixHit* h : {&hit, &shorter, &fork}) {
    for (int32_t b : h->blocks) pool.Free(b);
  }
  for (int32_t b : blocks) pool.Free(b);
  EXPECT_EQ(pool.free_blocks(), 10);  // the cache holds the six
  EXPECT_EQ(cache.stats().hits, 3);
}

TEST_F(PrefixCacheTest, EvictsLeastRecentChainsDeepestBlockFirstAndNeverAHeldBlock) {
  KvPool pool(layout_, 16);
  PrefixCache cache(pool, {});
  Cache(cache, pool, 1, 4);
  Cache(cache, pool, 2, 4);
  EXPECT_EQ(pool.free_blocks(), 8);
  EXPECT_EQ(cache.Evictable(), 8);
  // Chain 1 is the least recent: its deepest blocks go first, and it still resumes from block 2.
  EXPECT_EQ(cache.Evict(2), 2);
  EXPECT_FALSE(cache.Contains(BlockKey{1, 3}));
  EXPECT_FALSE(cache.Contains(BlockKey{1, 2}));
  EXPECT_TRUE(cache.Contains(BlockKey{1, 1}));
  PrefixHit hit = cache.Match(Chain(1, 4), 4);
  EXPECT_EQ(hit.blocks.size(), 2u);
  // Chain 1 is now the most recent; chain 2 goes next — but a block someone holds (the hit's
  // blocks, here) is never evicted: dropping it would free nothing.
  EXPECT_EQ(cache.Evict(100), 6 - 2);
  EXPECT_TRUE(cache.Contains(BlockKey{1, 0}));
  EXPECT_TRUE(cache.Contains(BlockKey{1, 1}));
  EXPECT_FALSE(cache.Contains(BlockKey{2, 0}));
  for (int32_t b : hit.blocks) pool.Free(b);
  EXPECT_EQ(cache.Evict(100), 2);
  EXPECT_EQ(pool.free_blocks(), 16);
  EXPECT_EQ(cache.stats().evicted_blocks, 8);
}

TEST_F(PrefixCacheTest, CapacityLimitsBlocksAndCheckpointBytes) {
  KvPool pool(layout_, 32);
  PrefixCache cache(pool, {.max_blocks = 6, .max_checkpoint_bytes = 3 * layout_.state_bytes()});
  Cache(cache, pool, 1, 4);
  Cache(cache, pool, 2, 4);
  EXPECT_EQ(cache.stats().blocks, 6);
  EXPECT_EQ(pool.free_blocks(), 32 - 6);
  EXPECT_LE(cache.stats().checkpoint_bytes, 3 * layout_.state_bytes());
  // The newest chain keeps its checkpoints (its first block's, at least).
  EXPECT_EQ(cache.Match(Chain(2, 4), 4).blocks.size() > 0, true);
}

TEST_F(PrefixCacheTest, TellsWhichKeysCameAndWent) {
  KvPool pool(layout_, 16);
  std::vector<std::pair<std::vector<BlockKey>, bool>> changes;
  PrefixCache cache(pool, {.max_blocks = 5, .on_change = [&](absl::Span<const BlockKey> keys, bool added) {
                             changes.emplace_back(std::vector<BlockKey>(keys.begin(), keys.end()), added);
                           }});
  Cache(cache, pool, 1, 4);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].second);
  EXPECT_EQ(changes[0].first, Chain(1, 4));
  Cache(cache, pool, 1, 4);  // nothing new
  EXPECT_EQ(changes.size(), 1u);
  Cache(cache, pool, 2, 2);  // 6 > 5: chain 1's deepest block goes
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[1].first, Chain(2, 2));
  EXPECT_FALSE(changes[2].second);
  EXPECT_EQ(changes[2].first, (std::vector<BlockKey>{BlockKey{1, 3}}));
  EXPECT_EQ(cache.Evict(2), 2);
  ASSERT_EQ(changes.size(), 4u);
  EXPECT_EQ(changes[3].first.size(), 2u);
  EXPECT_FALSE(changes[3].second);
}

TEST(CheckpointPlanTest, CheckpointsAtPeriodsAndTheLastFullBlock) {
  CheckpointPlan plan{.every = 4};
  EXPECT_FALSE(plan.Due(0, 1000));
  EXPECT_FALSE(plan.Due(128, 1000));  // block 1: not a period, not the last full block
  EXPECT_TRUE(plan.Due(512, 1000));   // block 4
  EXPECT_TRUE(plan.Due(896, 1000));   // block 7 = 1000 / 128: the last full block
  EXPECT_FALSE(plan.Due(900, 1000));
  EXPECT_EQ(plan.ChunkEnd(0, 1000), 512);
  EXPECT_EQ(plan.ChunkEnd(512, 1000), 896);
  EXPECT_EQ(plan.ChunkEnd(896, 1000), 1000);
  EXPECT_EQ(plan.ChunkEnd(0, 100), 100);
  EXPECT_EQ(plan.ChunkEnd(100, 1024), 512);
  CheckpointPlan none{.every = 0};
  EXPECT_TRUE(none.Due(896, 1000));
  EXPECT_FALSE(none.Due(512, 1000));
  EXPECT_EQ(none.ChunkEnd(0, 1000), 896);
}

// The owner thread looks up, computes (fills) and caches chains of 20 documents in a pool too
// small for all of them, so blocks are evicted and reused all the time; every block it hands to
// a transfer goes with a reference of the transfer's own, and reader threads check the bytes
// before and after a pause, as a UCX put would read them, and only then drop the reference.
TEST_F(PrefixCacheTest, StressSharedEvictedAndReusedBlocksAlwaysVerify) {
  KvPool pool(layout_, 48);
  PrefixCache cache(pool, {.max_blocks = 40});
  struct Transfer {
    int32_t block;
    uint32_t doc, index;
  };
  absl::Mutex mu;
  std::deque<Transfer> queue;
  bool done = false;
  std::atomic<int64_t> verified{0}, bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      for (;;) {
        Transfer x;
        {
          absl::MutexLock lock(&mu);
          auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !queue.empty() || done; };
          mu.Await(absl::Condition(&ready));
          if (queue.empty()) return;
          x = queue.front();
          queue.pop_front();
        }
        const bool first = Holds(pool, x.block, x.doc, x.index);
        std::this_thread::yield();
        const bool second = Holds(pool, x.block, x.doc, x.index);
        (first && second ? verified : bad).fetch_add(1);
        pool.Free(x.block);
      }
    });
  }
  std::mt19937 random(7);
  int64_t hits = 0;
  for (int round = 0; round < 400; ++round) {
    const uint32_t doc = random() % 20;
    const int n = 1 + static_cast<int>(random() % 6);
    const std::vector<BlockKey> keys = Chain(doc, n);
    PrefixHit hit = cache.Match(keys, n);
    hits += hit.blocks.empty() ? 0 : 1;
    std::vector<int32_t> blocks = hit.blocks;
    for (size_t i = 0; i < blocks.size(); ++i) {
      ASSERT_TRUE(Holds(pool, blocks[i], doc, static_cast<uint32_t>(i))) << "a shared block changed";
    }
    while (static_cast<int>(blocks.size()) < n) {
      if (pool.free_blocks() == 0 && cache.Evict(1) == 0) {
        std::this_thread::yield();  // everything is held by transfers: wait for them
        continue;
      }
      absl::StatusOr<int32_t> b = pool.Allocate();
      if (!b.ok()) continue;
      Fill(*b, doc, static_cast<uint32_t>(blocks.size()), pool);
      blocks.push_back(*b);
    }
    {
      absl::MutexLock lock(&mu);
      for (size_t i = 0; i < blocks.size(); ++i) {
        pool.Ref(blocks[i]);  // the transfer's
        queue.push_back({blocks[i], doc, static_cast<uint32_t>(i)});
      }
    }
    cache.Insert(keys, blocks);
    cache.InsertCheckpoint(keys.back(), State(n * kBlockTokens));
    for (int32_t b : blocks) pool.Free(b);  // the request's
  }
  {
    absl::MutexLock lock(&mu);
    done = true;
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(verified.load(), 400);
  EXPECT_GT(hits, 50);
  EXPECT_GT(cache.stats().evicted_blocks, 50);
  const int64_t cached = cache.stats().blocks;
  EXPECT_EQ(cache.Evict(1000), cached);  // nobody else holds any of them now
  EXPECT_EQ(pool.free_blocks(), pool.num_blocks());
}

}  // namespace
}  // namespace strata::engine
