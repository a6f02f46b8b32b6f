#include "cli/supervisor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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

TEST_F(SupervisorTest, CrashingChildIsReportedAndTheOthersAreStopped) {
  SignalWaiter signals;
  Lines lines;
  Supervisor supervisor({.output = lines.Sink()});
  absl::StatusOr<pid_t> a = supervisor.Start(Sleeper("a"));
  absl::StatusOr<pid_t> b = supervisor.Start(Sleeper("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(supervisor.Start(Shell("crasher", "echo about to fail; exit 3")).ok());
  absl::StatusOr<int> watched = supervisor.Watch(signals);
  ASSERT_FALSE(watched.ok());
  const std::string message(watched.status().message());
  EXPECT_NE(message.find("crasher"), std::string::npos) << message;
  EXPECT_NE(message.find("exited with status 3"), std::string::npos) << message;
  EXPECT_NE(message.find("about to fail"), std::string::npos) << message;
  supervisor.Stop();
  EXPECT_TRUE(Gone(*a));
  EXPECT_TRUE(Gone(*b));
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

// Runs a supervisor in a forked process, the way `strata up` does, with two sleeping children.
// Returns its pid; the children's pids arrive in *children.
pid_t ForkSupervisor(std::vector<pid_t>* children) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    int code = 2;
    {
      SignalWaiter signals;
      Supervisor supervisor({});
      std::string pids;
      for (const char* name : {"a", "b"}) {
        absl::StatusOr<pid_t> child = supervisor.Start(Sleeper(name));
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
