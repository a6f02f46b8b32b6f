// Runs a set of child processes as one unit, for `strata up`: starts them, forwards their output
// line by line as "[name] line", restarts one that exits on its own (with a backoff, and up to a
// limit, after which it is given up on and the others go on), and stops them all (SIGTERM, then
// SIGKILL after a timeout) leaving no process behind.
//
//   SignalWaiter signals;                       // first: block SIGINT/SIGTERM/SIGCHLD
//   Supervisor supervisor({.restart = policy});
//   STRATA_RETURN_IF_ERROR(supervisor.Start({.name = "decode-0", .argv = {...}}).status());
//   STRATA_RETURN_IF_ERROR(supervisor.WaitReady("decode-0", is_ready, absl::Minutes(2), pause));
//   while (true) {
//     absl::StatusOr<int> stop_signal = supervisor.Watch(signals);  // restarts children meanwhile
//     if (stop_signal.ok()) break;                                  // Ctrl-C or SIGTERM
//     // else a child was given up on (supervisor.GivenUp(name)): carry on without it, or stop
//   }
//   supervisor.Stop();
//
// Restarts happen only inside Watch(): a child that exits while starting (WaitReady) or while
// stopping (Stop) is never restarted, and once Watch() has returned a stop signal nothing is.
// Every exit Watch() sees and every restart is reported through Options::events with the child's
// name, its exit status or signal and the next backoff (RestartTracker decides); a giving-up is
// Watch()'s error, for the caller to report and act on.
//
// How "no orphans" holds:
//  - each child runs in its own process group, so a Ctrl-C in the terminal reaches only us, and we
//    signal the whole group (what a child started is stopped with it);
//  - each child has PR_SET_PDEATHSIG = SIGTERM, so it is told to stop even if we are SIGKILLed;
//  - when a child exits, what is left of its process group is SIGKILLed before it is reaped.
//
// Threading: Start, Reap, WaitReady, Watch, Stop and GivenUp are called from one thread, the one
// that lives as long as the children (PR_SET_PDEATHSIG fires when the *thread* that forked exits;
// restarts fork from it too). Tail may be called from any thread. Output lines are forwarded from
// one thread per child process.
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
#include "cli/restart_policy.h"

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
  int wait_status = 0;    // as from waitpid
  absl::Duration uptime;  // how long this run of the child lasted
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
    // What Watch() does when a child exits on its own.
    RestartPolicy restart;
    // Receives the supervisor's own messages about exits and restarts, from the supervising thread.
    // Default: logged (an exit as a warning, a restart as information).
    std::function<void(absl::string_view message)> events;
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

  // Supervises until SIGINT or SIGTERM arrives (returns it) or a child is given up on (an Aborted
  // error: "giving up on decode-0 after 5 restarts in 60 s: it (pid 12) exited with status 1; its
  // last output: ..."). Meanwhile a child that exits is restarted after its backoff. After a
  // giving-up the others go on running and Watch() may be called again to go on supervising them;
  // a restart that was due is then done. A stop signal wins over a child's exit seen at the same
  // time: nothing is restarted after one. Stops nothing.
  absl::StatusOr<int> Watch(SignalWaiter& signals);

  // True once Watch() has given up on child `name`.
  bool GivenUp(absl::string_view name) const;

  // Stops every child still running, in `stop_order` groups: SIGTERM to each process group, then
  // SIGKILL to those still there after the timeout, or at once when `hurry()` returns true (a
  // second Ctrl-C). Returns when every child is reaped. Idempotent.
  void Stop(const std::function<bool()>& hurry = nullptr);

  // Child processes started and not yet reaped (a child waiting for its restart is not counted).
  int running() const;

 private:
  // One run of a child: a restart is a new Process.
  struct Process {
    pid_t pid = -1;
    absl::Time started;
    int out_fd = -1;
    bool exited = false;  // reaped
    std::thread forwarder;
    absl::Notification forwarder_done;
    std::atomic<bool> abandon_output{false};  // stop reading even without EOF
  };
  struct Child {
    explicit Child(const RestartPolicy& policy) : restarts(policy) {}
    ChildSpec spec;
    std::unique_ptr<Process> process;  // the latest run; null only if a restart could not fork
    RestartTracker restarts;
    absl::Time restart_at = absl::InfiniteFuture();  // when a restart is due
    bool given_up = false;
    mutable absl::Mutex tail_mu;
    std::deque<std::string> tail ABSL_GUARDED_BY(tail_mu);  // across restarts
  };

  absl::Status Spawn(Child& child);
  void Forward(Child& child, Process& process);
  void Emit(Child& child, absl::string_view line);
  // Joins the forwarder of a reaped process (waiting at most kOutputDrain for its last lines).
  void Retire(Process& process, absl::Time drain_deadline);
  void JoinForwarders();
  // Decides what becomes of a child whose process exited: a restart is scheduled, or it is given
  // up on (the message is queued for Watch to return).
  // `what` says what happened: "(pid 12) exited with status 1".
  void OnUnexpectedExit(Child& child, absl::Time started, const std::string& what);
  void RestartDue();
  enum class Severity { kInfo, kWarning };
  void Event(Severity severity, const std::string& message);

  const Options options_;
  std::vector<std::unique_ptr<Child>> children_;
  std::deque<std::string> give_ups_;  // messages of givings-up Watch has yet to return
  absl::Mutex output_mu_;             // one output line at a time
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
