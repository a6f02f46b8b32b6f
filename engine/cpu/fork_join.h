// ForkJoinPool: the CPU backend's workers. A decode step runs a few hundred small ops, each split
// over the threads and joined before the next: with a general-purpose pool (mutex, queue, futex
// wake-ups) the hand-offs cost more than the split saves — on a VM a wake-up is tens of
// microseconds. Here the workers spin on a generation counter for a short while after each job
// (so the next op finds them awake), then sleep on it (C++20 atomic wait, a futex), and the
// caller joins by spinning on a countdown the same way. Nothing is allocated per job.
//
// Threading: Run() is called by one thread at a time (the backend's caller); workers are the
// pool's own.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace strata::engine::cpu {

class ForkJoinPool {
 public:
  // `workers` threads besides the caller; they spin for `spin_ns` after a job before sleeping.
  explicit ForkJoinPool(int workers, int64_t spin_ns = 50'000);
  ~ForkJoinPool();

  ForkJoinPool(const ForkJoinPool&) = delete;
  ForkJoinPool& operator=(const ForkJoinPool&) = delete;

  int workers() const { return static_cast<int>(threads_.size()); }

  // Runs fn(slot) for slot in [0, slots), slots ≤ workers() + 1: slot 0 on the calling thread,
  // the others on workers; returns when all have returned.
  void Run(int slots, absl::FunctionRef<void(int)> fn);

 private:
  void WorkerLoop(int slot);
  // Waits until `value` differs from `old`: spins first, then sleeps.
  void AwaitChange(std::atomic<uint32_t>& value, uint32_t old);

  const int64_t spin_ns_;
  std::vector<std::thread> threads_;
  std::atomic<uint32_t> generation_{0};  // bumped per job (and to stop)
  std::atomic<uint32_t> pending_{0};     // workers that have not yet acknowledged the job
  std::atomic<bool> stopping_{false};
  // The current job, written before generation_ is bumped (release) and read after (acquire).
  const absl::FunctionRef<void(int)>* job_ = nullptr;
  int job_slots_ = 0;
};

}  // namespace strata::engine::cpu
