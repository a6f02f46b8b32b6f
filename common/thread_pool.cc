#include "common/thread_pool.h"

#include <atomic>
#include <utility>

namespace strata {

ThreadPool::ThreadPool(size_t num_threads, size_t max_queued) : max_queued_(max_queued) {
  if (num_threads == 0) num_threads = std::max<size_t>(1, std::thread::hardware_concurrency());
  workers_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::Schedule(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
        return p->queue_.size() < p->max_queued_;
      },
      this));
  queue_.push_back(std::move(task));
}

bool ThreadPool::TrySchedule(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= max_queued_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return p->stopping_ || !p->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void ThreadPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  // Work stealing by atomic counter: helpers and the caller pull indices until none are left.
  struct Shared {
    std::atomic<size_t> next{0};
    absl::Mutex mu;
    size_t helpers_running ABSL_GUARDED_BY(mu) = 0;
  } shared;
  auto drain = [&] {
    for (size_t i = shared.next.fetch_add(1); i < n; i = shared.next.fetch_add(1)) fn(i);
  };
  const size_t helpers = std::min(n - 1, workers_.size());
  {
    absl::MutexLock lock(&shared.mu);
    shared.helpers_running = helpers;
  }
  for (size_t h = 0; h < helpers; ++h) {
    Schedule([&] {
      drain();
      absl::MutexLock lock(&shared.mu);
      --shared.helpers_running;
    });
  }
  drain();
  absl::MutexLock lock(&shared.mu);
  shared.mu.Await(absl::Condition(
      +[](Shared* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) { return s->helpers_running == 0; },
      &shared));
}

}  // namespace strata
