#include "cli/restart_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace strata::cli {

RestartTracker::RestartTracker(const RestartPolicy& policy)
    : policy_(policy), next_backoff_(policy.initial_backoff) {}

RestartTracker::Decision RestartTracker::OnExit(absl::Time started, absl::Time exited) {
  while (!restarts_.empty() && restarts_.front() <= exited - policy_.window) restarts_.pop_front();
  Decision decision;
  decision.restarts_in_window = static_cast<int>(restarts_.size());
  if (decision.restarts_in_window >= policy_.max_restarts) {
    decision.give_up = true;
    return decision;
  }
  // A child that ran a good while was healthy: this exit is a new incident, not more of a crash
  // loop, and does not deserve the long delay the last loop built up.
  if (exited - started >= policy_.reset_after) next_backoff_ = policy_.initial_backoff;
  decision.backoff = next_backoff_;
  next_backoff_ =
      std::min(next_backoff_ * 2, std::max(policy_.max_backoff, policy_.initial_backoff));
  restarts_.push_back(exited);
  ++total_restarts_;
  return decision;
}

std::string FormatSeconds(absl::Duration d) {
  // Milliseconds are the finest a person reads here; StrCat prints at most 6 significant digits.
  const double seconds = std::round(absl::ToDoubleMilliseconds(d)) / 1000.0;
  return absl::StrCat(seconds, " s");
}

}  // namespace strata::cli
