// Chaos: a whole cluster under `strata up` (private Redis, the router, 2 prefill and 2 decode
// workers) serves a steady load of streamed greedy completions from several client threads while
// its processes are SIGKILLed one at a time — prefill-0, decode-0, Redis, prefill-1, decode-1 —
// each after the cluster has recovered from the one before. What a user of the API relies on:
//  - every request a client sends ends in exactly one way: completed (a finish_reason, the usage
//    chunk, [DONE]) or a clean OpenAI error (a 4xx/5xx JSON error, or an error event and [DONE]);
//    never a hang (no byte, not even a keep-alive, for 30 s), a cut or malformed stream;
//  - a completed answer is the greedy answer of `strata generate` for its prompt, also when the
//    request moved to another decode worker or prefill worker mid-way;
//  - the supervisor restarts the killed process and the cluster is whole again (the process back,
//    registered, in the router's view, requests through it completing) within kRecoveryBound;
//  - nothing else dies meanwhile, no KV block stays taken once the load stops, and `strata up`
//    stops cleanly at the end.
// It prints a table, a row per fault: requests in flight at the kill, requests the router moved
// (to another decode worker, or past a failed prefill worker), the outcomes of the requests that
// ended after the kill (until the next one), and the times from the kill until a request sent
// after it completed (first-ok), until the process was back (its /healthz, or Redis's PING), until
// it was back in the router's view (its "joined" line; for Redis: every service registered again
// and the router seeing 2+2), until a request sent after that completed (recovered), and how long
// the router's /healthz answered anything but 200 (unready).
//
// STRATA_CHAOS_ROUNDS=N runs the sequence N times (default 1: about 25 s on 2 cores), e.g.
//   STRATA_CHAOS_ROUNDS=10 ctest --test-dir build -L chaos --output-on-failure -V
// STRATA_CHAOS_FAULTS=decode-0+decode-1,redis,... picks the faults (see Faults()).
// STRATA_E2E_KEEP=1 keeps the folder with the model, cluster file and strata up's log.
//
// Needs STRATA_BIN (the strata binary) and STRATA_TOKENIZER_DIR in the environment (ctest sets
// both), and redis-server on PATH.
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/chaos_client.h"
#include "tests/e2e/process.h"

namespace strata::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kKey[] = "sk-chaos-test";
constexpr char kModel[] = "strata-chaos";
constexpr int kClients = 4;
// A silent stream this long is hung (the router and the decode worker send keep-alives every 2 s).
constexpr absl::Duration kIdle = absl::Seconds(30);
// No request of at most 64 tokens may take longer, keep-alives or not (a retry waits at most 20 s
// for a decode worker).
constexpr absl::Duration kRequestLimit = absl::Seconds(120);
// From a kill until the cluster is whole again. A restart takes the supervisor's 0.5-1 s backoff,
// a second to load the tiny model and one to register; the rest is slack for a loaded machine.
constexpr absl::Duration kRecoveryBound = absl::Seconds(60);

std::string Strata() {
  const char* bin = std::getenv("STRATA_BIN");
  return bin != nullptr ? bin : "strata";
}

int Rounds() {
  const char* v = std::getenv("STRATA_CHAOS_ROUNDS");
  int n = 1;
  return v != nullptr && absl::SimpleAtoi(v, &n) && n > 0 ? n : 1;
}

// The faults, in order: STRATA_CHAOS_FAULTS, comma-separated; each the name of a process to kill
// (redis, router, prefill-0, prefill-1, decode-0, decode-1) or several joined by '+', killed at
// once. By default each process but the router, whose death cuts every stream through it (no
// client of a single router can be spared that).
std::vector<std::string> Faults() {
  const char* v = std::getenv("STRATA_CHAOS_FAULTS");
  if (v == nullptr || *v == '\0')
    return {"prefill-0", "decode-0", "redis", "prefill-1", "decode-1"};
  return absl::StrSplit(v, ',', absl::SkipEmpty());
}

double Secs(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// Polls `done` every 50 ms until it holds or `deadline` passes; whether it held.
template <typename F>
bool WaitUntil(absl::Time deadline, F done) {
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return true;
}

// Deterministic token ids in the tokenizer's ordinary range.
std::vector<int32_t> Ids(int n, uint64_t seed) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(static_cast<int32_t>(1000 + (seed >> 33) % 60000));
  }
  return ids;
}

// ---- the cluster's processes -------------------------------------------------------------------

struct Layout {
  int redis, http, grpc, prefill, decode;  // prefill/decode: base ports (worker i: +2i, +2i+1)
  int WorkerHttp(const std::string& role, int index) const {
    return (role == "prefill" ? prefill : decode) + 2 * index + 1;
  }
};

std::string ClusterYaml(const std::string& cluster, const Layout& l) {
  // Restarts allowed generously (a long run kills each process every 15 s or so), and short
  // backoffs: the test measures recovery, not the supervisor's patience.
  return absl::StrFormat(R"(cluster: %s
model_name: %s
redis: ""
redis_port: %d
transport: ucx
router:
  host: 127.0.0.1
  http_port: %d
  grpc_port: %d
  policy: least_load
  max_attempts: 3
  api_keys:
    - {key: %s, tenant: chaos}
prefill:
  count: 2
  host: 127.0.0.1
  base_port: %d
  threads: 1
  kv_blocks: 128
decode:
  count: 2
  host: 127.0.0.1
  base_port: %d
  threads: 1
  kv_blocks: 256
supervise:
  max_restarts: 20
  window_s: 60
  backoff_s: 0.5
  max_backoff_s: 2
  reset_after_s: 10
)",
                         cluster, kModel, l.redis, l.http, l.grpc, kKey, l.prefill, l.decode);
}

// A raw Redis command (inline form: no quoting needed for ours); the reply's first line ("+PONG",
// "*5" for an array of 5), or "" without one within a second.
std::string RedisCall(int port, const std::string& command) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  const std::string bytes = command + "\r\n";
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    char buf[4096];
    pollfd p{fd, POLLIN, 0};
    while (reply.find("\r\n") == std::string::npos && ::poll(&p, 1, 1000) > 0) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      reply.append(buf, static_cast<size_t>(n));
    }
  }
  if (fd >= 0) ::close(fd);
  const size_t eol = reply.find("\r\n");
  return eol == std::string::npos ? "" : reply.substr(0, eol);
}

// GET http://127.0.0.1:port`path`: the status (0 without an answer) and the body.
std::pair<int, std::string> HttpGet(int port, const std::string& path) {
  auto c = TestConnection::Connect(static_cast<uint16_t>(port));
  if (!c || !c->Send(MakeRequest("GET", path))) return {0, ""};
  std::optional<TestResponse> r = c->ReadResponse(absl::Seconds(2));
  if (!r) return {0, ""};
  return {r->status, r->body};
}

// The value of a metric's series (the line starting with `series`); -1 if absent.
double Metric(int port, const std::string& series) {
  auto [status, body] = HttpGet(port, "/metrics");
  if (status != 200) return -1;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    double v;
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ") &&
        absl::SimpleAtod(line, &v))
      return v;
  }
  return -1;
}

// `strata up` with its log, and its children found in /proc by parent pid.
class Cluster {
 public:
  Cluster(std::string dir, std::string config, std::string model)
      : dir_(dir), config_(config), model_(model) {}

  bool Start() {
    log_ = dir_ + "/up.log";
    if (!up_.Start({"env", absl::StrCat("TMPDIR=", dir_), Strata(), "up", "--config", config_,
                    "--model", model_, "--stop-timeout", "10"},
                   log_)) {
      return false;
    }
    return WaitUntil(absl::Now() + absl::Seconds(120),
                     [&] { return !up_.Running() || absl::StrContains(Log(), "is ready"); }) &&
           up_.Running();
  }

  // SIGTERM; true if strata up exited 0 within `grace`.
  bool Stop(absl::Duration grace) {
    up_.Signal(SIGTERM);
    if (!WaitUntil(absl::Now() + grace, [&] { return !up_.Running(); })) {
      up_.Kill();
      return false;
    }
    const int status = up_.Stop();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  std::string Log() const { return ReadWholeFile(log_); }

  // strata up's children by name (redis, router, prefill-0, ...), from /proc.
  std::map<std::string, pid_t> Children() const {
    std::map<std::string, pid_t> out;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      pid_t pid = 0;
      if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
      const std::string stat = ReadWholeFile(entry.path().string() + "/stat");
      const size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
      pid_t ppid = 0;
      if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &ppid) || ppid != up_.pid()) continue;
      if (fields[0] == "Z") continue;  // dead, not yet reaped
      std::vector<std::string> argv =
          absl::StrSplit(ReadWholeFile(entry.path().string() + "/cmdline"), '\0');
      if (argv.empty()) continue;
      if (absl::StrContains(argv[0], "redis-server")) {
        out["redis"] = pid;
        continue;
      }
      std::string role, index;
      for (size_t i = 0; i < argv.size(); ++i) {
        if (argv[i] == "router" || argv[i] == "prefill" || argv[i] == "decode") role = argv[i];
        if (argv[i] == "--index" && i + 1 < argv.size()) index = argv[i + 1];
      }
      if (role == "router") out["router"] = pid;
      if ((role == "prefill" || role == "decode") && !index.empty())
        out[absl::StrCat(role, "-", index)] = pid;
    }
    return out;
  }

 private:
  std::string dir_, config_, model_, log_;
  ChildProcess up_;
};

// ---- the load --------------------------------------------------------------------------------

struct Prompt {
  std::vector<int32_t> ids;
  int max_tokens;
  std::string reference;  // strata generate's greedy answer
};

struct Record {
  int client, prompt;
  StreamResult result;
};

// kClients threads, each sending one streamed greedy completion after the other (after a clean
// error it pauses 200 ms, as a client backing off would).
class Load {
 public:
  Load(int port, const std::vector<Prompt>& prompts) : port_(port), prompts_(prompts) {}
  ~Load() { Stop(); }

  void Start() {
    for (int c = 0; c < kClients; ++c) {
      threads_.emplace_back([this, c] {
        for (int n = 0; !stop_.load(); ++n) {
          const int p = (c + n) % static_cast<int>(prompts_.size());
          const json body = {{"model", kModel},
                             {"prompt", prompts_[static_cast<size_t>(p)].ids},
                             {"max_tokens", prompts_[static_cast<size_t>(p)].max_tokens},
                             {"temperature", 0},
                             {"ignore_eos", true},
                             {"stream", true},
                             {"stream_options", {{"include_usage", true}}}};
          StreamResult r =
              StreamOnce(port_, "/v1/completions", kKey, body.dump(), kIdle, kRequestLimit);
          const bool ok = r.outcome == Outcome::kCompleted;
          {
            absl::MutexLock lock(&mu_);
            records_.push_back({c, p, std::move(r)});
          }
          if (!ok) absl::SleepFor(absl::Milliseconds(200));
        }
      });
    }
  }

  // No new requests; waits for those in flight (each ends within kRequestLimit).
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  std::vector<Record> Records() const {
    absl::MutexLock lock(&mu_);
    return records_;
  }

  // The end of the first request sent at or after `t` that completed; InfiniteFuture if none yet.
  absl::Time FirstCompletedAfter(absl::Time t) const {
    absl::MutexLock lock(&mu_);
    absl::Time first = absl::InfiniteFuture();
    for (const Record& r : records_) {
      if (r.result.start >= t && r.result.outcome == Outcome::kCompleted)
        first = std::min(first, r.result.end);
    }
    return first;
  }

  int CompletedSince(absl::Time t) const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(std::count_if(records_.begin(), records_.end(), [&](const Record& r) {
      return r.result.start >= t && r.result.outcome == Outcome::kCompleted;
    }));
  }

 private:
  const int port_;
  const std::vector<Prompt>& prompts_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  mutable absl::Mutex mu_;
  std::vector<Record> records_ ABSL_GUARDED_BY(mu_);
};

// The router's /healthz every 100 ms.
class HealthProbe {
 public:
  explicit HealthProbe(int port)
      : thread_([this, port] {
          while (!stop_.load()) {
            const int status = HttpGet(port, "/healthz").first;
            {
              absl::MutexLock lock(&mu_);
              samples_.emplace_back(absl::Now(), status);
            }
            absl::SleepFor(absl::Milliseconds(100));
          }
        }) {}
  ~HealthProbe() {
    stop_ = true;
    thread_.join();
  }

  // How long /healthz answered anything but 200 within [from, to).
  absl::Duration Unready(absl::Time from, absl::Time to) const {
    absl::MutexLock lock(&mu_);
    absl::Duration total;
    for (size_t i = 0; i + 1 < samples_.size(); ++i) {
      const auto& [t, status] = samples_[i];
      if (status != 200 && t >= from && t < to) total += samples_[i + 1].first - t;
    }
    return total;
  }

 private:
  std::atomic<bool> stop_{false};
  mutable absl::Mutex mu_;
  std::vector<std::pair<absl::Time, int>> samples_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// ---- faults ----------------------------------------------------------------------------------

// One kill and what followed. Times are from the kill; InfiniteDuration: never.
struct FaultRow {
  std::string name;                   // what was killed: "decode-0", or "decode-0+decode-1"
  std::map<std::string, pid_t> pids;  // the processes killed
  absl::Time kill;
  size_t log_at_kill = 0;                               // strata up's log size at the kill
  absl::Duration first_ok = absl::InfiniteDuration();   // a request sent after the kill completed
  absl::Duration restarted = absl::InfiniteDuration();  // the new process answers
  absl::Duration rejoined = absl::InfiniteDuration();   // ... and is in the router's view
  absl::Duration recovered = absl::InfiniteDuration();  // a request sent after that completed
  absl::Duration unready;  // the router's /healthz not 200, until the next kill
  int in_flight = 0, moved = 0, completed = 0, clean_errors = 0, failures = 0;
  std::vector<std::string> samples;  // a few clean errors and every failure
};

class ChaosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "strata_chaos_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    model_ = dir_ + "/model";
    ChildProcess mk;
    ASSERT_TRUE(mk.Start({Strata(), "mkmodel", "--preset", "tiny", "--out", model_, "--seed", "5"},
                         dir_ + "/mkmodel.log"));
    ASSERT_TRUE(WaitUntil(absl::Now() + absl::Seconds(120), [&] { return !mk.Running(); }));
    ASSERT_EQ(mk.Stop(), 0) << mk.Log();
    cluster_name_ = absl::StrCat("chaos", getpid());
    config_ = dir_ + "/cluster.yaml";
  }

  // Starts strata up on free ports; tries other ports if another test took one of them between
  // the check and the start.
  void StartCluster() {
    std::mt19937 random(std::random_device{}());
    for (int attempt = 0;; ++attempt) {
      const int base = FreeBlock(random);
      ASSERT_NE(base, 0) << "no 24 free ports in a row";
      layout_ = {base, base + 1, base + 2, base + 10, base + 20};
      std::ofstream(config_) << ClusterYaml(cluster_name_, layout_);
      cluster_ = std::make_unique<Cluster>(dir_, config_, model_);
      if (cluster_->Start()) return;
      ASSERT_TRUE(attempt < 2 && absl::StrContains(cluster_->Log(), "already in use"))
          << cluster_->Log();
    }
  }

  // The first of 24 consecutive ports free now, in 20000-32767 (below Linux's ephemeral range).
  static int FreeBlock(std::mt19937& random) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      const int base = 20000 + static_cast<int>(random() % 12700);
      bool free = true;
      for (int i = 0; i < 24 && free; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(static_cast<uint16_t>(base + i));
        free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
        ::close(fd);
      }
      if (free) return base;
    }
    return 0;
  }

  void TearDown() override {
    cluster_.reset();  // stops strata up if the test ended early
    RemoveTestDir(dir_);
  }

  // The prompts and their greedy answers from `strata generate` (one process each, in parallel).
  void MakePrompts() {
    const std::vector<std::pair<int, int>> shapes = {{12, 32}, {20, 40}, {28, 56}, {36, 64}};
    std::vector<std::unique_ptr<ChildProcess>> runs;
    for (size_t i = 0; i < shapes.size(); ++i) {
      Prompt p{Ids(shapes[i].first, 100 + i), shapes[i].second, ""};
      const std::string out = absl::StrCat(dir_, "/reference", i);
      runs.push_back(std::make_unique<ChildProcess>());
      ASSERT_TRUE(runs.back()->Start(
          {"sh", "-c", absl::StrCat("exec \"$@\" > ", out, ".out"), "sh", Strata(), "generate",
           "--model", model_, "--prompt-ids", absl::StrJoin(p.ids, " "), "--max-tokens",
           std::to_string(p.max_tokens), "--ignore-eos", "--threads", "1"},
          out + ".err"));
      prompts_.push_back(std::move(p));
    }
    for (size_t i = 0; i < runs.size(); ++i) {
      ASSERT_TRUE(WaitUntil(absl::Now() + absl::Seconds(120), [&] { return !runs[i]->Running(); }));
      ASSERT_EQ(runs[i]->Stop(), 0) << runs[i]->Log();
      std::string text = ReadWholeFile(absl::StrCat(dir_, "/reference", i, ".out"));
      ASSERT_TRUE(!text.empty() && text.back() == '\n');
      text.pop_back();
      prompts_[i].reference = text;
    }
  }

  // Waits until the killed process is back, in the router's view, and serving; fills the row's
  // times. False (with the reason added) if that takes longer than kRecoveryBound.
  bool AwaitRecovery(Cluster& cluster, const Load& load, FaultRow& row) {
    const absl::Time deadline = row.kill + kRecoveryBound;
    std::map<std::string, pid_t> now;  // the processes' new pids
    const bool back = WaitUntil(deadline, [&] {
      now = cluster.Children();
      for (const auto& [name, old] : row.pids) {
        if (now[name] == 0 || now[name] == old || !Answers(name)) return false;
      }
      return true;
    });
    if (!back) {
      row.samples.push_back(absl::StrCat("FAILURE: ", row.name, " not back within ",
                                         absl::FormatDuration(kRecoveryBound)));
      return false;
    }
    row.restarted = absl::Now() - row.kill;
    const bool joined = WaitUntil(deadline, [&] {
      const std::string log = cluster.Log().substr(row.log_at_kill);
      for (const auto& [name, old] : row.pids) {
        if (!InView(name, now[name], log)) return false;
      }
      return true;
    });
    if (!joined) {
      row.samples.push_back(absl::StrCat("FAILURE: ", row.name,
                                         " not back in the router's view within ",
                                         absl::FormatDuration(kRecoveryBound)));
      return false;
    }
    row.rejoined = absl::Now() - row.kill;
    const absl::Time after = absl::Now();
    if (!WaitUntil(deadline,
                   [&] { return load.FirstCompletedAfter(after) != absl::InfiniteFuture(); })) {
      row.samples.push_back(absl::StrCat("FAILURE: no request completed within ",
                                         absl::FormatDuration(kRecoveryBound), " of killing ",
                                         row.name));
      return false;
    }
    row.recovered = load.FirstCompletedAfter(after) - row.kill;
    return true;
  }

  // The restarted process `name` answers: Redis's PING, the router's /livez, a worker's /healthz.
  bool Answers(const std::string& name) const {
    if (name == "redis") return RedisCall(layout_.redis, "PING") == "+PONG";
    if (name == "router") return HttpGet(layout_.http, "/livez").first == 200;
    const std::string role = name.substr(0, name.find('-'));
    return HttpGet(layout_.WorkerHttp(role, name.back() - '0'), "/healthz").first == 200;
  }

  // The restarted process `name` (pid `pid`) is back in the router's view: a worker's "joined"
  // line in strata up's `log` since the kill. Redis came back empty: every service's heartbeat
  // has put its record back and the router sees every worker; a new router sees every worker.
  bool InView(const std::string& name, pid_t pid, const std::string& log) const {
    const bool router_sees_all =
        Metric(layout_.http, "strata_router_live_workers{role=\"prefill\"}") == 2 &&
        Metric(layout_.http, "strata_router_live_workers{role=\"decode\"}") == 2;
    if (name == "redis") {
      return router_sees_all && RedisCall(layout_.redis, absl::StrCat("KEYS strata:", cluster_name_,
                                                                      ":svc:*")) == "*5";
    }
    if (name == "router") return router_sees_all;
    const std::string role = name.substr(0, name.find('-'));
    return absl::StrContains(log, absl::StrCat(role, " worker ", name, "-", pid, " joined"));
  }

  std::string dir_, model_, config_, cluster_name_;
  Layout layout_{};
  std::unique_ptr<Cluster> cluster_;
  std::vector<Prompt> prompts_;
};

// Sorts the records into the rows (a request belongs to the last kill before its end; earlier
// ones to the baseline) and checks each completed answer against its prompt's reference.
void Tally(const std::vector<Record>& records, const std::vector<Prompt>& prompts,
           std::vector<FaultRow>& rows, FaultRow& baseline) {
  for (const Record& rec : records) {
    const StreamResult& r = rec.result;
    FaultRow* row = &baseline;
    for (FaultRow& f : rows) {
      if (f.kill <= r.end) row = &f;
      if (r.start < f.kill && f.kill < r.end) ++f.in_flight;
      if (r.start >= f.kill && r.outcome == Outcome::kCompleted)
        f.first_ok = std::min(f.first_ok, r.end - f.kill);
    }
    const Prompt& p = prompts[static_cast<size_t>(rec.prompt)];
    std::string wrong;
    if (r.outcome == Outcome::kCompleted) {
      if (r.text != p.reference) {
        wrong =
            absl::StrCat("greedy text differs from strata generate's: got '", r.text.substr(0, 60),
                         "...' want '", p.reference.substr(0, 60), "...'");
      } else if (r.finish_reason != "length" || r.completion_tokens != p.max_tokens) {
        wrong = absl::StrCat("finish_reason '", r.finish_reason, "', ", r.completion_tokens,
                             " tokens; want 'length', ", p.max_tokens);
      }
    }
    const std::string when = absl::FormatTime("%H:%M:%E3S", r.start, absl::LocalTimeZone());
    if (r.outcome == Outcome::kFailure || !wrong.empty()) {
      ++row->failures;
      row->samples.push_back(absl::StrCat("FAILURE (client ", rec.client, ", prompt ", rec.prompt,
                                          ", sent ", when, ", ",
                                          absl::StrFormat("%.2f", Secs(r.end - r.start)),
                                          " s): ", wrong.empty() ? r.detail : wrong));
    } else if (r.outcome == Outcome::kCleanError) {
      ++row->clean_errors;
      if (row->samples.size() < 3) {
        row->samples.push_back(
            absl::StrCat("clean error (client ", rec.client, ", sent ", when, "): ", r.detail));
      }
    } else {
      ++row->completed;
    }
  }
}

std::string Cell(absl::Duration d) {
  return d == absl::InfiniteDuration() ? "-" : absl::StrFormat("%.2f", Secs(d));
}

void PrintTable(const FaultRow& baseline, const std::vector<FaultRow>& rows, absl::Duration wall) {
  int width = 10;
  for (const FaultRow& r : rows) width = std::max(width, static_cast<int>(r.name.size()));
  std::string t = absl::StrFormat(
      "\nchaos: %d client threads, streamed greedy completions; times in s from the kill\n",
      kClients);
  absl::StrAppend(
      &t, absl::StrFormat("%-*s %8s %6s %9s %10s %8s %8s %9s %9s %10s %8s\n", width, "fault",
                          "inflight", "moved", "completed", "clean-err", "FAILURES", "first-ok",
                          "restarted", "rejoined", "recovered", "unready"));
  absl::StrAppend(&t,
                  absl::StrFormat("%-*s %8s %6s %9d %10d %8d\n", width, "(before)", "", "",
                                  baseline.completed, baseline.clean_errors, baseline.failures));
  for (const FaultRow& r : rows) {
    absl::StrAppend(&t, absl::StrFormat("%-*s %8d %6d %9d %10d %8d %8s %9s %9s %10s %8.2f\n", width,
                                        r.name, r.in_flight, r.moved, r.completed, r.clean_errors,
                                        r.failures, Cell(r.first_ok), Cell(r.restarted),
                                        Cell(r.rejoined), Cell(r.recovered), Secs(r.unready)));
  }
  absl::StrAppend(&t, absl::StrFormat("wall time %.1f s\n", Secs(wall)));
  for (const FaultRow* r : {&baseline}) {
    for (const std::string& s : r->samples) absl::StrAppend(&t, "  (before) ", s, "\n");
  }
  for (const FaultRow& r : rows) {
    for (const std::string& s : r.samples) absl::StrAppend(&t, "  ", r.name, ": ", s, "\n");
  }
  std::fputs(t.c_str(), stdout);
  std::fflush(stdout);
}

TEST_F(ChaosTest, EveryRequestCompletesOrFailsCleanlyWhileProcessesAreKilled) {
  const absl::Time test_start = absl::Now();
  ASSERT_NO_FATAL_FAILURE(MakePrompts());
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  Cluster& cluster = *cluster_;
  ASSERT_TRUE(WaitUntil(absl::Now() + absl::Seconds(30), [&] {
    return Metric(layout_.http, "strata_router_live_workers{role=\"prefill\"}") == 2 &&
           Metric(layout_.http, "strata_router_live_workers{role=\"decode\"}") == 2;
  })) << cluster.Log();

  HealthProbe health(layout_.http);
  Load load(layout_.http, prompts_);
  load.Start();
  // Steady: every prompt answered at least twice before the first fault.
  ASSERT_TRUE(WaitUntil(absl::Now() + absl::Seconds(60), [&] {
    return load.CompletedSince(test_start) >= 2 * kClients;
  })) << cluster.Log();

  const std::vector<std::string> sequence = Faults();
  std::vector<FaultRow> rows;
  bool recovered_all = true;
  for (int round = 0; round < Rounds() && recovered_all; ++round) {
    for (const std::string& name : sequence) {
      FaultRow row;
      row.name = name;
      const std::map<std::string, pid_t> children = cluster.Children();
      for (const std::string& part : std::vector<std::string>(absl::StrSplit(name, '+'))) {
        auto it = children.find(part);
        ASSERT_TRUE(it != children.end()) << "no process " << part << " under strata up";
        row.pids[part] = it->second;
      }
      row.log_at_kill = cluster.Log().size();
      row.kill = absl::Now();
      for (const auto& [part, pid] : row.pids) ASSERT_EQ(::kill(pid, SIGKILL), 0) << part;
      recovered_all = AwaitRecovery(cluster, load, row);
      rows.push_back(std::move(row));
      if (!recovered_all) break;
      // Steady again before the next fault: a few more answers through the whole cluster.
      const absl::Time settled = absl::Now();
      WaitUntil(settled + absl::Seconds(30), [&] {
        return absl::Now() - settled >= absl::Seconds(1) &&
               load.CompletedSince(settled) >= kClients;
      });
    }
  }
  load.Stop();
  const absl::Time load_end = absl::Now();

  // Moves the router made (to another decode worker, or past a failed prefill worker), per fault.
  const std::string log = cluster.Log();
  for (size_t i = 0; i < rows.size(); ++i) {
    const size_t from = rows[i].log_at_kill,
                 to = i + 1 < rows.size() ? rows[i + 1].log_at_kill : log.size();
    const std::string_view part = std::string_view(log).substr(from, to - from);
    for (size_t at = part.find("moving it on"); at != std::string_view::npos;
         at = part.find("moving it on", at + 1)) {
      ++rows[i].moved;
    }
    rows[i].unready =
        health.Unready(rows[i].kill, i + 1 < rows.size() ? rows[i + 1].kill : load_end);
  }
  FaultRow baseline;
  Tally(load.Records(), prompts_, rows, baseline);
  PrintTable(baseline, rows, absl::Now() - test_start);

  EXPECT_TRUE(recovered_all) << "the cluster did not recover from a fault (see the table)";
  int failures = baseline.failures, completed = baseline.completed;
  for (const FaultRow& r : rows) {
    failures += r.failures;
    completed += r.completed;
  }
  EXPECT_EQ(failures, 0)
      << "requests that hung, were cut short or answered wrongly (see the table)";
  EXPECT_GT(completed, 0);

  // Nothing died but what was killed, and nothing was given up on.
  std::vector<std::string> unexpected;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "giving up on")) unexpected.emplace_back(line);
    const size_t at = line.find("strata up: ");
    if (at == absl::string_view::npos || !absl::StrContains(line, "restarting it in")) continue;
    const bool ours = std::any_of(rows.begin(), rows.end(), [&](const FaultRow& r) {
      return std::any_of(r.pids.begin(), r.pids.end(), [&](const auto& killed) {
        return absl::StrContains(line, absl::StrCat("strata up: ", killed.first, " (pid ",
                                                    killed.second, ") was killed by signal 9"));
      });
    });
    if (!ours) unexpected.emplace_back(line);
  }
  EXPECT_TRUE(unexpected.empty()) << "processes died that the test did not kill:\n"
                                  << absl::StrJoin(unexpected, "\n");

  // Once the load has stopped, every KV block is free again on every worker, or kept by its prefix
  // cache (none leaked by a request that moved, failed or was cut off by a dead peer).
  std::string taken;
  const bool all_free = WaitUntil(absl::Now() + absl::Seconds(20), [&] {
    taken.clear();
    for (const std::string role : {"prefill", "decode"}) {
      for (int i = 0; i < 2; ++i) {
        const int port = layout_.WorkerHttp(role, i);
        const double free = Metric(port, absl::StrCat("strata_", role, "_kv_blocks_free"));
        const double total = Metric(port, absl::StrCat("strata_", role, "_kv_blocks_total"));
        const double cached = Metric(port, absl::StrCat("strata_", role, "_prefix_blocks"));
        if (free + cached != total || total <= 0)
          absl::StrAppend(&taken, role, "-", i, ": ", free, " of ", total, " free; ");
      }
    }
    return taken.empty();
  });
  EXPECT_TRUE(all_free) << "KV blocks still taken after the load stopped: " << taken;
  EXPECT_EQ(Metric(layout_.http, "strata_router_in_flight_requests"), 0)
      << "the router still counts requests in flight";

  const bool stopped = cluster.Stop(absl::Seconds(40));
  EXPECT_TRUE(stopped) << "strata up did not stop cleanly on SIGTERM";
  if (HasFailure()) {
    const std::string all = cluster.Log();
    std::fprintf(stderr, "--- strata up log (last 16 KiB of %s/up.log) ---\n%s\n", dir_.c_str(),
                 all.substr(all.size() > 16384 ? all.size() - 16384 : 0).c_str());
  }
}

}  // namespace
}  // namespace strata::testing
