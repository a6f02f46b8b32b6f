// Internal to transport/: one thread that runs posted tasks in order, used as the progress thread
// of InProcTransport and as the issuing thread of FaultyTransport. Every task is either run (on the
// thread) or failed exactly once: when the thread stops, the tasks still queued are failed.
//
// The queue is bounded: Post() from another thread blocks while it is full (back-pressure).
// Posts from any TaskThread (a completion issuing the next operation, or one transport's thread
// handing a message to another's) never block, so two threads posting to each other cannot
// deadlock; such posts are bounded by the queues they come from.
//
// Threading: every method may be called from any thread; Stop() not from the thread itself.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::transport::internal {

struct Task {
  std::function<void()> run;               // on the thread, once `not_before` has passed
  std::function<void(absl::Status)> fail;  // instead of `run`, when the thread stopped first
  absl::Time not_before = absl::InfinitePast();
};

class TaskThread {
 public:
  explicit TaskThread(size_t capacity);
  ~TaskThread();  // Stop(Cancelled) if not stopped yet.

  TaskThread(const TaskThread&) = delete;
  TaskThread& operator=(const TaskThread&) = delete;

  // Queues `task`. Tasks run in the order posted; a task waits for its `not_before` (and so do the
  // tasks behind it). Returns false, without calling `task.run` or `task.fail`, once stopped.
  bool Post(Task task);

  // Stops taking tasks, fails the queued ones with `status` on the calling thread (the task
  // running now, if any, finishes first on the thread) and joins.
  void Stop(const absl::Status& status);

  // Whether the caller is running on this thread.
  bool OnThread() const { return std::this_thread::get_id() == thread_id_; }

 private:
  void Loop();

  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  std::thread::id thread_id_;
};

// Whether the calling thread is some TaskThread's (posts from there never block).
bool OnAnyTaskThread();

}  // namespace strata::transport::internal
