// Heartbeat: keeps one record registered while its service runs.
#include <algorithm>
#include <utility>

#include "common/strings.h"
#include "registry/registry.h"
#include "spdlog/spdlog.h"

namespace strata::registry {
namespace {

// A simulated clock moves only when a test advances it, and SimulatedClock::SleepFor cannot be
// interrupted; with one, the loop polls its time at this real-time interval instead.
constexpr absl::Duration kSimulatedClockPoll = absl::Milliseconds(2);

}  // namespace

Heartbeat::Heartbeat(Registry& registry, ServiceRecord record, absl::Duration lease,
                     std::function<Load()> load, Clock& clock)
    : registry_(registry),
      record_(std::move(record)),
      lease_(lease),
      load_(std::move(load)),
      clock_(clock) {}

Heartbeat::~Heartbeat() {
  if (!thread_.joinable()) return;  // never started: nothing registered
  stop_.Notify();
  thread_.join();
  if (absl::Status status = registry_.Remove(record_.role, record_.id); !status.ok()) {
    // The lease lapses on its own; this only takes the service out of rotation sooner.
    spdlog::warn("registry: deregistering {} {}: {}", record_.role, record_.id,
                 ToStd(status.message()));
  }
}

absl::Status Heartbeat::Start() {
  if (thread_.joinable())
    return absl::FailedPreconditionError("registry: heartbeat already started");
  if (load_) record_.load = load_();
  // Timed from before the first Put, on this thread: a test that advances a simulated clock right
  // after Start() returns must see the renewal that time calls for.
  const absl::Time first_renewal = clock_.Now() + lease_ / 3;
  if (absl::Status status = registry_.Put(record_, lease_); !status.ok()) return status;
  thread_ = std::thread([this, first_renewal] { Loop(first_renewal); });
  return absl::OkStatus();
}

void Heartbeat::Loop(absl::Time next) {
  // Three renewals per lease: one failed or late renewal does not take the service out of rotation.
  const absl::Duration interval = lease_ / 3;
  const bool real_clock = dynamic_cast<RealClock*>(&clock_) != nullptr;
  bool failing = false;
  while (true) {
    absl::Duration wait = next - clock_.Now();
    if (!real_clock) wait = std::min(wait, kSimulatedClockPoll);
    if (stop_.WaitForNotificationWithTimeout(std::max(wait, absl::ZeroDuration()))) return;
    const absl::Time now = clock_.Now();
    if (now < next) continue;
    if (load_) record_.load = load_();
    absl::Status status = registry_.Put(record_, lease_);
    if (!status.ok() && !failing) {
      spdlog::warn("registry: renewing {} {} failed (retrying every {}): {}", record_.role,
                   record_.id, absl::FormatDuration(interval), ToStd(status.message()));
    } else if (status.ok() && failing) {
      spdlog::info("registry: renewing {} {} works again", record_.role, record_.id);
    }
    failing = !status.ok();
    // From before the Put: a slow Put (Redis timing out) does not stretch the period.
    next = now + interval;
  }
}

}  // namespace strata::registry
