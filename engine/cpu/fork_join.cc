#include "engine/cpu/fork_join.h"

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace strata::engine::cpu {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ForkJoinPool::ForkJoinPool(int workers, int64_t spin_ns) : spin_ns_(spin_ns) {
  threads_.reserve(static_cast<size_t>(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { WorkerLoop(i + 1); });
}

ForkJoinPool::~ForkJoinPool() {
  stopping_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ForkJoinPool::AwaitChange(std::atomic<uint32_t>& value, uint32_t old) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_);
  for (int spins = 0;; ++spins) {
    if (value.load(std::memory_order_acquire) != old) return;
    CpuRelax();
    if ((spins & 63) == 63 && std::chrono::steady_clock::now() > deadline) break;
  }
  // C++20 atomic wait: a futex on a 32-bit value; returns at once if the value already changed.
  while (value.load(std::memory_order_acquire) == old) value.wait(old, std::memory_order_acquire);
}

void ForkJoinPool::WorkerLoop(int slot) {
  // The generation the pool was built with, not a load: a job (or the stop) may already have
  // bumped it before this thread first runs.
  uint32_t seen = 0;
  for (;;) {
    AwaitChange(generation_, seen);
    seen = generation_.load(std::memory_order_acquire);
    if (stopping_.load(std::memory_order_relaxed)) return;
    if (slot < job_slots_) (*job_)(slot);
    // Every worker acknowledges every job, taking part or not: Run() returns only then, so the
    // job's fields stay put while any worker may still read them.
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void ForkJoinPool::Run(int slots, absl::FunctionRef<void(int)> fn) {
  if (slots <= 1 || threads_.empty()) {
    for (int s = 0; s < slots; ++s) fn(s);
    return;
  }
  if (slots > workers() + 1) slots = workers() + 1;
  job_ = &fn;
  job_slots_ = slots;
  pending_.store(static_cast<uint32_t>(workers()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  fn(0);
  for (uint32_t left = pending_.load(std::memory_order_acquire); left != 0;
       left = pending_.load(std::memory_order_acquire)) {
    AwaitChange(pending_, left);
  }
}

}  // namespace strata::engine::cpu
