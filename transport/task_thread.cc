#include "transport/task_thread.h"

#include <utility>

namespace strata::transport::internal {
namespace {

thread_local bool on_task_thread = false;

}  // namespace

bool OnAnyTaskThread() { return on_task_thread; }

TaskThread::TaskThread(size_t capacity) : capacity_(capacity) {
  thread_ = std::thread([this] { Loop(); });
  thread_id_ = thread_.get_id();
}

TaskThread::~TaskThread() { Stop(absl::CancelledError("transport shut down")); }

bool TaskThread::Post(Task task) {
  absl::MutexLock lock(&mu_);
  if (!on_task_thread) {
    auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || queue_.size() < capacity_;
    };
    mu_.Await(absl::Condition(&room));
  }
  if (stopping_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void TaskThread::Stop(const absl::Status& status) {
  std::deque<Task> left;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    left.swap(queue_);
  }
  for (Task& task : left) task.fail(status);
  if (thread_.joinable()) thread_.join();
}

void TaskThread::Loop() {
  on_task_thread = true;
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      const absl::Time not_before = queue_.front().not_before;
      if (not_before > absl::Now()) {
        // A Stop() while waiting ends the wait early; the loop then sees stopping_.
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
        mu_.AwaitWithDeadline(absl::Condition(&stop), not_before);
        continue;
      }
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task.run();
  }
}

}  // namespace strata::transport::internal
