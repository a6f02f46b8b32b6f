// Prefix reuse through the whole cluster (`strata up` with a kvstore), as a user sees it: the
// second question about a document reports its cached tokens and keeps strata generate's answer;
// another tenant sending the same document reuses none of the first one's blocks; the cluster
// stopped and started again with the same ssd_dir serves the document from the SSD tier; corrupt
// block files are detected, dropped and recomputed — the answers unchanged, the cluster serving;
// twenty questions about one 64K-token document each reuse all of it and answer as strata generate
// does on the whole prompt.
//
// Needs STRATA_BIN and STRATA_TOKENIZER_DIR (ctest sets both) and redis-server on PATH.
// STRATA_E2E_KEEP=1 keeps the folder (model, cluster file, logs, SSD tier).
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"
#include "gtest/gtest.h"
#include "kvstore/slot.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/process.h"

namespace strata::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kModel[] = "strata-prefix";
constexpr char kKeyA[] = "sk-tenant-a";
constexpr char kKeyB[] = "sk-tenant-b";

std::string Strata() {
  const char* bin = std::getenv("STRATA_BIN");
  return bin != nullptr ? bin : "strata";
}

std::vector<int32_t> Ids(int n, uint64_t seed) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(static_cast<int32_t>(1000 + (seed >> 33) % 60000));
  }
  return ids;
}

std::vector<int32_t> Join(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Answer {
  int status = 0;
  std::string text, error;
  int64_t cached = -1;
};

class PrefixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "strata_prefix_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    model_ = dir_ + "/model";
    ChildProcess mk;
    ASSERT_TRUE(mk.Start({Strata(), "mkmodel", "--preset", "tiny", "--out", model_, "--seed", "3"}, dir_ + "/mkmodel.log"));
    while (mk.Running()) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_EQ(mk.Stop(), 0) << mk.Log();
    base_ = FreePortRange(24);
    ASSERT_NE(base_, 0);
    config_ = dir_ + "/cluster.yaml";
    std::ofstream(config_) << absl::StrCat(
        "cluster: prefix", getpid(), "\nmodel_name: ", kModel, "\nredis: \"\"\nredis_port: ", base_,
        "\nrouter:\n  host: 127.0.0.1\n  http_port: ", base_ + 1, "\n  grpc_port: ", base_ + 2,
        "\n  policy: kv_aware\n  api_keys:\n    - {key: ", kKeyA, ", tenant: a}\n    - {key: ", kKeyB,
        ", tenant: b}\nprefill:\n  count: 1\n  base_port: ", base_ + 4,
        "\n  threads: 2\n  kv_blocks: 1024\ndecode:\n  count: 1\n  base_port: ", base_ + 8,
        "\n  kv_blocks: 1024\nkvstore:\n  count: 1\n  base_port: ", base_ + 12,
        "\n  ram_mib: 64\n  ssd_dir: ", dir_, "/ssd\n  ssd_mib: 128\nprefix_cache:\n  checkpoint_every: 8\n");
  }
  void TearDown() override {
    if (up_ != nullptr) Stop();
    RemoveTestDir(dir_);
  }

  void Start() {
    const std::string log = absl::StrCat(dir_, "/up", ++starts_, ".log");
    up_ = std::make_unique<ChildProcess>();
    ASSERT_TRUE(up_->Start({Strata(), "up", "--config", config_, "--model", model_, "--stop-timeout", "10"}, log));
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    while (up_->Running() && !absl::StrContains(up_->Log(), "is ready") && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(up_->Running() && absl::StrContains(up_->Log(), "is ready")) << up_->Log();
  }
  void Stop() {
    up_->Signal(SIGTERM);
    EXPECT_EQ(up_->Stop(absl::Seconds(40)), 0) << "strata up did not stop cleanly";
    up_.reset();
  }

  Answer Ask(const std::vector<int32_t>& prompt, const std::string& key) const {
    const json body = {{"model", kModel}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}};
    Answer a;
    auto c = TestConnection::Connect(static_cast<uint16_t>(base_ + 1));
    if (!c || !c->Send(MakeRequest("POST", "/v1/completions", body.dump(),
                                   {{"Content-Type", "application/json"}, {"Authorization", absl::StrCat("Bearer ", key)}}))) {
      return a;
    }
    std::optional<TestResponse> r = c->ReadResponse(absl::Seconds(900));
    if (!r) return a;
    a.status = r->status;
    const json j = json::parse(r->body, nullptr, false);
    if (a.status != 200 || j.is_discarded()) {
      a.error = r->body;
      return a;
    }
    a.text = j["choices"][0].value("text", "");
    a.cached = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t{-1});
    return a;
  }

  std::string Generate(const std::vector<int32_t>& prompt) const {
    const std::string out = dir_ + "/generate.out", ids = dir_ + "/generate.ids";
    std::ofstream(ids) << absl::StrJoin(prompt, " ");  // past one argument's 128 KiB at 64K ids
    ChildProcess g;
    EXPECT_TRUE(g.Start({"sh", "-c", absl::StrCat("exec \"$@\" > ", out), "sh", Strata(), "generate", "--model",
                         model_, "--prompt-ids", "@" + ids, "--max-tokens", "8", "--chunk", "2048"},
                        dir_ + "/generate.log"));
    while (g.Running()) absl::SleepFor(absl::Milliseconds(20));
    EXPECT_EQ(g.Stop(), 0) << g.Log();
    std::string text = ReadWholeFile(out);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  double Metric(int port, const std::string& series) const {
    auto c = TestConnection::Connect(static_cast<uint16_t>(port));
    if (!c || !c->Send(MakeRequest("GET", "/metrics"))) return -1;
    std::optional<TestResponse> r = c->ReadResponse(absl::Seconds(5));
    if (!r) return -1;
    for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
      double v;
      if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ") && absl::SimpleAtod(line, &v)) return v;
    }
    return -1;
  }
  int KvStoreHttp() const { return base_ + 13; }

  std::string dir_, model_, config_;
  int base_ = 0, starts_ = 0;
  std::unique_ptr<ChildProcess> up_;
};

TEST_F(PrefixTest, TheKvstoreServesADocumentAcrossRestartsTenantsAndCorruptBlocks) {
  const std::vector<int32_t> doc = Ids(3000, 1);  // 23 full blocks inside the document
  constexpr int64_t kDocBlockTokens = 23 * 128;
  const std::vector<int32_t> q1 = Join(doc, Ids(20, 2)), q2 = Join(doc, Ids(24, 3)), q3 = Join(doc, Ids(18, 4));
  const std::string want1 = Generate(q1), want2 = Generate(q2), want3 = Generate(q3);

  ASSERT_NO_FATAL_FAILURE(Start());
  Answer a = Ask(q1, kKeyA);
  ASSERT_EQ(a.status, 200) << a.error;
  EXPECT_EQ(a.cached, 0);
  EXPECT_EQ(a.text, want1);
  // Tenant b, the same document: nothing of tenant a's is reused, then its own copy is.
  Answer b = Ask(q1, kKeyB);
  EXPECT_EQ(b.cached, 0) << "tenant b reused tenant a's blocks";
  EXPECT_EQ(b.text, want1);
  b = Ask(q2, kKeyB);
  EXPECT_EQ(b.cached, kDocBlockTokens);
  EXPECT_EQ(b.text, want2);
  // Both tenants' copies reach the kvstore's SSD tier (written back after each prompt).
  const std::string ssd_blocks = "strata_kvstore_blocks{kind=\"block\",tier=\"ssd\"}";
  for (int i = 0; i < 200 && Metric(KvStoreHttp(), ssd_blocks) < 46; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_GE(Metric(KvStoreHttp(), ssd_blocks), 46);
  Stop();

  // Started again: every worker's cache is empty; the kvstore's SSD tier has the document.
  ASSERT_NO_FATAL_FAILURE(Start());
  a = Ask(q2, kKeyA);
  ASSERT_EQ(a.status, 200) << a.error;
  EXPECT_EQ(a.cached, kDocBlockTokens) << "not served from the SSD tier after a restart";
  EXPECT_EQ(a.text, want2);
  EXPECT_GT(Metric(KvStoreHttp(), "strata_kvstore_hits_total{tier=\"ssd\"}"), 0);
  Stop();

  // Every block slot on disk gets a flipped byte: each read of one is detected and it is dropped;
  // the document is computed again, with the same answer, and reused after that.
  engine::KvLayout layout(*engine::ModelConfig::Load(model_ + "/config.json"));
  const int64_t slot = kvstore::SlotBytes(layout.block_bytes());
  const std::string blocks = dir_ + "/ssd/kvstore-0/blocks.slots";
  const int fd = ::open(blocks.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const off_t size = ::lseek(fd, 0, SEEK_END);
  for (off_t at = 1000; at < size; at += slot) {
    uint8_t byte = 0;
    ASSERT_EQ(::pread(fd, &byte, 1, at), 1);
    byte ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &byte, 1, at), 1);
  }
  ::close(fd);
  ASSERT_NO_FATAL_FAILURE(Start());
  a = Ask(q3, kKeyA);
  ASSERT_EQ(a.status, 200) << a.error;
  EXPECT_EQ(a.cached, 0) << "a corrupt block was served";
  EXPECT_EQ(a.text, want3);
  EXPECT_GT(Metric(KvStoreHttp(), "strata_kvstore_corrupt_total"), 0);
  a = Ask(q1, kKeyA);
  EXPECT_EQ(a.cached, kDocBlockTokens);
  EXPECT_EQ(a.text, want1);
  Stop();
}

// The long-document agent: one 64K-token document, twenty different questions. Every question
// after the first reuses the whole document (its 512 full blocks) and answers exactly as
// strata generate does computing the whole prompt cold.
TEST_F(PrefixTest, TwentyQuestionsAboutA64KDocumentReuseItAndAnswerAsGenerateDoes) {
  constexpr int kDocTokens = 65536, kQuestions = 20;
  const std::vector<int32_t> doc = Ids(kDocTokens, 11);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> want;
  for (int i = 0; i < kQuestions; ++i) {
    prompts.push_back(Join(doc, Ids(12 + i, 100 + static_cast<uint64_t>(i))));
    want.push_back(Generate(prompts.back()));
  }
  ASSERT_NO_FATAL_FAILURE(Start());
  for (int i = 0; i < kQuestions; ++i) {
    const Answer a = Ask(prompts[static_cast<size_t>(i)], kKeyA);
    ASSERT_EQ(a.status, 200) << "question " << i << ": " << a.error;
    if (i == 0) {
      EXPECT_EQ(a.cached, 0);
    } else {
      EXPECT_GE(a.cached, kDocTokens) << "question " << i;
    }
    EXPECT_EQ(a.text, want[static_cast<size_t>(i)]) << "question " << i;
  }
  Stop();
}

}  // namespace
}  // namespace strata::testing
