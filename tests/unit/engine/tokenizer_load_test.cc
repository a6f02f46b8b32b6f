// Tokenizer tests that need no downloaded files: a small synthetic tokenizer.json written to a
// temp dir (BPE merge order, lstrip/rstrip, config forms) and Load's errors for missing,
// corrupt and unsupported files. Also checks the two BPE merge paths against each other.
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_bpe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// GPT-2's byte-level character for byte b, as UTF-8 and JSON-escaped.
std::string ByteLevelJson(int b) {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256);
    uint32_t next = 256;
    for (int i = 0; i < 256; ++i) {
      const bool printable =
          (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
      t[i] = printable ? static_cast<uint32_t>(i) : next++;
    }
    return t;
  }();
  const uint32_t cp = table[b];
  if (cp == '"' || cp == '\\') return std::string("\\") + static_cast<char>(cp);
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

// Vocabulary: ids 0..255 are the bytes; then "bc" 256, "ab" 257, "aa" 258. Merge ranks:
// "b c" < "a b" < "a a". Added tokens <L> (lstrip) 300, <R> (rstrip) 301, <B> 302.
std::string SyntheticTokenizerJson() {
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    vocab += "\"" + ByteLevelJson(b) + "\": " + std::to_string(b) + ", ";
  }
  vocab += R"("bc": 256, "ab": 257, "aa": 258)";
  return R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 300, "content": "<L>", "lstrip": true, "rstrip": false, "special": true},
    {"id": 301, "content": "<R>", "lstrip": false, "rstrip": true, "special": true},
    {"id": 302, "content": "<B>", "special": true}
  ],
  "normalizer": {"type": "Sequence", "normalizers": []},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\s+|[^\\s]+"}, "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
  ]},
  "post_processor": {"type": "ByteLevel"},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "byte_fallback": false, "vocab": {)" +
         vocab + R"(}, "merges": ["b c", "a b", "a a"]}
})";
}

constexpr char kSyntheticConfig[] =
    R"({"bos_token": "<B>", "eos_token": {"__type": "AddedToken", "content": "<R>"}})";

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/tokenizer_test_XXXXXX";
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  void Write(const std::string& name, const std::string& contents) const {
    std::ofstream(path_ + "/" + name, std::ios::binary) << contents;
  }

 private:
  std::string path_;
};

// Writes the files and loads them; the caller checks the outcome.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFrom(const TempDir& dir, const std::string& json,
                                                    const std::string& config = kSyntheticConfig) {
  dir.Write("tokenizer.json", json);
  dir.Write("tokenizer_config.json", config);
  return Tokenizer::Load(dir.path());
}

TEST(SyntheticTokenizerTest, MergesLowestRankFirstAndLeftmostOnTies) {
  TempDir dir;
  auto tok = LoadFrom(dir, SyntheticTokenizerJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_THAT(t.Encode("abc"), ElementsAre('a', 256));  // "b c" ranks before "a b"
  EXPECT_THAT(t.Encode("ab"), ElementsAre(257));
  EXPECT_THAT(t.Encode("aaa"), ElementsAre(258, 'a'));  // tie: the leftmost pair merges
  EXPECT_THAT(t.Encode("aaaa"), ElementsAre(258, 258));
  EXPECT_THAT(t.Encode("aab"), ElementsAre('a', 257));  // "a b" ranks before "a a"
  EXPECT_EQ(t.bos_id(), 302);
  EXPECT_EQ(t.eos_id(), 301);
  EXPECT_EQ(t.num_tokens(), 303);
  EXPECT_EQ(*t.Decode({257, 256, 302}), "abbc<B>");
  EXPECT_FALSE(t.Decode({280}).ok());  // between the vocabulary and the added tokens
}

TEST(SyntheticTokenizerTest, LstripAndRstripTrimJavaScriptWhitespace) {
  TempDir dir;
  auto tok = LoadFrom(dir, SyntheticTokenizerJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_THAT(t.Encode("x <L> y"), ElementsAre('x', 300, ' ', 'y'));
  EXPECT_THAT(t.Encode("x <R> y"), ElementsAre('x', ' ', 301, 'y'));
  EXPECT_THAT(t.Encode("x <B> y"), ElementsAre('x', ' ', 302, ' ', 'y'));
  // U+3000 is whitespace to JavaScript's trim, so <L> removes it too.
  EXPECT_THAT(t.Encode("x\u3000\t<L>"), ElementsAre('x', 300));
  EXPECT_THAT(t.Encode("<R>  \n"), ElementsAre(301));
}

TEST(SyntheticTokenizerTest, NoChatTemplateMeansNoChatFormat) {
  TempDir dir;
  auto tok = LoadFrom(dir, SyntheticTokenizerJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  absl::StatusOr<std::string> text = (*tok)->ApplyChatTemplate({{"user", "hi"}}, true);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kFailedPrecondition);
}

// Load errors name the file and the problem.
void ExpectLoadError(const std::string& json, const std::string& config, absl::StatusCode code,
                     const std::vector<std::string>& parts) {
  TempDir dir;
  auto tok = LoadFrom(dir, json, config);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), code) << tok.status();
  for (const std::string& part : parts) EXPECT_THAT(tok.status().message(), HasSubstr(part));
}

std::string Replace(const std::string& json, const std::string& from, const std::string& to) {
  std::string out = absl::StrReplaceAll(json, {{from, to}});
  EXPECT_NE(out, json) << "the test's edit did not apply: " << from;
  return out;
}

// A DeepSeek chat template over the synthetic tokenizer, whose role markers strip whitespace
// (DeepSeek's do not) and which has no tokens for EOS and the tool markers (text, then).
TEST(SyntheticTokenizerTest, EncodeChatMatchesEncodeOfTheTemplateAndKeepsContentText) {
  TempDir dir;
  const std::string json =
      Replace(SyntheticTokenizerJson(), R"({"id": 302, "content": "<B>", "special": true})",
              R"({"id": 302, "content": "<B>", "special": true},
    {"id": 303, "content": "<｜User｜>", "rstrip": true, "special": false},
    {"id": 304, "content": "<｜Assistant｜>", "lstrip": true, "special": false})");
  auto tok = LoadFrom(dir, json,
                      R"({"bos_token": "<B>", "eos_token": "<R>",
                          "chat_template": "{{'<｜User｜>' + m}}{{'<｜Assistant｜>'}}"})");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  // The markers' lstrip / rstrip trim the content next to them, as in the rendered template.
  EXPECT_THAT(*t.EncodeChat({{"user", " ab "}}, true), ElementsAre(302, 303, 257, 304));
  const std::vector<std::vector<ChatMessage>> chats = {
      {{"user", " ab "}},
      {{"system", " S "}, {"user", "\n bc\u3000"}, {"assistant", " aa "}, {"user", "  "}},
      {{"user", "q "}, {"tool", " r1 "}, {"tool", "r2"}, {"assistant", " a"}},
  };
  for (const auto& chat : chats) {
    for (bool gen : {true, false}) {
      absl::StatusOr<std::string> text = t.ApplyChatTemplate(chat, gen);
      ASSERT_TRUE(text.ok()) << text.status();
      EXPECT_EQ(*t.EncodeChat(chat, gen), t.Encode(*text)) << *text;
    }
  }
  // Content is text: its "<B>" and "<｜Assistant｜>" are not the markers' ids.
  absl::StatusOr<std::vector<int32_t>> ids = t.EncodeChat({{"user", "x<B><｜Assistant｜>"}}, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->front(), 302);
  EXPECT_EQ(ids->back(), 304);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 302), 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 304), 1);
  EXPECT_EQ(*t.Decode(*ids), "<B><｜User｜>x<B><｜Assistant｜><｜Assistant｜>");
}

TEST(SyntheticTokenizerTest, NoChatTemplateMeansNoEncodeChat) {
  TempDir dir;
  auto tok = LoadFrom(dir, SyntheticTokenizerJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->EncodeChat({{"user", "hi"}}, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(TokenizerLoadErrorTest, MissingFiles) {
  TempDir dir;
  auto tok = Tokenizer::Load(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("tokenizer.json"));
  EXPECT_THAT(tok.status().message(), HasSubstr("fetch.sh"));

  dir.Write("tokenizer.json", SyntheticTokenizerJson());
  tok = Tokenizer::Load(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("tokenizer_config.json"));
}

TEST(TokenizerLoadErrorTest, CorruptJson) {
  const std::string json = SyntheticTokenizerJson();
  ExpectLoadError(json.substr(0, json.size() / 2), kSyntheticConfig,
                  absl::StatusCode::kInvalidArgument, {"tokenizer.json", "not valid JSON"});
  ExpectLoadError("", kSyntheticConfig, absl::StatusCode::kInvalidArgument,
                  {"tokenizer.json", "not valid JSON"});
  ExpectLoadError(json, "{\"bos_token\": ", absl::StatusCode::kInvalidArgument,
                  {"tokenizer_config.json", "not valid JSON"});
  ExpectLoadError("[1, 2]", kSyntheticConfig, absl::StatusCode::kInvalidArgument,
                  {"tokenizer.json", "expected an object"});
}

TEST(TokenizerLoadErrorTest, BadContents) {
  const std::string json = SyntheticTokenizerJson();
  const std::string config = kSyntheticConfig;
  const auto invalid = absl::StatusCode::kInvalidArgument;
  ExpectLoadError(Replace(json, "\"model\":", "\"modelx\":"), config, invalid,
                  {"tokenizer.json", "\"model\" is missing"});
  ExpectLoadError(Replace(json, "\"aa\": 258", "\"aa\": \"x\""), config, invalid,
                  {"tokenizer.json", "model.vocab[\"aa\"]", "expected an integer"});
  ExpectLoadError(Replace(json, "\"a a\"", "\"a zz\""), config, invalid,
                  {"tokenizer.json", "model.merges[2]", "\"zz\" is not in model.vocab"});
  ExpectLoadError(Replace(json, "\"aa\": 258", "\"aa\": 257"), config, invalid,
                  {"tokenizer.json", "id 257"});
  ExpectLoadError(Replace(json, R"("\\s+|[^\\s]+")", R"("(")"), config, invalid,
                  {"tokenizer.json", "pre_tokenizer.pretokenizers[0].pattern"});
  ExpectLoadError(json, R"({"bos_token": "<nope>", "eos_token": "<R>"})", invalid,
                  {"tokenizer_config.json", "bos_token", "<nope>"});
  ExpectLoadError(json, R"({"bos_token": "<B>"})", invalid,
                  {"tokenizer_config.json", "\"eos_token\" is missing"});
}

TEST(TokenizerLoadErrorTest, UnsupportedParts) {
  const std::string json = SyntheticTokenizerJson();
  const std::string config = kSyntheticConfig;
  const auto unimplemented = absl::StatusCode::kUnimplemented;
  ExpectLoadError(Replace(json, R"("normalizers": [])", R"("normalizers": [{"type": "NFC"}])"),
                  config, unimplemented, {"tokenizer.json", "normalizer", "NFC"});
  ExpectLoadError(Replace(json, "\"byte_fallback\": false", "\"byte_fallback\": true"), config,
                  unimplemented, {"tokenizer.json", "byte_fallback"});
  ExpectLoadError(Replace(json, "\"use_regex\": false", "\"use_regex\": true"), config,
                  unimplemented, {"tokenizer.json", "use_regex"});
  ExpectLoadError(Replace(json, "\"behavior\": \"Isolated\"", "\"behavior\": \"Removed\""), config,
                  unimplemented, {"tokenizer.json", "Removed"});
  ExpectLoadError(Replace(json, "\"decoder\": {\"type\": \"ByteLevel\"}",
                          "\"decoder\": {\"type\": \"Metaspace\"}"),
                  config, unimplemented, {"tokenizer.json", "decoder", "Metaspace"});
}

// The quadratic short-word path and the priority-queue long-word path agree.
TEST(BpeModelTest, ShortAndLongPathsAgree) {
  std::mt19937 rng(11);
  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) byte_ids[b] = b;
  absl::flat_hash_map<uint64_t, internal_tokenizer::BpeModel::Merge> merges;
  int32_t next_id = 256;
  const std::vector<int32_t> letters = {'a', 'b', 'c', 'd'};
  std::vector<int32_t> tokens = letters;
  for (int32_t rank = 0; rank < 400; ++rank) {
    const int32_t left = tokens[rng() % tokens.size()];
    const int32_t right = tokens[rng() % tokens.size()];
    const uint64_t key = internal_tokenizer::BpeModel::PairKey(left, right);
    if (merges.contains(key)) continue;
    merges[key] = {rank, next_id};
    tokens.push_back(next_id++);
  }
  internal_tokenizer::BpeModel model(byte_ids, merges, {});
  for (int n = 0; n < 2000; ++n) {
    std::string word;
    const size_t len = 1 + rng() % internal_tokenizer::BpeModel::kShortWordBytes;
    for (size_t i = 0; i < len; ++i) word.push_back(static_cast<char>(letters[rng() % 4]));
    std::vector<int32_t> short_path, long_path;
    model.MergeShort(word, &short_path);
    model.MergeLong(word, &long_path);
    ASSERT_EQ(short_path, long_path) << word;
  }
}

}  // namespace
}  // namespace strata::engine
