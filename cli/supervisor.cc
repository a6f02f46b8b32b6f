#include "cli/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace strata::cli {
namespace {

constexpr size_t kMaxLineBytes = 64 * 1024;  // a longer "line" is forwarded in pieces
constexpr absl::Duration kPollInterval = absl::Milliseconds(10);
// Stop(): a stop_order group whose turn comes after the overall deadline still gets this long (or
// the whole stop timeout, if that is shorter).
constexpr absl::Duration kMinGroupGrace = absl::Seconds(1);
// After the children are gone, how long their output pipes may stay open (held by a process that
// escaped the process group) before the forwarders stop reading them.
constexpr absl::Duration kOutputDrain = absl::Seconds(1);

std::string ErrnoText(int err) { return std::string(strerror(err)); }

// argv[0] as a path: itself if it names one, else the first executable match in PATH.
absl::StatusOr<std::string> ResolveProgram(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("empty program name");
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("'", name, "' was not found in PATH"));
}

// Writes `text` and a decimal number to stderr using only async-signal-safe calls.
void WriteErrorAfterFork(const char* text, int number) {
  char digits[16];
  int n = 0;
  do {
    digits[sizeof(digits) - 1 - n++] = static_cast<char>('0' + number % 10);
    number /= 10;
  } while (number > 0 && n < 15);
  ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
  ignored = write(STDERR_FILENO, digits + sizeof(digits) - n, n);
  ignored = write(STDERR_FILENO, ")\n", 2);
  (void)ignored;
}

bool Exited(pid_t pid) {
  siginfo_t info{};
  // WNOWAIT: the child stays a zombie, so its pid (the process group id) cannot be reused while
  // we kill what is left of its group.
  if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0)
    return errno == ECHILD;
  return info.si_pid == pid;
}

void SignalGroup(pid_t pid, int signo) {
  if (kill(-pid, signo) != 0) kill(pid, signo);  // the group may not exist yet if setpgid raced
}

// A TCP connection to host:port within `deadline`, or -1.
int Connect(const std::string& host, int port, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      bool ok = false;
      if (errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int ms = static_cast<int>(
            std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
        int err = 0;
        socklen_t len = sizeof(err);
        ok = poll(&p, 1, ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
             err == 0;
      }
      if (!ok) {
        close(fd);
        fd = -1;
      }
    }
  }
  freeaddrinfo(found);
  return fd;
}

// Sends `request` and reads until `done(reply)` or EOF, within `deadline`.
bool Exchange(int fd, const std::string& request, absl::Time deadline, std::string* reply,
              const std::function<bool(const std::string&)>& done) {
  size_t sent = 0;
  while (sent < request.size()) {
    pollfd p{fd, POLLOUT, 0};
    const int ms =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (poll(&p, 1, ms) != 1) return false;
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (n > 0) sent += static_cast<size_t>(n);
  }
  char buf[1024];
  while (!done(*reply)) {
    pollfd p{fd, POLLIN, 0};
    const int ms =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (poll(&p, 1, ms) != 1) return false;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return done(*reply);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (n > 0) reply->append(buf, static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

// ---- ChildExit, SignalWaiter ------------------------------------------------------------------

std::string ChildExit::Describe() const {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int signo = WTERMSIG(wait_status);
    return absl::StrCat("was killed by signal ", signo, " (", strsignal(signo), ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

SignalWaiter::SignalWaiter() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &set_, &old_);
}

SignalWaiter::~SignalWaiter() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

int SignalWaiter::Wait(absl::Duration timeout) {
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  const int signo = sigtimedwait(&set_, nullptr, &ts);
  return signo == SIGINT || signo == SIGTERM ? signo : 0;
}

// ---- Supervisor -------------------------------------------------------------------------------

Supervisor::Supervisor(Options options) : options_(std::move(options)) {}

Supervisor::~Supervisor() { Stop(); }

absl::StatusOr<pid_t> Supervisor::Start(const ChildSpec& spec) {
  auto child = std::make_unique<Child>(options_.restart);
  child->spec = spec;
  STRATA_RETURN_IF_ERROR(Spawn(*child));
  children_.push_back(std::move(child));
  return children_.back()->process->pid;
}

absl::Status Supervisor::Spawn(Child& c) {
  // Only a reaped process is replaced (Start makes a new child; RestartDue acts after Reap, which
  // has already given its output time to drain).
  if (c.process != nullptr) Retire(*c.process, absl::Now());
  const ChildSpec& spec = c.spec;
  if (spec.argv.empty())
    return absl::InvalidArgumentError(absl::StrCat(spec.name, ": empty command line"));
  absl::StatusOr<std::string> program = ResolveProgram(spec.argv[0]);
  if (!program.ok())
    return absl::NotFoundError(absl::StrCat(spec.name, ": ", program.status().message()));

  // Everything the child needs is prepared here: between fork and exec only async-signal-safe
  // calls are allowed (other threads may hold the allocator's locks).
  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const bool overridden = std::any_of(spec.env.begin(), spec.env.end(), [&](const auto& kv) {
      return absl::StartsWith(entry, absl::StrCat(kv.first, "="));
    });
    if (!overridden) env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : spec.env) env_strings.push_back(absl::StrCat(key, "=", value));
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string exec_error = absl::StrCat("cannot execute ", *program, " (errno ");

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat(spec.name, ": pipe: ", ErrnoText(errno)));
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    if (null_fd >= 0) close(null_fd);
    return absl::ResourceExhaustedError(absl::StrCat(spec.name, ": fork: ", ErrnoText(err)));
  }
  if (pid == 0) {
    // Told to stop when the forking thread goes away, even by SIGKILL. If the parent died before
    // this line, the signal will never come: leave now.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    setpgid(0, 0);  // own group: the terminal's Ctrl-C reaches only the supervisor
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int signo : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE, SIGHUP, SIGQUIT})
      sigaction(signo, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(pipe_fds[1], STDOUT_FILENO);
    dup2(pipe_fds[1], STDERR_FILENO);
    close_range(3, ~0U, 0);  // nothing else of ours leaks into the child
    execve(program->c_str(), argv.data(), envp.data());
    WriteErrorAfterFork(exec_error.c_str(), errno);
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so signalling the group works even before the child runs
  close(pipe_fds[1]);
  if (null_fd >= 0) close(null_fd);

  c.process = std::make_unique<Process>();
  Process& process = *c.process;
  process.pid = pid;
  process.started = absl::Now();
  process.out_fd = pipe_fds[0];
  process.forwarder = std::thread([this, &c, &process] { Forward(c, process); });
  spdlog::debug("supervisor: started {} (pid {})", spec.name, pid);
  return absl::OkStatus();
}

void Supervisor::Forward(Child& child, Process& process) {
  std::string pending;
  char buf[4096];
  while (true) {
    pollfd p{process.out_fd, POLLIN, 0};
    const int r = poll(&p, 1, 100);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (process.abandon_output.load()) break;
      continue;
    }
    const ssize_t n = read(process.out_fd, buf, sizeof(buf));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;  // EOF: the child and everything it started have closed the pipe
    pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      Emit(child, absl::string_view(pending).substr(start, nl - start));
    }
    pending.erase(0, start);
    if (pending.size() >= kMaxLineBytes) {
      Emit(child, pending);
      pending.clear();
    }
  }
  if (!pending.empty()) Emit(child, pending);
  process.forwarder_done.Notify();
}

void Supervisor::Emit(Child& child, absl::string_view line) {
  if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
  {
    absl::MutexLock lock(&child.tail_mu);
    child.tail.emplace_back(line);
    while (child.tail.size() > options_.tail_lines) child.tail.pop_front();
  }
  const std::string prefixed = absl::StrCat("[", child.spec.name, "] ", line);
  absl::MutexLock lock(&output_mu_);
  if (options_.output) {
    options_.output(prefixed);
  } else {
    const std::string with_newline = prefixed + "\n";
    const ssize_t ignored = write(STDERR_FILENO, with_newline.data(), with_newline.size());
    (void)ignored;
  }
}

void Supervisor::Event(Severity severity, const std::string& message) {
  if (options_.events) {
    options_.events(message);
  } else if (severity == Severity::kWarning) {
    spdlog::warn("{}", message);
  } else {
    spdlog::info("{}", message);
  }
}

std::vector<ChildExit> Supervisor::Reap() {
  std::vector<ChildExit> exits;
  for (const std::unique_ptr<Child>& child : children_) {
    Process* process = child->process.get();
    if (process == nullptr || process->exited || !Exited(process->pid)) continue;
    // Whatever the child started and left behind in its group goes with it.
    kill(-process->pid, SIGKILL);
    int status = 0;
    if (waitpid(process->pid, &status, 0) != process->pid) status = 0;
    process->exited = true;
    // Its last words (often the reason it exited) belong in the tail before anyone reports it.
    process->forwarder_done.WaitForNotificationWithTimeout(kOutputDrain);
    exits.push_back({child->spec.name, process->pid, status, absl::Now() - process->started});
    spdlog::debug("supervisor: {} (pid {}) {}", child->spec.name, process->pid,
                  exits.back().Describe());
  }
  return exits;
}

void Supervisor::OnUnexpectedExit(Child& child, absl::Time started, const std::string& what) {
  const absl::Time now = absl::Now();
  const RestartTracker::Decision decision = child.restarts.OnExit(started, now);
  const std::string& name = child.spec.name;
  const RestartPolicy& policy = options_.restart;
  if (decision.give_up) {
    child.given_up = true;
    const std::string tail = Tail(name);
    const std::string why =
        policy.max_restarts == 0
            ? absl::StrCat("giving up on ", name, " (restarts are off): it ", what)
            : absl::StrCat("giving up on ", name, " after ", decision.restarts_in_window,
                           decision.restarts_in_window == 1 ? " restart" : " restarts", " in ",
                           FormatSeconds(policy.window), ": it ", what);
    give_ups_.push_back(absl::StrCat(why, tail.empty() ? "" : "; its last output:\n", tail));
    return;
  }
  child.restart_at = now + decision.backoff;
  Event(Severity::kWarning,
        absl::StrCat(name, " ", what, " after ", FormatSeconds(now - started),
                     " up; restarting it in ", FormatSeconds(decision.backoff), " (restart ",
                     decision.restarts_in_window + 1, " of at most ", policy.max_restarts, " in ",
                     FormatSeconds(policy.window), ")"));
}

void Supervisor::RestartDue() {
  for (const std::unique_ptr<Child>& child : children_) {
    const absl::Time now = absl::Now();
    if (child->restart_at > now) continue;
    child->restart_at = absl::InfiniteFuture();
    if (absl::Status started = Spawn(*child); !started.ok()) {
      // Rare (fork failing, the program removed): counts as one more exit, with the same backoff
      // and limit, so a lasting cause ends in giving up rather than a loop.
      OnUnexpectedExit(*child, now, absl::StrCat("could not be restarted: ", started.message()));
      continue;
    }
    Event(Severity::kInfo,
          absl::StrCat("restarted ", child->spec.name, " (pid ", child->process->pid, ", restart ",
                       child->restarts.total_restarts(), ")"));
  }
}

int Supervisor::running() const {
  return static_cast<int>(
      std::count_if(children_.begin(), children_.end(), [](const std::unique_ptr<Child>& c) {
        return c->process != nullptr && !c->process->exited;
      }));
}

bool Supervisor::GivenUp(absl::string_view name) const {
  return std::any_of(children_.begin(), children_.end(), [&](const std::unique_ptr<Child>& c) {
    return c->spec.name == name && c->given_up;
  });
}

std::string Supervisor::Tail(absl::string_view name) const {
  for (const std::unique_ptr<Child>& child : children_) {
    if (child->spec.name != name) continue;
    absl::MutexLock lock(&child->tail_mu);
    std::string out;
    for (const std::string& line : child->tail)
      absl::StrAppend(&out, out.empty() ? "" : "\n", "  ", line);
    return out;
  }
  return "";
}

absl::Status Supervisor::WaitReady(absl::string_view name, const std::function<bool()>& ready,
                                   absl::Duration timeout,
                                   const std::function<bool(absl::Duration)>& pause) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (ready()) return absl::OkStatus();
    for (const ChildExit& exit : Reap()) {
      const std::string tail = Tail(exit.name);
      return absl::UnavailableError(
          absl::StrCat(exit.name, " ", exit.Describe(), " while starting",
                       tail.empty() ? " (it printed nothing)" : "; its last output:\n", tail));
    }
    if (absl::Now() >= deadline) {
      const std::string tail = Tail(name);
      return absl::DeadlineExceededError(
          absl::StrCat(name, " was not ready after ", absl::FormatDuration(timeout),
                       tail.empty() ? " (it printed nothing)" : "; its last output:\n", tail));
    }
    if (pause(absl::Milliseconds(100))) return absl::CancelledError("stop requested");
  }
}

absl::StatusOr<int> Supervisor::Watch(SignalWaiter& signals) {
  // The timeout is a backstop only: a child's exit arrives as SIGCHLD.
  constexpr absl::Duration kBackstop = absl::Seconds(1);
  while (true) {
    // First: a stop asked for while children were exiting must not restart them.
    if (const int signo = signals.Wait(absl::ZeroDuration()); signo != 0) return signo;
    for (const ChildExit& exit : Reap()) {
      for (const std::unique_ptr<Child>& child : children_) {
        if (child->spec.name != exit.name) continue;
        OnUnexpectedExit(*child, absl::Now() - exit.uptime,
                         absl::StrCat("(pid ", exit.pid, ") ", exit.Describe()));
      }
    }
    RestartDue();
    if (!give_ups_.empty()) {
      std::string message = std::move(give_ups_.front());
      give_ups_.pop_front();
      return absl::AbortedError(message);
    }
    absl::Time next = absl::Now() + kBackstop;
    for (const std::unique_ptr<Child>& child : children_) next = std::min(next, child->restart_at);
    if (const int signo = signals.Wait(next - absl::Now()); signo != 0) return signo;
  }
}

void Supervisor::Stop(const std::function<bool()>& hurry) {
  // Nothing is restarted from here on, not even a restart that was due.
  for (const std::unique_ptr<Child>& child : children_) child->restart_at = absl::InfiniteFuture();
  Reap();
  auto live = [](const Child& c) { return c.process != nullptr && !c.process->exited; };
  std::set<int> orders;
  for (const std::unique_ptr<Child>& child : children_) {
    if (live(*child)) orders.insert(child->spec.stop_order);
  }
  const absl::Time deadline = absl::Now() + options_.stop_timeout;
  bool hurried = false;
  for (int order : orders) {
    auto in_group = [&](const Child& c) { return live(c) && c.spec.stop_order == order; };
    for (const std::unique_ptr<Child>& child : children_) {
      if (in_group(*child)) {
        spdlog::debug("supervisor: stopping {} (pid {})", child->spec.name, child->process->pid);
        SignalGroup(child->process->pid, SIGTERM);
      }
    }
    const absl::Time group_deadline =
        std::max(deadline, absl::Now() + std::min(kMinGroupGrace, options_.stop_timeout));
    while (true) {
      Reap();
      const bool left = std::any_of(children_.begin(), children_.end(),
                                    [&](const std::unique_ptr<Child>& c) { return in_group(*c); });
      if (!left) break;
      hurried = hurried || (hurry && hurry());
      if (hurried || absl::Now() >= group_deadline) {
        for (const std::unique_ptr<Child>& child : children_) {
          if (!in_group(*child)) continue;
          if (!hurried) {
            spdlog::warn("{} (pid {}) did not stop within {} of SIGTERM; killing it",
                         child->spec.name, child->process->pid,
                         absl::FormatDuration(options_.stop_timeout));
          }
          SignalGroup(child->process->pid, SIGKILL);
        }
        // SIGKILL cannot be caught: waiting now is bounded.
        for (const std::unique_ptr<Child>& child : children_) {
          if (!in_group(*child)) continue;
          while (!Exited(child->process->pid)) absl::SleepFor(kPollInterval);
        }
        continue;  // Reap() them above
      }
      absl::SleepFor(kPollInterval);
    }
  }
  JoinForwarders();
}

void Supervisor::Retire(Process& process, absl::Time drain_deadline) {
  if (!process.forwarder.joinable()) return;
  process.forwarder_done.WaitForNotificationWithTimeout(
      std::max(drain_deadline - absl::Now(), absl::ZeroDuration()));
  process.abandon_output = true;
  process.forwarder.join();
  close(process.out_fd);
  process.out_fd = -1;
}

void Supervisor::JoinForwarders() {
  const absl::Time deadline = absl::Now() + kOutputDrain;
  for (const std::unique_ptr<Child>& child : children_) {
    if (child->process != nullptr) Retire(*child->process, deadline);
  }
}

// ---- probes -----------------------------------------------------------------------------------

absl::StatusOr<int> HttpGetStatus(const std::string& host, int port, const std::string& path,
                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = Connect(host, port, deadline);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port));
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", host, ":", port,
                                           "\r\nConnection: close\r\n\r\n");
  std::string reply;
  const bool ok = Exchange(fd, request, deadline, &reply, [](const std::string& r) {
    return r.find("\r\n") != std::string::npos;
  });
  close(fd);
  // "HTTP/1.1 200 OK"
  std::vector<absl::string_view> words =
      absl::StrSplit(absl::string_view(reply).substr(0, reply.find("\r\n")), ' ');
  int status = 0;
  if (!ok || words.size() < 2 || !absl::StartsWith(words[0], "HTTP/") ||
      !absl::SimpleAtoi(words[1], &status)) {
    return absl::UnavailableError(absl::StrCat("no HTTP reply from ", host, ":", port, path));
  }
  return status;
}

bool RedisPings(const std::string& host, int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = Connect(host, port, deadline);
  if (fd < 0) return false;
  std::string reply;
  const bool ok = Exchange(fd, "PING\r\n", deadline, &reply, [](const std::string& r) {
    return r.find("\r\n") != std::string::npos;
  });
  close(fd);
  return ok && absl::StartsWith(reply, "+PONG\r\n");
}

absl::Status CheckPortFree(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (const int rc = getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  absl::Status status = absl::OkStatus();
  const int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  const int one = 1;
  if (fd < 0) {
    status = absl::InternalError(absl::StrCat("socket: ", ErrnoText(errno)));
  } else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
             bind(fd, found->ai_addr, found->ai_addrlen) != 0) {
    const int err = errno;
    status = absl::UnavailableError(absl::StrCat(host, ":", port,
                                                 err == EADDRINUSE ? " is already in use" : ": ",
                                                 err == EADDRINUSE ? "" : ErrnoText(err)));
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(found);
  return status;
}

std::string ConnectHost(const std::string& host) {
  if (host == "0.0.0.0") return "127.0.0.1";
  if (host == "::" || host == "[::]") return "::1";
  return host;
}

absl::StatusOr<std::string> SelfExecutable() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0)
    return absl::InternalError(absl::StrCat("readlink /proc/self/exe: ", ErrnoText(errno)));
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace strata::cli
