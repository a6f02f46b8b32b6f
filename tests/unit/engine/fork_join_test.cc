// The CPU backend's fork-join pool: every slot of every job runs exactly once, on distinct
// threads, whatever the mix of job sizes, including jobs that leave workers idle and jobs that
// follow each other faster than a worker wakes.
#include "engine/cpu/fork_join.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace strata::engine::cpu {
namespace {

TEST(ForkJoinPoolTest, EverySlotRunsOnceOnItsOwnThread) {
  ForkJoinPool pool(3);
  for (int slots : {1, 2, 3, 4}) {
    absl::Mutex mu;
    std::vector<int> runs(4, 0);
    std::set<std::thread::id> threads;
    pool.Run(slots, [&](int slot) {
      absl::MutexLock lock(&mu);
      ++runs[static_cast<size_t>(slot)];
      threads.insert(std::this_thread::get_id());
    });
    for (int s = 0; s < 4; ++s) EXPECT_EQ(runs[static_cast<size_t>(s)], s < slots ? 1 : 0) << slots;
    EXPECT_EQ(static_cast<int>(threads.size()), slots);
  }
}

TEST(ForkJoinPoolTest, ManyJobsBackToBackAndAfterSleeping) {
  // Spin 0: workers sleep after every job, so wake-ups race with the next job's start.
  for (int64_t spin_ns : {int64_t{0}, int64_t{50'000}}) {
    ForkJoinPool pool(2, spin_ns);
    std::atomic<int64_t> total{0};
    int64_t want = 0;
    for (int job = 0; job < 20000; ++job) {
      const int slots = 1 + job % 3;
      want += slots * (slots - 1) / 2 + slots;
      pool.Run(slots, [&](int slot) { total.fetch_add(slot + 1, std::memory_order_relaxed); });
      ASSERT_EQ(total.load(), want) << "job " << job << ", spin " << spin_ns;
    }
  }
}

TEST(ForkJoinPoolTest, MoreSlotsThanThreadsAreCapped) {
  ForkJoinPool pool(1);
  std::atomic<int> runs{0};
  pool.Run(8, [&](int slot) {
    EXPECT_LT(slot, 2);
    runs.fetch_add(1);
  });
  EXPECT_EQ(runs.load(), 2);
}

// A job or the stop may come before a worker thread first runs: neither may be missed (a miss
// hangs the Run or the destructor, and ctest's timeout fails the test).
TEST(ForkJoinPoolTest, JobsAndStopBeforeWorkersStart) {
  for (int i = 0; i < 300; ++i) {
    ForkJoinPool idle(3, /*spin_ns=*/0);
  }
  for (int i = 0; i < 300; ++i) {
    ForkJoinPool pool(3, /*spin_ns=*/0);
    std::atomic<int> runs{0};
    pool.Run(4, [&](int) { runs.fetch_add(1); });
    ASSERT_EQ(runs.load(), 4);
  }
}

TEST(ForkJoinPoolTest, NoWorkersRunsOnTheCaller) {
  ForkJoinPool pool(0);
  std::vector<int> seen;
  pool.Run(3, [&](int slot) { seen.push_back(slot); });
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2}));
}

}  // namespace
}  // namespace strata::engine::cpu
