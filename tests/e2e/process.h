// Child processes for end-to-end tests: start a command with its output in a log file, wait for
// an HTTP endpoint, stop it (SIGTERM, then SIGKILL) and reap it. Test use only.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/unit/common/http_test_client.h"

namespace strata::testing {

// `count` consecutive free ports starting at the returned one (checked, best effort), below the
// kernel's ephemeral range: a port there, free when checked, can be taken by any outgoing
// connection (another test's gRPC client) before the worker that was meant to listen on it starts.
inline int FreePortRange(int count) {
  int ephemeral_low = 32768;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d", &ephemeral_low) != 1) ephemeral_low = 32768;
    std::fclose(f);
  }
  const int low = 10000, span = std::max(ephemeral_low - count - low, 1000);
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int base = low + static_cast<int>((::getpid() * 7919 + attempt * 104729) % span);
    bool ok = true;
    for (int i = 0; i < count && ok; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(base + i));
      ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      ::close(fd);
    }
    if (ok) return base;
  }
  return 0;
}

// A test's folder is removed at its end, unless STRATA_E2E_KEEP is set (then its path is printed,
// for a post-mortem of the model, the cluster file and every process's log).
inline void RemoveTestDir(const std::string& dir) {
  if (std::getenv("STRATA_E2E_KEEP") != nullptr) {
    std::fprintf(stderr, "kept %s\n", dir.c_str());
    return;
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { Stop(); }

  bool Start(const std::vector<std::string>& argv, const std::string& log_path) {
    log_ = log_path;
    pid_ = ::fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
    return true;
  }

  // Polls http://127.0.0.1:port/healthz until 200, the process exits, or the deadline.
  bool WaitHealthy(int port, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (!Running()) return false;
      auto c = TestConnection::Connect(static_cast<uint16_t>(port));
      if (c && c->Send(MakeRequest("GET", "/healthz"))) {
        auto r = c->ReadResponse(absl::Seconds(2));
        if (r && r->status == 200) return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // SIGTERM, wait up to `grace`, then SIGKILL; returns the wait status.
  int Stop(absl::Duration grace = absl::Seconds(15)) {
    if (pid_ <= 0) return exit_status_;
    ::kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    while (absl::Now() < deadline) {
      if (!Running()) return exit_status_;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &exit_status_, 0);
    pid_ = -1;
    return exit_status_;
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &exit_status_, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  std::string Log() const { return ReadWholeFile(log_); }

 private:
  pid_t pid_ = -1;
  int exit_status_ = 0;
  std::string log_;
};

}  // namespace strata::testing
