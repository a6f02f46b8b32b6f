#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(ThreadPoolTest, ParallelForVisitsEveryIndexOnce) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(10000);
  pool.ParallelFor(hits.size(), [&](size_t i) { hits[i].fetch_add(1); });
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, ScheduledTasksAllRunBeforeDestruction) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(2, /*max_queued=*/4);  // small queue: Schedule must block, not drop
    for (int i = 0; i < 1000; ++i) pool.Schedule([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 1000);
}

TEST(ThreadPoolTest, ParallelForWorksWhileOtherTasksRun) {
  // Declared before the pool so that it outlives the workers: the task may still be inside
  // WaitForNotification (re-locking the Notification's mutex) after Notify() returns, and a
  // Notification destroyed first raced with it (TSan: ~Mutex vs. LockWhen).
  absl::Notification release;
  ThreadPool pool(2);
  pool.Schedule([&] { release.WaitForNotification(); });  // occupies one worker
  std::atomic<int> sum{0};
  pool.ParallelFor(100, [&](size_t i) { sum.fetch_add(static_cast<int>(i)); });
  EXPECT_EQ(sum.load(), 4950);
  release.Notify();
}

}  // namespace
}  // namespace strata
