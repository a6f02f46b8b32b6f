// The disaggregated cluster end to end, as real processes on loopback: redis-server, the router,
// a prefill worker and two decode workers (UCX between them), next to a colocated server and
// `strata generate`. Checks what a user of the OpenAI API relies on: the same greedy answers on
// every path, many concurrent streams with correct usage, a disconnecting client freeing KV blocks
// on both workers, a decode worker killed mid-stream ending the stream with an error (and
// traffic moving to the other worker), and clear 4xx answers to bad requests.
//
// Needs STRATA_BIN (the strata binary) and STRATA_TOKENIZER_DIR in the environment (ctest sets
// both).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "strata/v1/api.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/process.h"

namespace strata::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kKey[] = "sk-e2e-test";
constexpr char kModel[] = "strata-e2e";

std::string Strata() {
  const char* bin = std::getenv("STRATA_BIN");
  return bin != nullptr ? bin : "strata";
}

// Runs a command to completion; its stdout.
std::string RunCapture(const std::vector<std::string>& argv, const std::string& log, int* exit_status) {
  ChildProcess p;
  p.Start(argv, log);
  while (p.Running()) absl::SleepFor(absl::Milliseconds(20));
  *exit_status = p.Stop();
  return ReadWholeFile(log);
}

struct Ports {
  int router_http, router_grpc, prefill, decode, redis, colo_http, colo_grpc;
};

std::string ClusterYaml(const std::string& model, const Ports& p, int http, int grpc, int decode_count) {
  return absl::StrCat(
      "cluster: e2e", getpid(), "\nmodel: ", model, "\nmodel_name: ", kModel, "\nredis: \"127.0.0.1:", p.redis,
      "\"\ntransport: ucx\nucx_tls: \"\"\nrouter:\n  host: 127.0.0.1\n  http_port: ", http, "\n  grpc_port: ", grpc,
      "\n  policy: kv_aware\n  max_inflight: 256\n  api_keys:\n    - {key: ", kKey,
      ", tenant: e2e}\nprefill:\n  count: 1\n  base_port: ", p.prefill,
      "\n  threads: 1\n  chunk_tokens: 512\n  kv_blocks: 512\ndecode:\n  count: ", decode_count, "\n  base_port: ", p.decode,
      "\n  threads: 1\n  kv_blocks: 2048\n  max_batch: 64\n  max_queue: 256\n");
}

struct Streamed {
  int status = 0;
  std::string text;
  std::string finish_reason;
  json usage;
  std::string error;  // an error event's message
  bool done = false;  // saw [DONE]
  int content_events = 0;
};

// Reads an SSE body chunk by chunk (events may span chunks), collecting text, usage, errors.
class SseReader {
 public:
  explicit SseReader(TestConnection& c) : c_(c) {}
  // Next `data:` payload, or nullopt at the end / on timeout.
  std::optional<std::string> Next(absl::Duration timeout) {
    for (;;) {
      const size_t end = buffer_.find("\n\n");
      if (end != std::string::npos) {
        std::string event = buffer_.substr(0, end);
        buffer_.erase(0, end + 2);
        absl::string_view e = event;
        if (absl::ConsumePrefix(&e, "data: ")) return std::string(e);
        continue;
      }
      std::optional<std::string> chunk = c_.ReadChunk(timeout);
      if (!chunk || chunk->empty()) return std::nullopt;
      buffer_ += *chunk;
    }
  }

 private:
  TestConnection& c_;
  std::string buffer_;
};

void Absorb(const std::string& data, bool chat, Streamed& out) {
  if (data == "[DONE]") {
    out.done = true;
    return;
  }
  json j = json::parse(data, nullptr, false);
  if (j.is_discarded()) {
    out.error = "unparsable event: " + data;
    return;
  }
  if (j.contains("error")) {
    out.error = j["error"].value("message", "?");
    return;
  }
  if (j.contains("usage") && !j["usage"].is_null()) out.usage = j["usage"];
  if (!j.contains("choices") || j["choices"].empty()) return;
  const json& c = j["choices"][0];
  std::string piece = chat ? (c.contains("delta") && c["delta"].contains("content") && c["delta"]["content"].is_string()
                                  ? c["delta"]["content"].get<std::string>()
                                  : "")
                           : c.value("text", "");
  if (!piece.empty()) ++out.content_events;
  out.text += piece;
  if (c.contains("finish_reason") && c["finish_reason"].is_string()) out.finish_reason = c["finish_reason"];
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "strata_e2e_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = new std::string(tmpl);
    model_ = new std::string(*dir_ + "/model");
    int rc = 0;
    RunCapture({Strata(), "mkmodel", "--preset", "tiny", "--out", *model_, "--seed", "7"}, *dir_ + "/mkmodel.log", &rc);
    ASSERT_EQ(rc, 0) << ReadWholeFile(*dir_ + "/mkmodel.log");

    const int base = FreePortRange(16);
    ASSERT_NE(base, 0);
    ports_ = {base, base + 1, base + 2, base + 4, base + 8, base + 9, base + 10};
    config_ = new std::string(*dir_ + "/cluster.yaml");
    std::ofstream(*config_) << ClusterYaml(*model_, ports_, ports_.router_http, ports_.router_grpc, 2);
    const std::string colo = *dir_ + "/colocated.yaml";
    std::ofstream(colo) << ClusterYaml(*model_, ports_, ports_.colo_http, ports_.colo_grpc, 1);

    procs_ = new std::vector<std::unique_ptr<ChildProcess>>();
    auto start = [&](const std::string& name, std::vector<std::string> argv) {
      auto p = std::make_unique<ChildProcess>();
      p->Start(argv, *dir_ + "/" + name + ".log");
      procs_->push_back(std::move(p));
      return procs_->back().get();
    };
    redis_ = start("redis", {"redis-server", "--port", std::to_string(ports_.redis), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", *dir_});
    prefill_ = start("prefill", {Strata(), "prefill", "--config", *config_, "--index", "0"});
    decode0_ = start("decode0", {Strata(), "decode", "--config", *config_, "--index", "0"});
    decode1_ = start("decode1", {Strata(), "decode", "--config", *config_, "--index", "1"});
    router_ = start("router", {Strata(), "router", "--config", *config_});
    colocated_ = start("colocated", {Strata(), "serve", "--colocated", "--config", colo});
    ASSERT_TRUE(prefill_->WaitHealthy(ports_.prefill + 1, absl::Seconds(120))) << prefill_->Log();
    ASSERT_TRUE(decode0_->WaitHealthy(ports_.decode + 1, absl::Seconds(120))) << decode0_->Log();
    ASSERT_TRUE(decode1_->WaitHealthy(ports_.decode + 3, absl::Seconds(120))) << decode1_->Log();
    ASSERT_TRUE(router_->WaitHealthy(ports_.router_http, absl::Seconds(120))) << router_->Log();
    ASSERT_TRUE(colocated_->WaitHealthy(ports_.colo_http, absl::Seconds(120))) << colocated_->Log();
    // The router sees the workers once it has read the registry.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline && Metric(ports_.router_http, "strata_router_live_workers{role=\"decode\"}") < 2) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_EQ(Metric(ports_.router_http, "strata_router_live_workers{role=\"decode\"}"), 2) << router_->Log();
  }

  static void TearDownTestSuite() {
    if (procs_ != nullptr) {
      for (auto it = procs_->rbegin(); it != procs_->rend(); ++it) (*it)->Stop();
      delete procs_;
    }
    // STRATA_E2E_KEEP=1 keeps the folder (model, config, every process's log) for a post-mortem.
    if (dir_ != nullptr && std::getenv("STRATA_E2E_KEEP") == nullptr) fs::remove_all(*dir_);
    if (dir_ != nullptr && std::getenv("STRATA_E2E_KEEP") != nullptr) std::fprintf(stderr, "kept %s\n", dir_->c_str());
    delete dir_;
    delete model_;
    delete config_;
  }

  // A metric's value from http://127.0.0.1:port/metrics (the line starting with `series`); -1 if absent.
  static double Metric(int port, const std::string& series) {
    auto c = TestConnection::Connect(static_cast<uint16_t>(port));
    if (!c || !c->Send(MakeRequest("GET", "/metrics"))) return -1;
    auto r = c->ReadResponse(absl::Seconds(5));
    if (!r) return -1;
    for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
      if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
        double v;
        if (absl::SimpleAtod(line, &v)) return v;
      }
    }
    return -1;
  }

  // The sum of a metric's series whose line contains `filter`.
  static double MetricSum(int port, const std::string& prefix, const std::string& filter) {
    auto c = TestConnection::Connect(static_cast<uint16_t>(port));
    if (!c || !c->Send(MakeRequest("GET", "/metrics"))) return -1;
    auto r = c->ReadResponse(absl::Seconds(5));
    if (!r) return -1;
    double sum = 0;
    for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
      if (!absl::StartsWith(line, prefix) || !absl::StrContains(line, filter)) continue;
      double v;
      if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
    }
    return sum;
  }

  static std::string Post(const std::string& path, const json& body, const std::string& key = kKey) {
    std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}};
    if (!key.empty()) headers.emplace_back("Authorization", absl::StrCat("Bearer ", key));
    return MakeRequest("POST", path, body.dump(), headers);
  }

  // A whole non-streamed exchange.
  static TestResponse Call(int port, const std::string& request) {
    auto c = TestConnection::Connect(static_cast<uint16_t>(port));
    EXPECT_TRUE(c && c->Send(request));
    auto r = c->ReadResponse(absl::Seconds(120));
    EXPECT_TRUE(r.has_value());
    return r.value_or(TestResponse{});
  }

  static Streamed Stream(int port, const std::string& path, json body) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    Streamed out;
    auto c = TestConnection::Connect(static_cast<uint16_t>(port));
    if (!c || !c->Send(Post(path, body))) return out;
    auto head = c->ReadHead(absl::Seconds(120));
    if (!head) return out;
    out.status = head->status;
    SseReader sse(*c);
    while (auto data = sse.Next(absl::Seconds(120))) Absorb(*data, path == "/v1/chat/completions", out);
    return out;
  }

  // `strata generate`'s greedy text for `args` (--prompt ..., --chat ..., --prompt-ids ...).
  static std::string Generate(const std::vector<std::string>& args, int max_tokens) {
    std::vector<std::string> argv = {Strata(), "generate", "--model", *model_, "--max-tokens",
                                     std::to_string(max_tokens), "--threads", "1"};
    argv.insert(argv.end(), args.begin(), args.end());
    int rc = 0;
    const std::string out = *dir_ + "/generate.out";
    // stdout only: generate's statistics go to stderr.
    std::string sh = absl::StrCat("exec \"$@\" > ", out, " 2> ", *dir_, "/generate.err");
    std::vector<std::string> wrapped = {"sh", "-c", sh, "sh"};
    wrapped.insert(wrapped.end(), argv.begin(), argv.end());
    RunCapture(wrapped, *dir_ + "/generate.log", &rc);
    EXPECT_EQ(rc, 0) << ReadWholeFile(*dir_ + "/generate.err");
    std::string text = ReadWholeFile(out);
    EXPECT_TRUE(!text.empty() && text.back() == '\n');
    if (!text.empty()) text.pop_back();
    return text;
  }

  static std::vector<int32_t> Ids(int n, uint32_t seed) {
    std::vector<int32_t> ids;
    uint64_t s = seed;
    for (int i = 0; i < n; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      ids.push_back(static_cast<int32_t>(1000 + (s >> 33) % 60000));
    }
    return ids;
  }

  static std::string* dir_;
  static std::string* model_;
  static std::string* config_;
  static Ports ports_;
  static std::vector<std::unique_ptr<ChildProcess>>* procs_;
  static ChildProcess *redis_, *prefill_, *decode0_, *decode1_, *router_, *colocated_;
};

std::string* ClusterTest::dir_ = nullptr;
std::string* ClusterTest::model_ = nullptr;
std::string* ClusterTest::config_ = nullptr;
Ports ClusterTest::ports_;
std::vector<std::unique_ptr<ChildProcess>>* ClusterTest::procs_ = nullptr;
ChildProcess *ClusterTest::redis_, *ClusterTest::prefill_, *ClusterTest::decode0_, *ClusterTest::decode1_,
    *ClusterTest::router_, *ClusterTest::colocated_;

// Greedy answers agree token for token (compared as text, which the tokens determine) between the
// cluster, the colocated server and `strata generate`: the KV hand-off moves exact bytes and the
// CPU engine's results do not depend on chunking or batching.
TEST_F(ClusterTest, SameGreedyAnswerEverywhere) {
  struct Case {
    std::string name, path;
    json body;
    std::vector<std::string> generate_args;
  };
  const std::vector<int32_t> long_prompt = Ids(2100, 11);
  std::vector<Case> cases = {
      {"chat", "/v1/chat/completions",
       {{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "What is the capital of France?"}}}}},
       {"--chat", "What is the capital of France?"}},
      {"text", "/v1/completions", {{"model", kModel}, {"prompt", "The quick brown fox jumps over"}},
       {"--prompt", "The quick brown fox jumps over"}},
      {"2100 token ids", "/v1/completions", {{"model", kModel}, {"prompt", long_prompt}},
       {"--prompt-ids", absl::StrJoin(long_prompt, " ")}},
  };
  for (Case& c : cases) {
    c.body["max_tokens"] = 12;
    c.body["temperature"] = 0;
    Streamed cluster = Stream(ports_.router_http, c.path, c.body);
    Streamed colocated = Stream(ports_.colo_http, c.path, c.body);
    ASSERT_EQ(cluster.status, 200) << c.name << ": " << cluster.error;
    ASSERT_TRUE(cluster.error.empty()) << c.name << ": " << cluster.error << "\n" << router_->Log();
    ASSERT_TRUE(colocated.error.empty()) << c.name << ": " << colocated.error;
    EXPECT_TRUE(cluster.done);
    EXPECT_EQ(cluster.text, colocated.text) << c.name;
    EXPECT_EQ(cluster.usage, colocated.usage) << c.name;

    EXPECT_EQ(cluster.text, Generate(c.generate_args, 12)) << c.name;
  }
}

// Questions about one document: from the second on, the prompt's KV up to the document's last
// full block is reused, usage says so, and the answers stay strata generate's. The router
// (kv_aware) sends them to the decode worker that holds the document, which computes the rest
// itself: no prefill worker is involved after the first.
TEST_F(ClusterTest, QuestionsAboutOneDocumentReportCachedTokensAndKeepTheirAnswers) {
  const std::vector<int32_t> doc = Ids(3000, 21);
  auto decode_hit_tokens = [&] {
    return Metric(ports_.decode + 1, "strata_decode_prefix_hit_tokens_total") +
           Metric(ports_.decode + 3, "strata_decode_prefix_hit_tokens_total");
  };
  const double hits_before = decode_hit_tokens();
  for (int q = 0; q < 3; ++q) {
    std::vector<int32_t> prompt = doc;
    const std::vector<int32_t> question = Ids(20 + 5 * q, 40 + static_cast<uint32_t>(q));
    prompt.insert(prompt.end(), question.begin(), question.end());
    json body = {{"model", kModel}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}};
    Streamed s = Stream(ports_.router_http, "/v1/completions", body);
    ASSERT_EQ(s.status, 200) << s.error;
    ASSERT_TRUE(s.error.empty()) << s.error;
    const int64_t cached = s.usage["prompt_tokens_details"].value("cached_tokens", int64_t{-1});
    // 23 full blocks of 128 tokens lie inside the document.
    if (q == 0) {
      EXPECT_EQ(cached, 0);
    } else {
      EXPECT_EQ(cached, 23 * 128) << "question " << q;
    }
    EXPECT_EQ(s.text, Generate({"--prompt-ids", absl::StrJoin(prompt, " ")}, 8)) << "question " << q;
  }
  EXPECT_EQ(decode_hit_tokens() - hits_before, 2 * 23 * 128) << "questions 2 and 3 went past the decode worker's cache";
  EXPECT_GT(Metric(ports_.router_http, "strata_router_prefix_lookups_total{outcome=\"ok\"}"), 0);
}

// A conversation through the chat API: turn 2 sends turn 1's messages, its answer and a new
// question. Turn 1's prompt (the chat template applied) is a prefix of turn 2's, so at least its
// full blocks are reused; the answer is generate's for turn 2's whole prompt.
TEST_F(ClusterTest, TheNextTurnOfAConversationReusesTheLastOne) {
  std::string long_message;
  for (int i = 0; i < 300; ++i) absl::StrAppend(&long_message, "word", i * 7 % 101, " ");
  json messages = json::array({{{"role", "user"}, {"content", long_message}}});
  json body = {{"model", kModel}, {"messages", messages}, {"max_tokens", 24}, {"temperature", 0}};
  Streamed turn1 = Stream(ports_.router_http, "/v1/chat/completions", body);
  ASSERT_EQ(turn1.status, 200) << turn1.error;
  const int64_t prompt1 = turn1.usage.value("prompt_tokens", int64_t{0});
  ASSERT_GT(prompt1, 256);
  messages.push_back({{"role", "assistant"}, {"content", turn1.text}});
  messages.push_back({{"role", "user"}, {"content", "And what comes next?"}});
  body["messages"] = messages;
  Streamed turn2 = Stream(ports_.router_http, "/v1/chat/completions", body);
  ASSERT_EQ(turn2.status, 200) << turn2.error;
  const int64_t cached = turn2.usage["prompt_tokens_details"].value("cached_tokens", int64_t{-1});
  EXPECT_GE(cached, prompt1 / 128 * 128) << "turn 2 did not reuse turn 1's prompt";
  EXPECT_LT(cached, turn2.usage.value("prompt_tokens", int64_t{0}));
  Streamed colocated = Stream(ports_.colo_http, "/v1/chat/completions", body);
  EXPECT_EQ(turn2.text, colocated.text);
}

TEST_F(ClusterTest, FiftyConcurrentStreamsWithUsage) {
  constexpr int kRequests = 50;
  std::vector<Streamed> results(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      json body = {{"model", kModel}, {"prompt", Ids(20 + i, 100 + static_cast<uint32_t>(i))}, {"max_tokens", 6},
                   {"ignore_eos", true}, {"temperature", 0.7}, {"seed", i}};
      results[static_cast<size_t>(i)] = Stream(ports_.router_http, "/v1/completions", body);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    const Streamed& r = results[static_cast<size_t>(i)];
    ASSERT_EQ(r.status, 200) << i;
    EXPECT_TRUE(r.error.empty()) << i << ": " << r.error;
    EXPECT_TRUE(r.done) << i;
    EXPECT_EQ(r.finish_reason, "length") << i;
    ASSERT_TRUE(r.usage.is_object()) << i;
    EXPECT_EQ(r.usage["prompt_tokens"], 20 + i) << i;
    EXPECT_EQ(r.usage["completion_tokens"], 6) << i;
    EXPECT_EQ(r.usage["total_tokens"], 26 + i) << i;
  }
}

TEST_F(ClusterTest, BadRequestsGetClearErrorsAndTheRouterKeepsServing) {
  const int port = ports_.router_http;
  auto expect = [&](const std::string& request, int status, const std::string& what) {
    TestResponse r = Call(port, request);
    EXPECT_EQ(r.status, status) << what << ": " << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << what << ": " << r.body;
    EXPECT_TRUE(j.contains("error") && j["error"].contains("message")) << what << ": " << r.body;
  };
  json ok = {{"model", kModel}, {"prompt", "hello"}, {"max_tokens", 2}};
  expect(MakeRequest("POST", "/v1/completions", "{\"model\": ", {{"Authorization", std::string("Bearer ") + kKey}}),
         400, "malformed JSON");
  expect(Post("/v1/completions", json{{"model", "no-such-model"}, {"prompt", "hi"}}), 404, "unknown model");
  expect(Post("/v1/completions", ok, ""), 401, "missing key");
  expect(Post("/v1/completions", ok, "sk-wrong"), 401, "wrong key");
  json zero = ok;
  zero["max_tokens"] = 0;
  expect(Post("/v1/completions", zero), 400, "max_tokens 0");
  json too_long = {{"model", kModel}, {"prompt", std::vector<int32_t>(1048577, 1000)}, {"max_tokens", 1}};
  expect(Post("/v1/completions", too_long), 413, "prompt longer than the context");
  TestResponse good = Call(port, Post("/v1/completions", ok));
  EXPECT_EQ(good.status, 200) << good.body;
}

TEST_F(ClusterTest, DisconnectFreesKvBlocksOnBothWorkers) {
  // Free, or kept by the worker's prefix cache (which holds nothing else).
  auto role_free = [&](int p, const std::string& role) {
    return Metric(p, "strata_" + role + "_kv_blocks_free") + Metric(p, "strata_" + role + "_prefix_blocks") ==
           Metric(p, "strata_" + role + "_kv_blocks_total");
  };
  auto all_free = [&] {
    for (int p : {ports_.prefill + 1}) {
      if (!role_free(p, "prefill")) return false;
    }
    for (int p : {ports_.decode + 1, ports_.decode + 3}) {
      if (!role_free(p, "decode")) return false;
    }
    return true;
  };
  auto c = TestConnection::Connect(static_cast<uint16_t>(ports_.router_http));
  json body = {{"model", kModel}, {"prompt", Ids(700, 5)}, {"max_tokens", 100000}, {"ignore_eos", true}, {"stream", true}};
  ASSERT_TRUE(c->Send(Post("/v1/completions", body)));
  auto head = c->ReadHead(absl::Seconds(60));
  ASSERT_TRUE(head && head->status == 200);
  SseReader sse(*c);
  Streamed s;
  while (s.content_events < 3) {
    auto data = sse.Next(absl::Seconds(60));
    ASSERT_TRUE(data.has_value());
    Absorb(*data, false, s);
  }
  EXPECT_FALSE(all_free()) << "a running request holds blocks";
  c->Abort();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline && !all_free()) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_TRUE(all_free());
  EXPECT_GE(MetricSum(ports_.router_http, "strata_router_requests_total{", "status=\"499\""), 1)
      << "the router counts the request as closed by the client";
}

// The router's gRPC API (strata.v1.Api) answers like its HTTP API.
TEST_F(ClusterTest, GrpcApiGivesTheSameGreedyAnswerAsHttp) {
  auto stub = strata::v1::Api::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports_.router_grpc), grpc::InsecureChannelCredentials()));
  strata::v1::GenerateRequest req;
  req.set_model(kModel);
  req.set_prompt("The quick brown fox jumps over");
  req.set_max_tokens(12);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kKey));
  auto reader = stub->Generate(&ctx, req);
  strata::v1::GenerateResponse m;
  std::string text;
  strata::v1::Usage usage;
  while (reader->Read(&m)) {
    text += m.text();
    if (m.has_usage()) usage = m.usage();
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << router_->Log();
  Streamed http = Stream(ports_.router_http, "/v1/completions",
                         {{"model", kModel}, {"prompt", "The quick brown fox jumps over"}, {"max_tokens", 12}, {"temperature", 0}});
  EXPECT_EQ(text, http.text);
  EXPECT_EQ(usage.completion_tokens(), http.usage["completion_tokens"].get<int64_t>());
  EXPECT_EQ(usage.prompt_tokens(), http.usage["prompt_tokens"].get<int64_t>());
}

// Last: it kills a decode worker. The stream it was serving moves to the other decode worker with
// the prompt plus the tokens already sent, and goes on: greedy, the same text as an undisturbed
// run. New requests go to the survivor.
TEST_F(ClusterTest, ZKilledDecodeWorkersStreamMovesToTheOtherAndGivesTheSameText) {
  const json body = {{"model", kModel}, {"prompt", Ids(50, 9)}, {"max_tokens", 300}, {"ignore_eos", true},
                     {"temperature", 0}, {"stream", true}};
  const Streamed undisturbed = Stream(ports_.router_http, "/v1/completions", body);
  ASSERT_EQ(undisturbed.status, 200);
  ASSERT_TRUE(undisturbed.error.empty()) << undisturbed.error;

  auto c = TestConnection::Connect(static_cast<uint16_t>(ports_.router_http));
  ASSERT_TRUE(c->Send(Post("/v1/completions", body)));
  auto head = c->ReadHead(absl::Seconds(60));
  ASSERT_TRUE(head && head->status == 200);
  SseReader sse(*c);
  Streamed s;
  while (s.content_events < 2) {
    auto data = sse.Next(absl::Seconds(60));
    ASSERT_TRUE(data.has_value());
    Absorb(*data, false, s);
  }
  // Whichever decode worker holds the request dies.
  const bool on0 = Metric(ports_.decode + 1, "strata_decode_running_requests") > 0;
  (on0 ? decode0_ : decode1_)->Kill();
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline && !s.done) {
    auto data = sse.Next(absl::Seconds(60));
    if (!data) break;
    Absorb(*data, false, s);
  }
  EXPECT_TRUE(s.error.empty()) << "the stream must survive its worker: " << s.error << "\n" << router_->Log();
  EXPECT_TRUE(s.done) << "and end with [DONE], not hang";
  EXPECT_EQ(s.finish_reason, "length");
  EXPECT_EQ(s.text, undisturbed.text) << "greedy text changed by the move";
  for (int i = 0; i < 4; ++i) {
    Streamed r = Stream(ports_.router_http, "/v1/completions", {{"model", kModel}, {"prompt", "after"}, {"max_tokens", 3}});
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(r.error.empty()) << "request " << i << " after the kill: " << r.error << "\n" << router_->Log();
  }
}

}  // namespace
}  // namespace strata::testing
