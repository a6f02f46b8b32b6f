// When the supervisor behind `strata up` restarts a child that exited on its own, and when it gives
// up on it: the decisions only, apart from processes and the real clock, so they are tested with
// made-up times (tests/unit/cli/supervisor_test.cc).
//
//   RestartTracker tracker(policy);
//   RestartTracker::Decision d = tracker.OnExit(started_at, exited_at);
//   if (d.give_up) ... else restart after d.backoff
//
// The backoff starts at `initial_backoff` and doubles with each restart up to `max_backoff`; a
// child that stayed up `reset_after` or longer before it exited starts again from
// `initial_backoff`. A child that has already been restarted `max_restarts` times within the last
// `window` when it exits again is given up on.
//
// Threading: a RestartTracker belongs to one thread (the supervisor's).
#pragma once

#include <deque>
#include <string>

#include "absl/time/time.h"

namespace strata::cli {

struct RestartPolicy {
  int max_restarts = 5;  // within `window`; 0: never restart
  absl::Duration window = absl::Seconds(60);
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(10);
  absl::Duration reset_after = absl::Seconds(30);
};

class RestartTracker {
 public:
  explicit RestartTracker(const RestartPolicy& policy);

  struct Decision {
    bool give_up = false;
    absl::Duration backoff;      // when !give_up: how long to wait before starting the child again
    int restarts_in_window = 0;  // restarts within the window before this exit (for messages)
  };
  // The child, started at `started`, exited at `exited` (>= started).
  Decision OnExit(absl::Time started, absl::Time exited);

  // Restarts so far, all windows together.
  int total_restarts() const { return total_restarts_; }

 private:
  const RestartPolicy policy_;
  std::deque<absl::Time> restarts_;  // exits that led to a restart, oldest first, within the window
  absl::Duration next_backoff_;
  int total_restarts_ = 0;
};

// "0.5 s", "60 s", "1.25 s": durations in the supervisor's messages, in the cluster file's unit.
std::string FormatSeconds(absl::Duration d);

}  // namespace strata::cli
