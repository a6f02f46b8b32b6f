#include "bench/kv_transfer_bench.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/report.h"
#include "common/status.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"
#include "transport/transport.h"

extern char** environ;

namespace strata::bench {
namespace {

using transport::Endpoint;
using transport::RemoteRegion;
using transport::Transport;

constexpr absl::Duration kPeerDeadline = absl::Seconds(60);
constexpr absl::Duration kPerftestDeadline = absl::Minutes(5);

// ---- a pipe carrying length-prefixed frames (addresses and keys are binary) ---------------------

absl::Status WriteFrame(int fd, const std::string& data) {
  const uint32_t len = static_cast<uint32_t>(data.size());
  std::string out(reinterpret_cast<const char*>(&len), sizeof(len));
  out += data;
  for (size_t done = 0; done < out.size();) {
    const ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n <= 0)
      return absl::UnavailableError(
          absl::StrCat("write to the peer process: ", std::strerror(errno)));
    done += n;
  }
  return absl::OkStatus();
}

absl::Status ReadExactly(int fd, char* p, size_t len, absl::Time deadline) {
  for (size_t done = 0; done < len;) {
    pollfd pfd{.fd = fd, .events = POLLIN, .revents = 0};
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0 || poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1 << 30))) <= 0) {
      return absl::DeadlineExceededError("the peer process did not answer in time");
    }
    const ssize_t n = read(fd, p + done, len - done);
    if (n <= 0) return absl::UnavailableError("the peer process closed its pipe (did it fail?)");
    done += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFrame(int fd, absl::Time deadline) {
  uint32_t len = 0;
  STRATA_RETURN_IF_ERROR(ReadExactly(fd, reinterpret_cast<char*>(&len), sizeof(len), deadline));
  std::string data(len, '\0');
  STRATA_RETURN_IF_ERROR(ReadExactly(fd, data.data(), len, deadline));
  return data;
}

// Whether UCX 1.13 can detect peer failures on these transports (not on shared memory or cma).
bool PeerFailureDetection(const std::string& tls) {
  for (absl::string_view t : absl::StrSplit(tls, ',', absl::SkipEmpty())) {
    if (t != "shm" && t != "sm" && t != "posix" && t != "sysv" && t != "cma" && t != "knem" &&
        t != "xpmem" && t != "self") {
      return true;
    }
  }
  return tls.empty();
}

// ---- the peer process ---------------------------------------------------------------------------

// The forked peer: for each "serve" it creates a transport, registers a buffer and reports its
// address and region; "release" drops them; "quit" (or a closed pipe) ends it.
[[noreturn]] void PeerMain(int in, int out) {
  std::unique_ptr<Transport> transport;
  std::unique_ptr<transport::MemoryRegistration> registration;
  auto fail = [&](const absl::Status& status) {
    (void)WriteFrame(out, absl::StrCat("error ", status.ToString()));
  };
  for (;;) {
    absl::StatusOr<std::string> command = ReadFrame(in, absl::InfiniteFuture());
    if (!command.ok() || *command == "quit") break;
    std::vector<std::string> words = absl::StrSplit(*command, '\n');
    if (words.size() == 4 && words[0] == "serve") {
      int64_t bytes = 0;
      if (!absl::SimpleAtoi(words[3], &bytes) || bytes <= 0) {
        fail(absl::InvalidArgumentError("bad size"));
        continue;
      }
      absl::StatusOr<std::unique_ptr<Transport>> made = transport::MakeUcxTransport(
          {.transports = words[1], .peer_failure_detection = words[2] == "1"});
      if (!made.ok()) {
        fail(made.status());
        continue;
      }
      transport = *std::move(made);
      // Allocated by the transport, as a decode worker's KV pool is: on one host UCX places it in
      // shared memory the sender maps.
      absl::StatusOr<std::unique_ptr<transport::MemoryRegistration>> reg =
          transport->Allocate(bytes);
      if (!reg.ok()) {
        fail(reg.status());
        continue;
      }
      registration = *std::move(reg);
      const RemoteRegion region = registration->Describe();
      (void)WriteFrame(out, absl::StrCat("ok\n", region.address, "\n", region.length));
      (void)WriteFrame(out, transport->address());
      (void)WriteFrame(out, region.key);
    } else if (words[0] == "release") {
      registration.reset();
      transport.reset();
      (void)WriteFrame(out, "released");
    }
  }
  registration.reset();
  transport.reset();
  _exit(0);
}

class PeerProcess {
 public:
  ~PeerProcess() {
    if (pid_ > 0) {
      (void)WriteFrame(to_, "quit");
      // Give it the deadline to leave cleanly, then make sure it is gone.
      const absl::Time deadline = absl::Now() + kPeerDeadline;
      while (waitpid(pid_, nullptr, WNOHANG) == 0) {
        if (absl::Now() > deadline) {
          kill(pid_, SIGKILL);
          waitpid(pid_, nullptr, 0);
          break;
        }
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    if (to_ >= 0) close(to_);
    if (from_ >= 0) close(from_);
  }

  absl::Status Start() {
    int down[2], up[2];
    if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
    }
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
    if (pid_ == 0) {
      close(down[1]);
      close(up[0]);
      PeerMain(down[0], up[1]);
    }
    close(down[0]);
    close(up[1]);
    to_ = down[1];
    from_ = up[0];
    return absl::OkStatus();
  }

  struct Served {
    std::string address;
    RemoteRegion region;
  };

  absl::StatusOr<Served> Serve(const std::string& tls, bool detection, int64_t bytes) {
    STRATA_RETURN_IF_ERROR(
        WriteFrame(to_, absl::StrCat("serve\n", tls, "\n", detection ? 1 : 0, "\n", bytes)));
    const absl::Time deadline = absl::Now() + kPeerDeadline;
    STRATA_ASSIGN_OR_RETURN(std::string head, ReadFrame(from_, deadline));
    std::vector<std::string> words = absl::StrSplit(head, '\n');
    if (words.size() != 3 || words[0] != "ok")
      return absl::InternalError(absl::StrCat("peer process: ", head));
    Served served;
    if (!absl::SimpleAtoi(words[1], &served.region.address) ||
        !absl::SimpleAtoi(words[2], &served.region.length)) {
      return absl::InternalError(absl::StrCat("peer process sent a bad region: ", head));
    }
    STRATA_ASSIGN_OR_RETURN(served.address, ReadFrame(from_, deadline));
    STRATA_ASSIGN_OR_RETURN(served.region.key, ReadFrame(from_, deadline));
    return served;
  }

  absl::Status Release() {
    STRATA_RETURN_IF_ERROR(WriteFrame(to_, "release"));
    return ReadFrame(from_, absl::Now() + kPeerDeadline).status();
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
};

// ---- the stream of puts -------------------------------------------------------------------------

// Puts `count` messages of `size` bytes, keeping up to `window` in flight, then flushes; returns
// seconds from the first put to the flush's completion. Put i reads and writes slot i % slots.
// The puts go as a worker issues a layer's blocks: PutMany calls of window / 2 puts each, two in
// flight, each refilled as soon as it completes.
absl::StatusOr<double> StreamPuts(Endpoint& ep, const char* src, const RemoteRegion& region,
                                  int64_t size, int64_t count, int window, int64_t slots) {
  absl::Mutex mu;
  int64_t in_flight = 0;
  absl::Status first_error;
  const int64_t batch = std::max(1, window / 2);
  std::vector<transport::PutSpan> spans;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < count;) {
    const int64_t n = std::min(batch, count - i);
    {
      absl::MutexLock lock(&mu);
      auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return in_flight + n <= window; };
      mu.Await(absl::Condition(&room));
      if (!first_error.ok()) break;
      in_flight += n;
    }
    spans.clear();
    for (int64_t j = i; j < i + n; ++j) {
      const int64_t slot = (j % slots) * size;
      spans.push_back({src + slot, static_cast<size_t>(size), static_cast<uint64_t>(slot)});
    }
    ep.PutMany(spans, region, [&, n](absl::Status status) {
      absl::MutexLock lock(&mu);
      in_flight -= n;
      if (!status.ok() && first_error.ok()) first_error = std::move(status);
    });
    i += n;
  }
  {
    absl::MutexLock lock(&mu);
    auto drained = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return in_flight == 0; };
    mu.Await(absl::Condition(&drained));
    STRATA_RETURN_IF_ERROR(first_error);
  }
  STRATA_RETURN_IF_ERROR(transport::FlushSync(ep));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---- ucx_perftest -------------------------------------------------------------------------------

absl::StatusOr<int> FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("find a free port: ", std::strerror(errno)));
  return ntohs(addr.sin_port);
}

// Whether something listens on TCP `port` (IPv4 or IPv6), from /proc/net/tcp{,6}.
bool Listening(int port) {
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      const size_t colon = local.rfind(':');
      if (colon != std::string::npos && state == "0A" &&
          std::strtol(local.c_str() + colon + 1, nullptr, 16) == port) {
        return true;
      }
    }
  }
  return false;
}

// Starts `argv` with UCX_TLS=`tls` added to the environment; its stdout goes to `out_fd` (-1: to
// /dev/null).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& tls,
                            int out_fd) {
  std::vector<std::string> env_strings = {absl::StrCat("UCX_TLS=", tls)};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "UCX_TLS=", 8) != 0) env_strings.push_back(*e);
  }
  std::vector<char*> env, args;
  for (std::string& s : env_strings) env.push_back(s.data());
  env.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (out_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid = -1;
  const int err = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0)
    return absl::FailedPreconditionError(absl::StrCat("start ", argv[0], ": ", std::strerror(err)));
  return pid;
}

// Waits for `pid` until `deadline`, then kills it. Returns its exit status (-1 when killed).
int Reap(pid_t pid, absl::Time deadline) {
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (done < 0) return -1;
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// The overall bandwidth of the "Final:" line of ucx_perftest's table, in bytes/s. Its columns:
// iterations, latency percentile, average and overall overhead (usec), average and overall
// bandwidth (MB/s, where MB = 2^20 bytes), average and overall message rate.
absl::StatusOr<double> ParsePerftest(const std::string& output) {
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (!absl::ConsumePrefix(&line, "Final:")) continue;
    std::vector<absl::string_view> columns = absl::StrSplit(line, ' ', absl::SkipEmpty());
    double mb_s = 0;
    if (columns.size() >= 6 && absl::SimpleAtod(columns[5], &mb_s)) return mb_s * 1024 * 1024;
  }
  return absl::InternalError(
      absl::StrCat("no \"Final:\" bandwidth in ucx_perftest's output:\n", output));
}

absl::StatusOr<double> RunPerftest(const std::string& perftest, const std::string& tls,
                                   int64_t size, int64_t iterations, const std::string& test = "ucp_put_bw") {
  STRATA_ASSIGN_OR_RETURN(int port, FreePort());
  const absl::Time deadline = absl::Now() + kPerftestDeadline;
  STRATA_ASSIGN_OR_RETURN(pid_t server, Spawn({perftest, "-p", absl::StrCat(port)}, tls, -1));
  while (!Listening(port)) {
    if (absl::Now() > deadline || waitpid(server, nullptr, WNOHANG) == server) {
      kill(server, SIGKILL);
      waitpid(server, nullptr, 0);
      return absl::UnavailableError(
          absl::StrCat(perftest, " server did not start listening on port ", port));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe");
  absl::StatusOr<pid_t> client =
      Spawn({perftest, "127.0.0.1", "-p", absl::StrCat(port), "-t", test, "-s",
             absl::StrCat(size), "-n", absl::StrCat(iterations), "-w",
             absl::StrCat(std::max<int64_t>(iterations / 10, 1))},
            tls, out[1]);
  close(out[1]);
  std::string output;
  if (client.ok()) {
    char buf[4096];
    for (;;) {
      pollfd pfd{.fd = out[0], .events = POLLIN, .revents = 0};
      const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left_ms <= 0 || poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1 << 30))) <= 0)
        break;
      const ssize_t n = read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      output.append(buf, n);
    }
  }
  close(out[0]);
  const int client_exit = client.ok() ? Reap(*client, deadline) : -1;
  Reap(server, deadline);
  STRATA_RETURN_IF_ERROR(client.status());
  if (client_exit != 0) {
    return absl::InternalError(
        absl::StrCat(perftest, " client failed (exit ", client_exit, "):\n", output));
  }
  return ParsePerftest(output);
}

// ---- the benchmark ------------------------------------------------------------------------------

std::string SizeName(int64_t size) {
  if (size % (1 << 20) == 0) return absl::StrCat(size >> 20, "MiB");
  if (size % (1 << 10) == 0) return absl::StrCat(size >> 10, "KiB");
  return absl::StrCat(size, "B");
}

// Seconds a plain memcpy takes for the walk StreamPuts(…, slots) makes: what moving those bytes
// costs this machine's memory with no transport at all.
double CopyWalkSeconds(const char* src, char* dst, int64_t size, int64_t count, int64_t slots) {
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t slot = (i % slots) * size;
    std::memcpy(dst + slot, src + slot, static_cast<size_t>(size));
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Two figures per size. "kv_put" repeats ucx_perftest's access pattern (every put from the same
// buffer into the same remote buffer, so both stay in cache) and is held to 80% of perftest's
// figure: the transports' own cost, like for like. "kv_stream" walks a 64 MiB pool, as KV blocks
// going out of a real cache do, so memory bandwidth bounds it too (perftest has no such mode): it
// is held to 80% of the lower of perftest's figure and a local memcpy making the same walk.
absl::Status RunTransports(PeerProcess& peer, const KvTransferBenchOptions& o,
                           const std::string& tls, const std::vector<int64_t>& sizes,
                           int64_t max_size) {
  const bool detection = PeerFailureDetection(tls);
  const int64_t pool = std::max<int64_t>(max_size * o.window, int64_t{64} << 20);
  STRATA_ASSIGN_OR_RETURN(PeerProcess::Served served, peer.Serve(tls, detection, pool));
  absl::Status status = [&]() -> absl::Status {
    STRATA_ASSIGN_OR_RETURN(
        std::unique_ptr<Transport> t,
        transport::MakeUcxTransport({.transports = tls, .peer_failure_detection = detection}));
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<transport::MemoryRegistration> registration,
                            t->Allocate(pool));
    char* src = reinterpret_cast<char*>(registration->Describe().address);
    for (int64_t i = 0; i < pool; ++i) src[i] = static_cast<char>(i * 131 + 7);
    std::vector<char> copy_target(static_cast<size_t>(pool), 1);
    STRATA_ASSIGN_OR_RETURN(std::shared_ptr<Endpoint> ep, t->Connect(served.address));
    for (int64_t size : sizes) {
      const int64_t count = std::max<int64_t>(o.total_bytes / size, 2 * o.window);
      const int64_t slots = pool / size;
      // Warm-up: connections, registrations, caches, and every page of both pools touched once
      // (first touches of the peer's shared memory are page faults, not transfer).
      STRATA_RETURN_IF_ERROR(StreamPuts(*ep, src, served.region, size,
                                        std::max<int64_t>(count / 10, slots), o.window, slots)
                                 .status());
      STRATA_ASSIGN_OR_RETURN(double same_s,
                              StreamPuts(*ep, src, served.region, size, count, o.window, 1));
      STRATA_ASSIGN_OR_RETURN(double stream_s,
                              StreamPuts(*ep, src, served.region, size, count, o.window, slots));
      const double bytes = static_cast<double>(count * size);
      const double copy_s = CopyWalkSeconds(src, copy_target.data(), size, count, slots);
      absl::StatusOr<double> reference = RunPerftest(o.perftest, tls, size, count);
      const std::string label = absl::StrCat(tls.empty() ? "default" : tls, "_", SizeName(size));
      if (!reference.ok()) {
        std::printf("kv_put_%s: %.3g GB/s, kv_stream_%s: %.3g GB/s (ucx_perftest failed: %s)\n",
                    label.c_str(), bytes / same_s / 1e9, label.c_str(), bytes / stream_s / 1e9,
                    std::string(reference.status().message()).c_str());
        continue;
      }
      std::printf("%s: ucx_perftest ucp_put_bw UCX_TLS=%s -s %lld -n %lld: %.3g GB/s%s\n",
                  label.c_str(), tls.c_str(), static_cast<long long>(size),
                  static_cast<long long>(count), *reference / 1e9,
                  detection
                      ? ""
                      : "  (our endpoints without peer-failure detection: UCX 1.13 has none here)");
      Report({absl::StrCat("kv_put_", label), bytes / same_s / 1e9, "GB/s", 0.8 * *reference / 1e9},
             "kv_transfer");
      std::printf("%s: memcpy of the same walk through %lld MiB: %.3g GB/s\n", label.c_str(),
                  static_cast<long long>(pool >> 20), bytes / copy_s / 1e9);
      Report({absl::StrCat("kv_stream_", label), bytes / stream_s / 1e9, "GB/s",
              0.8 * std::min(*reference, bytes / copy_s) / 1e9},
             "kv_transfer");
    }
    return absl::OkStatus();
  }();
  STRATA_RETURN_IF_ERROR(peer.Release());
  return Annotate(status, absl::StrCat("UCX_TLS=", tls));
}

}  // namespace

absl::Status RunKvTransferBench(const KvTransferBenchOptions& options) {
  KvTransferBenchOptions o = options;
  if (o.window < 1) return absl::InvalidArgumentError("--window must be at least 1");
  if (o.sizes.empty()) {
    STRATA_ASSIGN_OR_RETURN(engine::ModelConfig small, engine::PresetConfig("small"));
    o.sizes = {64 << 10, 1 << 20, engine::KvLayout(small).block_bytes()};
  }
  int64_t max_size = 0;
  for (int64_t size : o.sizes) {
    if (size <= 0) return absl::InvalidArgumentError(absl::StrCat("bad message size ", size));
    max_size = std::max(max_size, size);
  }
  std::printf(
      "kv-transfer: sizes %s, %s per case, %d puts in flight\n",
      absl::StrJoin(o.sizes, ", ", [](std::string* out, int64_t s) { out->append(SizeName(s)); })
          .c_str(),
      SizeName(o.total_bytes).c_str(), o.window);
  PeerProcess peer;
  STRATA_RETURN_IF_ERROR(peer.Start());  // before this process touches UCX
  for (const std::string& tls : o.transports)
    STRATA_RETURN_IF_ERROR(RunTransports(peer, o, tls, o.sizes, max_size));
  return absl::OkStatus();
}

absl::StatusOr<double> RunUcxPerftest(const std::string& perftest, const std::string& tls, const std::string& test,
                                      int64_t size, int64_t iterations) {
  return RunPerftest(perftest, tls, size, iterations, test);
}

}  // namespace strata::bench
