// Runs a set of child processes as one unit, for `strata up`: starts them, forwards their output
// line by line as "[name] line", notices when one exits, and stops them all (SIGTERM, then SIGKILL
// after a timeout) leaving no process behind.
//
//   SignalWaiter signals;                       // first: block SIGINT/SIGTERM/SIGCHLD
//   Supervisor supervisor({});
//   STRATA_RETURN_IF_ERROR(supervisor.Start({.name = "decode-0", .argv = {...}}).status());
//   STRATA_RETURN_IF_ERROR(supervisor.WaitReady("decode-0", is_ready, absl::Minutes(2), pause));
//   absl::StatusOr<int> stop_signal = supervisor.Watch(signals);   // until Ctrl-C or a crash
//   supervisor.Stop();
//
// How "no orphans" holds:
//  - each child runs in its own process group, so a Ctrl-C in the terminal reaches only us, and we
//    signal the whole group (what a child started is stopped with it);
//  - each child has PR_SET_PDEATHSIG = SIGTERM, so it is told to stop even if we are SIGKILLed;
//  - when a child exits, what is left of its process group is SIGKILLed before it is reaped.
//
// Threading: Start, Reap, WaitReady, Watch and Stop are called from one thread, the one that
// lives as long as the children (PR_SET_PDEATHSIG fires when the *thread* that forked exits).
// Tail may be called from any thread. Output lines are forwarded from one thread per child.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace strata::cli {

struct ChildSpec {
  std::string name;  // "decode-0": the prefix of its output lines and its name in messages
  std::vector<std::string> argv;  // argv[0]: a path, or a program name looked up in PATH
  std::vector<std::pair<std::string, std::string>> env;  // set on top of this process's environment
  int stop_order = 0;  // Stop() stops lower values first (all of one value together)
};

struct ChildExit {
  std::string name;
  pid_t pid = 0;
  int wait_status = 0;  // as from waitpid
  // "exited with status 3", "was killed by signal 9 (Killed)".
  std::string Describe() const;
};

// Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread for its lifetime, so that they are
// taken only by Wait(). Threads created afterwards inherit the mask: create it before starting any
// thread, or a signal may be delivered to a thread that does not block it.
class SignalWaiter {
 public:
  SignalWaiter();
  ~SignalWaiter();  // restores the previous mask
  SignalWaiter(const SignalWaiter&) = delete;
  SignalWaiter& operator=(const SignalWaiter&) = delete;

  // Waits up to `timeout` for one of the signals: returns SIGINT or SIGTERM when a stop was asked
  // for, 0 on a timeout or a SIGCHLD (a child changed state: time to Reap()).
  int Wait(absl::Duration timeout);

 private:
  sigset_t set_;
  sigset_t old_;
};

class Supervisor {
 public:
  struct Options {
    // Total time Stop() gives children to exit after SIGTERM before it SIGKILLs them.
    absl::Duration stop_timeout = absl::Seconds(10);
    // Receives every output line, prefixed, one call at a time. Default: written to stderr.
    std::function<void(absl::string_view line)> output;
    size_t tail_lines = 20;  // lines of each child's output kept for error messages
  };

  explicit Supervisor(Options options);
  ~Supervisor();  // Stop()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts `spec` with stdin from /dev/null and stdout and stderr forwarded. Fails if argv[0]
  // cannot be found; a program that cannot be executed shows up as an exit with status 127.
  absl::StatusOr<pid_t> Start(const ChildSpec& spec);

  // Reaps the children that have exited since the last call (killing what is left of their
  // process groups first) and returns them.
  std::vector<ChildExit> Reap();

  // The last output lines of child `name`, each indented by two spaces, joined by newlines.
  std::string Tail(absl::string_view name) const;

  // Polls `ready()` until it is true. Fails, with the child's last output, when child `name` does
  // not get ready within `timeout`, or when any child exits meanwhile; Cancelled when
  // `pause(d)` (which waits up to d between polls) returns true, meaning a stop was asked for.
  absl::Status WaitReady(absl::string_view name, const std::function<bool()>& ready,
                         absl::Duration timeout, const std::function<bool(absl::Duration)>& pause);

  // Waits until SIGINT or SIGTERM arrives (returns it) or a child exits (an error naming it,
  // with its last output). Stops nothing.
  absl::StatusOr<int> Watch(SignalWaiter& signals);

  // Stops every child still running, in `stop_order` groups: SIGTERM to each process group, then
  // SIGKILL to those still there after the timeout, or at once when `hurry()` returns true (a
  // second Ctrl-C). Returns when every child is reaped. Idempotent.
  void Stop(const std::function<bool()>& hurry = nullptr);

  // Children started and not yet reaped.
  int running() const;

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = -1;
    int out_fd = -1;
    bool exited = false;
    std::thread forwarder;
    absl::Notification forwarder_done;
    std::atomic<bool> abandon_output{false};  // stop reading even without EOF
    mutable absl::Mutex tail_mu;
    std::deque<std::string> tail ABSL_GUARDED_BY(tail_mu);
  };

  void Forward(Child& child);
  void Emit(Child& child, absl::string_view line);
  void JoinForwarders();

  const Options options_;
  std::vector<std::unique_ptr<Child>> children_;
  absl::Mutex output_mu_;  // one output line at a time
};

// Readiness probes and checks `strata up` runs before and after starting children.
//
// The status code of `GET path` on host:port (HTTP/1.1, Connection: close), within `timeout`.
absl::StatusOr<int> HttpGetStatus(const std::string& host, int port, const std::string& path,
                                  absl::Duration timeout);
// True if a Redis server on host:port answers PING with PONG within `timeout`.
bool RedisPings(const std::string& host, int port, absl::Duration timeout);
// OK if host:port can be bound now (nothing else listens there), else an error naming it.
absl::Status CheckPortFree(const std::string& host, int port);
// The host to connect to for a service that listens on `host` (a wildcard means loopback).
std::string ConnectHost(const std::string& host);
// This executable's path (/proc/self/exe), to start children as `strata <role> ...`.
absl::StatusOr<std::string> SelfExecutable();

}  // namespace strata::cli
