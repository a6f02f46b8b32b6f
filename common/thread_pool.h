// A fixed pool of worker threads for CPU work: checkpoint loading, weight generation and (later)
// the CPU backend's kernels. The queue is bounded: Schedule() blocks while it is full, which is
// the back-pressure callers want for batch work.
//
// Threading: every method may be called from any thread except ParallelFor, which must not be
// called from inside a task of the same pool (the caller would wait on itself).
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace strata {

class ThreadPool {
 public:
  // `num_threads` == 0 means one per hardware thread.
  explicit ThreadPool(size_t num_threads = 0, size_t max_queued = 4096);
  ~ThreadPool();  // Runs what is queued, then joins.

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t num_threads() const { return workers_.size(); }

  void Schedule(std::function<void()> task);
  // Like Schedule, but never waits: false (and the task is dropped) when the queue is full.
  bool TrySchedule(std::function<void()> task);

  // Runs fn(i) for i in [0, n) on the pool and the calling thread; returns when all are done.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  void WorkerLoop();

  const size_t max_queued_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace strata
