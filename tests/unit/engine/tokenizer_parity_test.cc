// Parity with the reference JavaScript tokenizer: tokenizer_reference.mjs (run by ctest as the
// fixture setup) encodes tests/data/tokenizer/ and generated strings with @lenml/tokenizers
// and writes their ids; every case must give exactly the same ids here, and every chat case the
// same rendered prompt.
#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "simdjson.h"

#ifndef STRATA_TOKENIZER_REFERENCE_JSON
#error "STRATA_TOKENIZER_REFERENCE_JSON must name the file tokenizer_reference.mjs writes"
#endif

namespace strata::engine {
namespace {

struct EncodeCase {
  std::string name;
  std::string bytes;
  std::vector<int32_t> ids;
};

struct ChatCase {
  std::string name;
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = false;
  std::string text;
  std::vector<int32_t> ids;
};

std::string Escaped(const std::string& s) { return absl::CHexEscape(s); }

std::vector<int32_t> Ids(simdjson::dom::element e) {
  std::vector<int32_t> ids;
  for (simdjson::dom::element id : e.get_array()) ids.push_back(static_cast<int32_t>(int64_t(id)));
  return ids;
}

std::string Str(simdjson::dom::element e) { return std::string(std::string_view(e)); }

class TokenizerParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    error_ = new std::string();
    const char* dir = std::getenv("STRATA_TOKENIZER_DIR");
    if (dir == nullptr || *dir == '\0') {
      *error_ =
          "STRATA_TOKENIZER_DIR is not set: run `make tokenizer` / deploy/tokenizer/fetch.sh "
          "and configure with -DSTRATA_TOKENIZER_DIR=<the folder it prints>";
      return;
    }
    auto tokenizer = Tokenizer::Load(dir);
    if (!tokenizer.ok()) {
      *error_ =
          tokenizer.status().ToString() + " (run `make tokenizer` / deploy/tokenizer/fetch.sh)";
      return;
    }
    tokenizer_ = tokenizer->release();

    // simdjson's exception API keeps this test-only parsing short; a malformed file fails here.
    simdjson::dom::parser parser;
    simdjson::padded_string json;
    if (simdjson::padded_string::load(STRATA_TOKENIZER_REFERENCE_JSON).get(json) !=
        simdjson::SUCCESS) {
      *error_ = std::string("cannot read ") + STRATA_TOKENIZER_REFERENCE_JSON +
                " (written by the ctest fixture tokenizer_reference; run the tests with ctest)";
      return;
    }
    try {
      simdjson::dom::element root = parser.parse(json);
      cases_ = new std::vector<EncodeCase>();
      for (simdjson::dom::element c : root["cases"].get_array()) {
        EncodeCase ec{Str(c["name"]), "", Ids(c["ids"])};
        if (!absl::Base64Unescape(Str(c["bytes"]), &ec.bytes)) {
          *error_ = "bad base64 in case " + ec.name;
          return;
        }
        cases_->push_back(std::move(ec));
      }
      chats_ = new std::vector<ChatCase>();
      for (simdjson::dom::element c : root["chat"].get_array()) {
        ChatCase cc{
            Str(c["name"]), {}, bool(c["add_generation_prompt"]), Str(c["text"]), Ids(c["ids"])};
        for (simdjson::dom::element m : c["messages"].get_array()) {
          cc.messages.push_back({Str(m["role"]), Str(m["content"])});
        }
        chats_->push_back(std::move(cc));
      }
    } catch (const simdjson::simdjson_error& e) {
      *error_ = std::string(STRATA_TOKENIZER_REFERENCE_JSON) + ": " + e.what();
    }
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete cases_;
    delete chats_;
    delete error_;
  }
  void SetUp() override {
    ASSERT_TRUE(error_->empty()) << *error_;
    ASSERT_NE(tokenizer_, nullptr);
  }

  // Describes where `got` departs from `want`, with the text around it.
  static std::string Difference(const std::string& name, const std::string& bytes,
                                const std::vector<int32_t>& want, const std::vector<int32_t>& got) {
    size_t pos = 0;
    while (pos < want.size() && pos < got.size() && want[pos] == got[pos]) ++pos;
    auto window = [&](const std::vector<int32_t>& ids) {
      const size_t begin = pos >= 5 ? pos - 5 : 0;
      const size_t end = std::min(ids.size(), pos + 6);
      std::vector<std::string> parts;
      for (size_t i = begin; i < end; ++i) {
        auto piece = tokenizer_->Decode({ids[i]});
        parts.push_back(std::to_string(ids[i]) + "\"" +
                        Escaped(piece.ok() ? *piece : std::string("?")) + "\"");
      }
      return absl::StrJoin(parts, " ");
    };
    const size_t prefix =
        tokenizer_->Decode(absl::MakeConstSpan(want).subspan(0, std::min(pos, want.size())))
            ->size();
    const size_t from = prefix >= 80 ? prefix - 80 : 0;
    std::ostringstream out;
    out << name << ": first difference at id #" << pos << " of " << want.size() << " (we give "
        << got.size() << ")\n  reference: ... " << window(want) << "\n  ours:      ... "
        << window(got) << "\n  text near there (of " << bytes.size() << " bytes, decoded): \""
        << Escaped(tokenizer_->Decode(want)->substr(from, 200)) << "\"";
    if (bytes.size() <= 300) out << "\n  input bytes: \"" << Escaped(bytes) << "\"";
    return out.str();
  }

  static Tokenizer* tokenizer_;
  static std::vector<EncodeCase>* cases_;
  static std::vector<ChatCase>* chats_;
  static std::string* error_;
};
Tokenizer* TokenizerParityTest::tokenizer_ = nullptr;
std::vector<EncodeCase>* TokenizerParityTest::cases_ = nullptr;
std::vector<ChatCase>* TokenizerParityTest::chats_ = nullptr;
std::string* TokenizerParityTest::error_ = nullptr;

TEST_F(TokenizerParityTest, EncodeMatchesReference) {
  // Guards against a reference file that silently lost its cases.
  size_t corpus = 0;
  for (const EncodeCase& c : *cases_) corpus += c.name.rfind("corpus/", 0) == 0;
  ASSERT_GE(corpus, 10u) << "too few corpus files in the reference";
  ASSERT_GE(cases_->size(), 600u);

  int failures = 0;
  for (const EncodeCase& c : *cases_) {
    const std::vector<int32_t> got = tokenizer_->Encode(c.bytes);
    if (got == c.ids) continue;
    ++failures;
    if (failures <= 20) ADD_FAILURE() << Difference(c.name, c.bytes, c.ids, got);
  }
  EXPECT_EQ(failures, 0) << "of " << cases_->size() << " cases";
}

TEST_F(TokenizerParityTest, DecodeMatchesDecodedReferenceText) {
  // Decoding the reference ids gives the text the reference tokenized: the input bytes as
  // TextDecoder reads them (so valid UTF-8 input comes back byte for byte).
  for (const EncodeCase& c : *cases_) {
    auto text = tokenizer_->Decode(c.ids);
    ASSERT_TRUE(text.ok()) << c.name << ": " << text.status();
    if (c.name.rfind("random_bytes/", 0) != 0 && c.name != "corpus/invalid_utf8.bin") {
      EXPECT_TRUE(*text == c.bytes)
          << c.name << ": decoding the reference ids does not give the input";
    }
    EXPECT_EQ(tokenizer_->Encode(*text), c.ids) << c.name;
  }
}

TEST_F(TokenizerParityTest, ChatTemplateMatchesReference) {
  ASSERT_GE(chats_->size(), 50u);
  for (const ChatCase& c : *chats_) {
    absl::StatusOr<std::string> text =
        tokenizer_->ApplyChatTemplate(c.messages, c.add_generation_prompt);
    ASSERT_TRUE(text.ok()) << c.name << ": " << text.status();
    EXPECT_EQ(*text, c.text) << c.name << "\n  ours:      \"" << Escaped(*text)
                             << "\"\n  reference: \"" << Escaped(c.text) << "\"";
    const std::vector<int32_t> got = tokenizer_->Encode(c.text);
    EXPECT_EQ(got, c.ids) << Difference(c.name, c.text, c.ids, got);
  }
}

// The serving path's EncodeChat gives the reference's ids for every conversation whose messages
// hold no added token's text. Where they do, the reference reads that text as the tokens and
// EncodeChat as text: the same text, with only the template's own markers as added tokens.
TEST_F(TokenizerParityTest, EncodeChatMatchesReferenceWhereContentHoldsNoAddedToken) {
  auto is_added = [](int32_t id) { return id <= 2 || id >= 128000; };  // DeepSeek V3's ids
  auto markers = [&](const std::vector<int32_t>& ids) {
    std::vector<int32_t> out;
    std::copy_if(ids.begin(), ids.end(), std::back_inserter(out), is_added);
    return out;
  };
  size_t plain = 0;
  size_t forged = 0;
  for (const ChatCase& c : *chats_) {
    absl::StatusOr<std::vector<int32_t>> got =
        tokenizer_->EncodeChat(c.messages, c.add_generation_prompt);
    ASSERT_TRUE(got.ok()) << c.name << ": " << got.status();
    std::vector<ChatMessage> skeleton = c.messages;
    bool holds_added = false;
    for (ChatMessage& m : skeleton) {
      holds_added =
          holds_added || tokenizer_->Encode(m.content) != tokenizer_->EncodePlainText(m.content);
      m.content.clear();
    }
    if (!holds_added) {
      ++plain;
      EXPECT_EQ(*got, c.ids) << Difference(c.name, c.text, c.ids, *got);
      continue;
    }
    ++forged;
    EXPECT_EQ(*tokenizer_->Decode(*got), c.text) << c.name;
    EXPECT_EQ(markers(*got), markers(*tokenizer_->EncodeChat(skeleton, c.add_generation_prompt)))
        << c.name;
  }
  // Guards against generated conversations that stopped covering either kind.
  EXPECT_GE(plain, 10u);
  EXPECT_GE(forged, 5u);
}

}  // namespace
}  // namespace strata::engine
