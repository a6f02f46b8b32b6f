#include "cli/supervisor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cli/restart_policy.h"
#include "gtest/gtest.h"

namespace strata::cli {
namespace {

// Polls `done()` until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// True once no process `pid` exists any more. Orphans are re-parented to this test process (a
// child subreaper, see the fixture), so it reaps them: a zombie still answers kill(pid, 0).
bool Gone(pid_t pid) {
  return WaitFor([pid] {
    waitpid(pid, nullptr, WNOHANG);
    return kill(pid, 0) != 0 && errno == ESRCH;
  });
}

// Collects the supervisor's output lines.
class Lines {
 public:
  std::function<void(absl::string_view)> Sink() {
    return [this](absl::string_view line) {
      absl::MutexLock lock(&mu_);
      lines_.emplace_back(line);
    };
  }
  std::vector<std::string> Get() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }
  // Waits for a line starting with `prefix`; returns the rest of it.
  std::optional<std::string> WaitForLine(absl::string_view prefix) {
    std::optional<std::string> found;
    WaitFor([&] {
      for (const std::string& line : Get()) {
        if (absl::StartsWith(line, prefix)) {
          found = line.substr(prefix.size());
          return true;
        }
      }
      return false;
    });
    return found;
  }
  // The rest of every line starting with `prefix`, in order.
  std::vector<std::string> After(absl::string_view prefix) {
    std::vector<std::string> found;
    for (const std::string& line : Get()) {
      if (absl::StartsWith(line, prefix)) found.push_back(line.substr(prefix.size()));
    }
    return found;
  }
  bool Has(absl::string_view line) {
    for (const std::string& l : Get()) {
      if (l == line) return true;
    }
    return false;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

ChildSpec Shell(std::string name, std::string script, int stop_order = 0) {
  return {.name = std::move(name),
          .argv = {"/bin/sh", "-c", std::move(script)},
          .stop_order = stop_order};
}

ChildSpec Sleeper(std::string name) { return {.name = std::move(name), .argv = {"sleep", "1000"}}; }

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }
};

TEST_F(SupervisorTest, ForwardsOutputWithNamePrefix) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  ASSERT_TRUE(
      supervisor.Start(Shell("talker", "echo hello; echo 'to stderr' >&2; printf 'no newline'"))
          .ok());
  std::vector<ChildExit> exits;
  ASSERT_TRUE(WaitFor([&] {
    for (ChildExit& e : supervisor.Reap()) exits.push_back(e);
    return !exits.empty();
  }));
  EXPECT_EQ(exits[0].name, "talker");
  EXPECT_EQ(exits[0].Describe(), "exited with status 0");
  supervisor.Stop();  // also drains the output
  EXPECT_TRUE(lines.Has("[talker] hello"));
  EXPECT_TRUE(lines.Has("[talker] to stderr"));
  EXPECT_TRUE(lines.Has("[talker] no newline"));
  EXPECT_NE(supervisor.Tail("talker").find("  hello\n  to stderr"), std::string::npos);
}

TEST_F(SupervisorTest, StopEndsChildrenAndWhatTheyStarted) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  absl::StatusOr<pid_t> a = supervisor.Start(Sleeper("a"));
  absl::StatusOr<pid_t> b = supervisor.Start(Shell("b", "sleep 1000 & echo grandchild $!; wait"));
  ASSERT_TRUE(a.ok() && b.ok());
  std::optional<std::string> grandchild_text = lines.WaitForLine("[b] grandchild ");
  ASSERT_TRUE(grandchild_text.has_value());
  pid_t grandchild = 0;
  ASSERT_TRUE(absl::SimpleAtoi(*grandchild_text, &grandchild));
  EXPECT_EQ(supervisor.running(), 2);

  const absl::Time start = absl::Now();
  supervisor.Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5))
      << "children that obey SIGTERM must not wait out the timeout";
  EXPECT_EQ(supervisor.running(), 0);
  EXPECT_TRUE(Gone(*a));
  EXPECT_TRUE(Gone(*b));
  EXPECT_TRUE(Gone(grandchild));
}

TEST_F(SupervisorTest, ChildIgnoringSigtermIsKilledAfterTheTimeout) {
  Lines lines;
  Supervisor supervisor({.stop_timeout = absl::Milliseconds(300), .output = lines.Sink()});
  absl::StatusOr<pid_t> pid =
      supervisor.Start(Shell("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done"));
  ASSERT_TRUE(pid.ok());
  ASSERT_TRUE(lines.WaitForLine("[stubborn] ready").has_value());
  const absl::Time start = absl::Now();
  supervisor.Stop();
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_TRUE(Gone(*pid));
}

TEST_F(SupervisorTest, HurryKillsWithoutWaiting) {
  Lines lines;
  Supervisor supervisor({.stop_timeout = absl::Seconds(60), .output = lines.Sink()});
  absl::StatusOr<pid_t> pid =
      supervisor.Start(Shell("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done"));
  ASSERT_TRUE(pid.ok());
  ASSERT_TRUE(lines.WaitForLine("[stubborn] ready").has_value());
  const absl::Time start = absl::Now();
  supervisor.Stop([] { return true; });
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(Gone(*pid));
}

TEST_F(SupervisorTest, StopsLowerStopOrderFirst) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  absl::StatusOr<pid_t> first = supervisor.Start(
      Shell("first", "trap 'sleep 0.3; exit 0' TERM; echo ready; while :; do sleep 0.05; done", 0));
  ASSERT_TRUE(first.ok());
  // When "last" gets SIGTERM, it reports whether "first" still exists.
  ASSERT_TRUE(
      supervisor
          .Start(Shell(
              "last",
              absl::StrCat("trap 'if kill -0 ", *first,
                           " 2>/dev/null; then echo first-alive; else echo first-gone; fi; exit 0' "
                           "TERM; echo ready; while :; do sleep 0.05; done"),
              1))
          .ok());
  ASSERT_TRUE(lines.WaitForLine("[first] ready").has_value());
  ASSERT_TRUE(lines.WaitForLine("[last] ready").has_value());
  supervisor.Stop();
  EXPECT_TRUE(lines.Has("[last] first-gone")) << absl::StrJoin(lines.Get(), "\n");
}

TEST_F(SupervisorTest, WithRestartsOffACrashIsReportedAndTheOthersGoOn) {
  SignalWaiter signals;
  Lines lines;
  Supervisor supervisor({.output = lines.Sink(), .restart = {.max_restarts = 0}});
  absl::StatusOr<pid_t> a = supervisor.Start(Sleeper("a"));
  absl::StatusOr<pid_t> b = supervisor.Start(Sleeper("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(supervisor.Start(Shell("crasher", "echo about to fail; exit 3")).ok());
  absl::StatusOr<int> watched = supervisor.Watch(signals);
  ASSERT_FALSE(watched.ok());
  EXPECT_EQ(watched.status().code(), absl::StatusCode::kAborted);
  const std::string message(watched.status().message());
  EXPECT_NE(message.find("giving up on crasher (restarts are off)"), std::string::npos) << message;
  EXPECT_NE(message.find("exited with status 3"), std::string::npos) << message;
  EXPECT_NE(message.find("about to fail"), std::string::npos) << message;
  EXPECT_TRUE(supervisor.GivenUp("crasher"));
  EXPECT_FALSE(supervisor.GivenUp("a"));
  EXPECT_EQ(supervisor.running(), 2);
  supervisor.Stop();
  EXPECT_TRUE(Gone(*a));
  EXPECT_TRUE(Gone(*b));
}

// Short backoffs (0.05 s doubling to 0.2 s), so that tests of restarts take well under a second.
RestartPolicy FastRestarts(int max_restarts) {
  return {.max_restarts = max_restarts,
          .window = absl::Seconds(60),
          .initial_backoff = absl::Milliseconds(50),
          .max_backoff = absl::Milliseconds(200),
          .reset_after = absl::Seconds(60)};
}

// How many of `lines` contain `part`.
int CountContaining(const std::vector<std::string>& lines, absl::string_view part) {
  return static_cast<int>(std::count_if(lines.begin(), lines.end(), [&](const std::string& line) {
    return absl::StrContains(line, part);
  }));
}

TEST_F(SupervisorTest, CrashingChildIsRestartedWithBackoffThenGivenUpOn) {
  SignalWaiter signals;
  Lines lines;
  Lines events;
  Supervisor supervisor(
      {.output = lines.Sink(), .restart = FastRestarts(3), .events = events.Sink()});
  absl::StatusOr<pid_t> other = supervisor.Start(Sleeper("other"));
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(supervisor.Start(Shell("crasher", "echo run $$; exit 3")).ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<int> watched = supervisor.Watch(signals);
  const absl::Duration took = absl::Now() - start;
  ASSERT_FALSE(watched.ok());
  EXPECT_EQ(watched.status().code(), absl::StatusCode::kAborted);
  const std::string message(watched.status().message());
  EXPECT_TRUE(absl::StartsWith(message, "giving up on crasher after 3 restarts in 60 s: it (pid "))
      << message;
  EXPECT_NE(message.find("exited with status 3"), std::string::npos) << message;
  EXPECT_NE(message.find("run "), std::string::npos) << "its last output: " << message;

  // Started once and restarted three times, each run a new process, after 0.05, 0.1, 0.2 s.
  std::vector<std::string> runs = lines.After("[crasher] run ");
  EXPECT_EQ(runs.size(), 4u) << absl::StrJoin(lines.Get(), "\n");
  std::sort(runs.begin(), runs.end());
  EXPECT_EQ(std::unique(runs.begin(), runs.end()) - runs.begin(), 4) << "pids repeat";
  EXPECT_GE(took, absl::Milliseconds(350));
  EXPECT_LT(took, absl::Seconds(10));
  const std::vector<std::string> said = events.Get();
  const std::string all = absl::StrJoin(said, "\n");
  EXPECT_EQ(CountContaining(said, "exited with status 3 after "), 3) << all;
  EXPECT_EQ(CountContaining(said, "restarting it in 0.05 s (restart 1 of at most 3 in 60 s)"), 1)
      << all;
  EXPECT_EQ(CountContaining(said, "restarting it in 0.1 s (restart 2 of at most 3 in 60 s)"), 1)
      << all;
  EXPECT_EQ(CountContaining(said, "restarting it in 0.2 s (restart 3 of at most 3 in 60 s)"), 1)
      << all;
  EXPECT_EQ(CountContaining(said, "restarted crasher (pid "), 3) << all;
  for (const std::string& event : said) EXPECT_TRUE(absl::StrContains(event, "crasher")) << event;

  // The others were left alone.
  EXPECT_TRUE(supervisor.GivenUp("crasher"));
  EXPECT_FALSE(supervisor.GivenUp("other"));
  EXPECT_EQ(supervisor.running(), 1);
  EXPECT_EQ(kill(*other, 0), 0);
  supervisor.Stop();
  EXPECT_TRUE(Gone(*other));
}

TEST_F(SupervisorTest, KilledChildIsRestartedAndTheOthersKeepRunning) {
  SignalWaiter signals;  // before any thread: every thread blocks SIGTERM
  Lines lines;
  Lines events;
  Supervisor supervisor(
      {.output = lines.Sink(), .restart = FastRestarts(5), .events = events.Sink()});
  absl::StatusOr<pid_t> other = supervisor.Start(Sleeper("other"));
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(supervisor.Start(Shell("victim", "echo up $$; exec sleep 1000")).ok());

  // While Watch() runs here: SIGKILL the victim from outside, wait for its successor, then ask
  // this thread to stop.
  const pthread_t watcher = pthread_self();
  pid_t first = 0;
  pid_t second = 0;
  std::thread killer([&] {
    if (WaitFor([&] { return lines.After("[victim] up ").size() == 1; }) &&
        absl::SimpleAtoi(lines.After("[victim] up ")[0], &first)) {
      kill(first, SIGKILL);
      if (WaitFor([&] { return lines.After("[victim] up ").size() == 2; }))
        absl::SimpleAtoi(lines.After("[victim] up ")[1], &second);
    }
    pthread_kill(watcher, SIGTERM);
  });
  absl::StatusOr<int> watched = supervisor.Watch(signals);
  killer.join();
  ASSERT_TRUE(watched.ok()) << watched.status();
  EXPECT_EQ(*watched, SIGTERM);
  ASSERT_GT(first, 0);
  ASSERT_GT(second, 0) << "not restarted: " << absl::StrJoin(events.Get(), "\n");
  EXPECT_NE(first, second);
  const std::string all = absl::StrJoin(events.Get(), "\n");
  EXPECT_NE(
      all.find(absl::StrCat("victim (pid ", first, ") was killed by signal 9 (Killed) after ")),
      std::string::npos)
      << all;
  EXPECT_NE(all.find("restarting it in 0.05 s (restart 1 of at most 5 in 60 s)"), std::string::npos)
      << all;
  EXPECT_NE(all.find(absl::StrCat("restarted victim (pid ", second, ", restart 1)")),
            std::string::npos)
      << all;
  EXPECT_EQ(supervisor.running(), 2);
  EXPECT_EQ(kill(*other, 0), 0) << "the other child must not have been touched";
  supervisor.Stop();
  EXPECT_TRUE(Gone(*other));
  EXPECT_TRUE(Gone(second));
}

TEST_F(SupervisorTest, StayingUpResetsTheBackoff) {
  SignalWaiter signals;
  Lines events;
  RestartPolicy policy = FastRestarts(2);
  policy.reset_after = absl::Milliseconds(200);
  Supervisor supervisor({.restart = policy, .events = events.Sink()});
  // Each run lasts longer than reset_after: every restart waits the initial backoff.
  ASSERT_TRUE(supervisor.Start(Shell("slow-crasher", "sleep 0.3; exit 1")).ok());
  absl::StatusOr<int> watched = supervisor.Watch(signals);
  ASSERT_FALSE(watched.ok());
  EXPECT_NE(watched.status().message().find("giving up on slow-crasher after 2 restarts"),
            std::string::npos)
      << watched.status();
  const std::vector<std::string> said = events.Get();
  EXPECT_EQ(CountContaining(said, "restarting it in 0.05 s"), 2) << absl::StrJoin(said, "\n");
  EXPECT_EQ(CountContaining(said, "restarting it in 0.1 s"), 0) << absl::StrJoin(said, "\n");
}

TEST_F(SupervisorTest, StopRestartsNothing) {
  SignalWaiter signals;
  Lines lines;
  Lines events;
  Supervisor supervisor(
      {.output = lines.Sink(), .restart = FastRestarts(5), .events = events.Sink()});
  // Exits with a failure status when told to stop: that is not a crash to restart.
  absl::StatusOr<pid_t> pid = supervisor.Start(
      Shell("grumpy", "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done"));
  ASSERT_TRUE(pid.ok());
  ASSERT_TRUE(lines.WaitForLine("[grumpy] ready").has_value());
  supervisor.Stop();
  EXPECT_EQ(supervisor.running(), 0);
  EXPECT_TRUE(Gone(*pid));
  EXPECT_EQ(lines.After("[grumpy] ready").size(), 1u);
  EXPECT_TRUE(events.Get().empty()) << absl::StrJoin(events.Get(), "\n");
}

TEST_F(SupervisorTest, WaitReadyFailsWithTheChildsOutputWhenItExits) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  ASSERT_TRUE(supervisor.Start(Shell("decode-0", "echo 'cannot load model'; exit 2")).ok());
  absl::Status status = supervisor.WaitReady(
      "decode-0", [] { return false; }, absl::Seconds(30),
      [](absl::Duration d) {
        absl::SleepFor(d);
        return false;
      });
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("decode-0 exited with status 2 while starting"),
            std::string::npos)
      << status;
  EXPECT_NE(status.message().find("cannot load model"), std::string::npos) << status;
}

TEST_F(SupervisorTest, WaitReadyTimesOutAndIsInterruptible) {
  Supervisor supervisor({});
  absl::StatusOr<pid_t> pid = supervisor.Start(Sleeper("slow"));
  ASSERT_TRUE(pid.ok());
  auto sleep = [](absl::Duration d) {
    absl::SleepFor(d);
    return false;
  };
  absl::Status status = supervisor.WaitReady(
      "slow", [] { return false; }, absl::Milliseconds(200), sleep);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("slow was not ready"), std::string::npos) << status;
  status = supervisor.WaitReady(
      "slow", [] { return false; }, absl::Seconds(30), [](absl::Duration) { return true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  int polls = 0;
  EXPECT_TRUE(supervisor
                  .WaitReady(
                      "slow", [&] { return ++polls == 3; }, absl::Seconds(30), sleep)
                  .ok());
  supervisor.Stop();
  EXPECT_TRUE(Gone(*pid));
}

TEST_F(SupervisorTest, UnknownProgramAndFailedExec) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  absl::StatusOr<pid_t> missing =
      supervisor.Start({.name = "x", .argv = {"strata-no-such-program"}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("strata-no-such-program"), std::string::npos);
  ASSERT_TRUE(
      supervisor.Start({.name = "y", .argv = {"/dev/null"}}).ok());  // exists, not executable
  std::vector<ChildExit> exits;
  ASSERT_TRUE(WaitFor([&] {
    for (ChildExit& e : supervisor.Reap()) exits.push_back(e);
    return !exits.empty();
  }));
  EXPECT_EQ(exits[0].Describe(), "exited with status 127");
  supervisor.Stop();
  EXPECT_NE(supervisor.Tail("y").find("cannot execute /dev/null"), std::string::npos)
      << supervisor.Tail("y");
}

TEST_F(SupervisorTest, ChildGetsEnvironmentOverrides) {
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  ChildSpec spec = Shell("env", "echo \"UCX_TLS=$UCX_TLS\"");
  spec.env = {{"UCX_TLS", "shm,tcp"}};
  ASSERT_TRUE(supervisor.Start(spec).ok());
  EXPECT_TRUE(lines.WaitForLine("[env] UCX_TLS=shm,tcp").has_value());
}

// Runs a supervisor in a forked process, the way `strata up` does, with `specs` as its children
// (two sleepers by default) until SIGTERM; it exits 0 if Watch() returned SIGTERM. Returns its
// pid; the children's first pids arrive in *children.
pid_t ForkSupervisor(std::vector<pid_t>* children,
                     std::vector<ChildSpec> specs = {Sleeper("a"), Sleeper("b")},
                     RestartPolicy policy = {}) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    int code = 2;
    {
      SignalWaiter signals;
      Supervisor supervisor({.restart = policy});
      std::string pids;
      for (const ChildSpec& spec : specs) {
        absl::StatusOr<pid_t> child = supervisor.Start(spec);
        if (!child.ok()) _exit(3);
        absl::StrAppend(&pids, *child, " ");
      }
      pids += "\n";
      if (write(fds[1], pids.data(), pids.size()) != static_cast<ssize_t>(pids.size())) _exit(4);
      absl::StatusOr<int> stop = supervisor.Watch(signals);
      supervisor.Stop();
      code = stop.ok() && *stop == SIGTERM ? 0 : 1;
    }
    _exit(code);
  }
  close(fds[1]);
  std::string text;
  char buf[256];
  pollfd p{fds[0], POLLIN, 0};
  while (text.find('\n') == std::string::npos && poll(&p, 1, 10000) == 1) {
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipWhitespace())) {
    pid_t child = 0;
    if (absl::SimpleAtoi(word, &child)) children->push_back(child);
  }
  return pid;
}

TEST_F(SupervisorTest, SigtermToTheSupervisorStopsEveryChild) {
  std::vector<pid_t> children;
  const pid_t supervisor = ForkSupervisor(&children);
  ASSERT_GT(supervisor, 0);
  ASSERT_EQ(children.size(), 2u);
  ASSERT_EQ(kill(supervisor, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(supervisor, &status, 0), supervisor);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "Watch() must return SIGTERM and the process exit normally";
  for (pid_t child : children) EXPECT_TRUE(Gone(child)) << child;
}

TEST_F(SupervisorTest, SigtermDuringACrashLoopStopsEverythingAndRestartsNothingAfter) {
  char dir_template[] = "/tmp/strata-supervisor-test.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string runs_file = absl::StrCat(dir_template, "/runs");
  // Every run of the looper appends its pid to runs_file.
  auto runs = [&] {
    std::vector<pid_t> pids;
    std::string text;
    if (FILE* f = fopen(runs_file.c_str(), "r")) {
      char buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
      fclose(f);
    }
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
      pid_t pid = 0;
      if (absl::SimpleAtoi(line, &pid)) pids.push_back(pid);
    }
    return pids;
  };
  RestartPolicy policy = FastRestarts(1000);
  policy.initial_backoff = policy.max_backoff = absl::Milliseconds(20);
  std::vector<pid_t> children;
  const pid_t supervisor = ForkSupervisor(
      &children,
      {Sleeper("steady"),
       Shell("looper", absl::StrCat("echo $$ >> ", runs_file, "; sleep 0.05; exit 1"))},
      policy);
  ASSERT_GT(supervisor, 0);
  ASSERT_EQ(children.size(), 2u);
  ASSERT_TRUE(WaitFor([&] { return runs().size() >= 3; })) << "the looper was not restarted";
  ASSERT_EQ(kill(supervisor, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(supervisor, &status, 0), supervisor);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::vector<pid_t> after_stop = runs();
  for (pid_t child : children) EXPECT_TRUE(Gone(child)) << child;
  for (pid_t run : after_stop) EXPECT_TRUE(Gone(run)) << run;
  // A restart that was due when the stop came must not happen later either.
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(runs().size(), after_stop.size());
  std::filesystem::remove_all(dir_template);
}

TEST_F(SupervisorTest, ChildrenStopWhenTheSupervisorIsKilled) {
  std::vector<pid_t> children;
  const pid_t supervisor = ForkSupervisor(&children);
  ASSERT_GT(supervisor, 0);
  ASSERT_EQ(children.size(), 2u);
  // SIGKILL: no cleanup runs in the supervisor; PR_SET_PDEATHSIG must end the children.
  ASSERT_EQ(kill(supervisor, SIGKILL), 0);
  ASSERT_EQ(waitpid(supervisor, nullptr, 0), supervisor);
  for (pid_t child : children) EXPECT_TRUE(Gone(child)) << child;
}

// ---- restart policy ----

// The backoffs a tracker gives for a child that runs `up` each time, until it gives up (at most
// 20).
std::vector<double> Backoffs(RestartTracker& tracker, absl::Time* now, absl::Duration up) {
  std::vector<double> seconds;
  for (int i = 0; i < 20; ++i) {
    const absl::Time started = *now;
    *now += up;
    const RestartTracker::Decision d = tracker.OnExit(started, *now);
    if (d.give_up) break;
    seconds.push_back(absl::ToDoubleSeconds(d.backoff));
    *now += d.backoff;
  }
  return seconds;
}

TEST(RestartTrackerTest, BackoffDoublesUpToTheMaximum) {
  RestartTracker tracker({.max_restarts = 8,
                          .window = absl::Seconds(600),
                          .initial_backoff = absl::Milliseconds(500),
                          .max_backoff = absl::Seconds(10),
                          .reset_after = absl::Seconds(30)});
  absl::Time now = absl::UnixEpoch();
  EXPECT_EQ(Backoffs(tracker, &now, absl::Seconds(1)),
            (std::vector<double>{0.5, 1, 2, 4, 8, 10, 10, 10}));
  EXPECT_EQ(tracker.total_restarts(), 8);
}

TEST(RestartTrackerTest, StayingUpResetsTheBackoff) {
  RestartTracker tracker({.max_restarts = 100,
                          .window = absl::Seconds(60),
                          .initial_backoff = absl::Milliseconds(500),
                          .max_backoff = absl::Seconds(10),
                          .reset_after = absl::Seconds(30)});
  absl::Time now = absl::UnixEpoch();
  auto once = [&](absl::Duration up) {
    const absl::Time started = now;
    now += up;
    RestartTracker::Decision d = tracker.OnExit(started, now);
    EXPECT_FALSE(d.give_up);
    now += d.backoff;
    return absl::ToDoubleSeconds(d.backoff);
  };
  EXPECT_EQ(once(absl::Seconds(1)), 0.5);
  EXPECT_EQ(once(absl::Seconds(1)), 1);
  EXPECT_EQ(once(absl::Seconds(1)), 2);
  EXPECT_EQ(once(absl::Seconds(29)), 4) << "29 s up is not yet 'a while'";
  EXPECT_EQ(once(absl::Seconds(30)), 0.5);
  EXPECT_EQ(once(absl::Seconds(1)), 1);
}

TEST(RestartTrackerTest, GivesUpAfterMaxRestartsWithinTheWindow) {
  RestartTracker tracker({.max_restarts = 3,
                          .window = absl::Seconds(60),
                          .initial_backoff = absl::Milliseconds(500),
                          .max_backoff = absl::Seconds(10),
                          .reset_after = absl::Seconds(30)});
  const absl::Time t0 = absl::UnixEpoch();
  for (int i = 0; i < 3; ++i) {
    RestartTracker::Decision d =
        tracker.OnExit(t0 + absl::Seconds(i * 5), t0 + absl::Seconds(i * 5 + 1));
    EXPECT_FALSE(d.give_up) << i;
    EXPECT_EQ(d.restarts_in_window, i);
  }
  RestartTracker::Decision d = tracker.OnExit(t0 + absl::Seconds(15), t0 + absl::Seconds(16));
  EXPECT_TRUE(d.give_up);
  EXPECT_EQ(d.restarts_in_window, 3);
}

TEST(RestartTrackerTest, RestartsOlderThanTheWindowDoNotCount) {
  RestartTracker tracker({.max_restarts = 2,
                          .window = absl::Seconds(10),
                          .initial_backoff = absl::Milliseconds(500),
                          .max_backoff = absl::Seconds(10),
                          .reset_after = absl::Seconds(30)});
  const absl::Time t0 = absl::UnixEpoch();
  auto exit_at = [&](double s) {
    return tracker.OnExit(t0 + absl::Seconds(s - 0.1), t0 + absl::Seconds(s));
  };
  EXPECT_FALSE(exit_at(0).give_up);
  EXPECT_FALSE(exit_at(5).give_up);
  const RestartTracker::Decision third = exit_at(10.5);  // the restart at 0 s has left the window
  EXPECT_FALSE(third.give_up);
  EXPECT_EQ(third.restarts_in_window, 1);
  EXPECT_TRUE(exit_at(12).give_up);  // 5 s and 10.5 s are within 10 s of it
}

TEST(RestartTrackerTest, NoRestartsMeansGivingUpAtTheFirstExit) {
  RestartTracker tracker({.max_restarts = 0});
  const absl::Time t0 = absl::UnixEpoch();
  EXPECT_TRUE(tracker.OnExit(t0, t0 + absl::Hours(1)).give_up);
  EXPECT_EQ(tracker.total_restarts(), 0);
}

TEST(RestartTrackerTest, FormatSeconds) {
  EXPECT_EQ(FormatSeconds(absl::Milliseconds(500)), "0.5 s");
  EXPECT_EQ(FormatSeconds(absl::Seconds(60)), "60 s");
  EXPECT_EQ(FormatSeconds(absl::Milliseconds(1250)), "1.25 s");
  EXPECT_EQ(FormatSeconds(absl::Microseconds(12345678)), "12.346 s");
}

// ---- probes ----

// A listening loopback socket; `reply` is sent to each connection after its request arrives.
class FakeServer {
 public:
  explicit FakeServer(std::string reply) : reply_(std::move(reply)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;  // as real servers do (Asio, Redis): the port is free again once closed
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(fd_, 4);
    thread_ = std::thread([this] {
      const int conn = accept(fd_, nullptr, nullptr);
      if (conn < 0) return;
      char buf[1024];
      ssize_t n = read(conn, buf, sizeof(buf));
      if (n > 0) n = write(conn, reply_.data(), reply_.size());
      close(conn);
    });
  }
  ~FakeServer() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }

 private:
  std::string reply_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(ProbeTest, HttpGetStatusReadsTheStatusLine) {
  {
    FakeServer server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    absl::StatusOr<int> code =
        HttpGetStatus("127.0.0.1", server.port(), "/healthz", absl::Seconds(5));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 200);
  }
  {
    FakeServer server("HTTP/1.1 503 Service Unavailable\r\n\r\n");
    EXPECT_EQ(*HttpGetStatus("127.0.0.1", server.port(), "/healthz", absl::Seconds(5)), 503);
  }
  {
    FakeServer server("garbage\r\n");
    EXPECT_FALSE(HttpGetStatus("127.0.0.1", server.port(), "/healthz", absl::Seconds(5)).ok());
  }
}

TEST(ProbeTest, CheckPortFreeAndConnectionRefused) {
  int port = 0;
  {
    FakeServer server("+PONG\r\n");
    port = server.port();
    absl::Status busy = CheckPortFree("127.0.0.1", port);
    EXPECT_FALSE(busy.ok());
    EXPECT_NE(busy.message().find("already in use"), std::string::npos) << busy;
    EXPECT_TRUE(RedisPings("127.0.0.1", port, absl::Seconds(5)));
  }
  EXPECT_TRUE(CheckPortFree("127.0.0.1", port).ok());
  EXPECT_FALSE(HttpGetStatus("127.0.0.1", port, "/healthz", absl::Seconds(1)).ok());
  EXPECT_FALSE(RedisPings("127.0.0.1", port, absl::Seconds(1)));
  EXPECT_EQ(ConnectHost("0.0.0.0"), "127.0.0.1");
  EXPECT_EQ(ConnectHost("10.1.2.3"), "10.1.2.3");
}

}  // namespace
}  // namespace strata::cli
