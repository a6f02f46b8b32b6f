// Fuzzes the DeepSeek tokenizer (engine/tokenizer.h) with the real tokenizer files (the folder
// configured as STRATA_TOKENIZER_DIR; the environment variable of that name overrides it). The
// first byte picks the operation on the rest:
//   0: Encode(text)          ids within the vocabulary, decoding back to the text (invalid UTF-8
//                            read as TextDecoder reads it: each maximal invalid subpart is U+FFFD);
//   1: EncodePlainText(text) the same, and no added token's id ever appears;
//   2: ids (3 bytes each, some past the vocabulary) through IncrementalDecoder: every chunk is
//      whole UTF-8 characters and the chunks join to Decode of the ids that have a token;
//   3-7: a chat (messages separated by 0x1E, each one role byte then its content; bit 3 of the
//      first byte: add_generation_prompt) through
//      ApplyChatTemplate and EncodeChat: both accept or refuse it alike; EncodeChat decodes to the
//      template's text, and its added-token ids are the template's markers only — the same
//      whatever the messages say, so no content can forge a role or end a turn.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_utf8.h"
#include "simdjson.h"

namespace {

using strata::engine::ChatMessage;
using strata::engine::Tokenizer;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "tokenizer_fuzzer: %s\n", what.c_str());
  std::abort();
}

struct Fixture {
  std::unique_ptr<Tokenizer> tokenizer;
  absl::flat_hash_set<int32_t> added;  // ids of tokenizer.json's added_tokens
};

const Fixture& Get() {
  static const Fixture* fixture = [] {
    const char* env = std::getenv("STRATA_TOKENIZER_DIR");
    const std::string dir = env != nullptr && *env != '\0' ? env : STRATA_TOKENIZER_DIR_DEFAULT;
    if (dir.empty()) {
      Fail(
          "no tokenizer: set STRATA_TOKENIZER_DIR or configure with -DSTRATA_TOKENIZER_DIR=<the "
          "folder deploy/tokenizer/fetch.sh prints>");
    }
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir);
    if (!tokenizer.ok()) Fail(tokenizer.status().ToString());
    auto* f = new Fixture{std::move(*tokenizer), {}};
    simdjson::dom::parser parser;
    simdjson::padded_string json;
    simdjson::dom::array added;
    if (simdjson::padded_string::load(dir + "/tokenizer.json").get(json) ||
        parser.parse(json)["added_tokens"].get(added)) {
      Fail("cannot read added_tokens from " + dir + "/tokenizer.json");
    }
    for (auto token : added) {
      int64_t id;
      if (token["id"].get(id)) Fail("an added token without an id");
      f->added.insert(static_cast<int32_t>(id));
    }
    return f;
  }();
  return *fixture;
}

std::string DecodeOrDie(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  absl::StatusOr<std::string> text = tok.Decode(ids);
  if (!text.ok()) Fail("Decode of the tokenizer's own ids failed: " + text.status().ToString());
  return *std::move(text);
}

void CheckIds(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.num_tokens()) Fail("id " + std::to_string(id) + " out of range");
  }
}

std::vector<int32_t> AddedIds(const Fixture& f, const std::vector<int32_t>& ids) {
  std::vector<int32_t> out;
  for (int32_t id : ids) {
    if (f.added.contains(id)) out.push_back(id);
  }
  return out;
}

void FuzzEncode(const Fixture& f, std::string_view text, bool plain) {
  const Tokenizer& tok = *f.tokenizer;
  const std::vector<int32_t> ids = plain ? tok.EncodePlainText(text) : tok.Encode(text);
  CheckIds(tok, ids);
  const std::string want = strata::engine::internal_tokenizer::SanitizeUtf8(text);
  if (DecodeOrDie(tok, ids) != want) Fail("Decode(Encode(text)) is not the text");
  if (plain && !AddedIds(f, ids).empty()) Fail("EncodePlainText gave an added token's id");
}

void FuzzIncremental(const Fixture& f, std::string_view bytes) {
  const Tokenizer& tok = *f.tokenizer;
  std::vector<int32_t> ids, with_token;
  for (size_t i = 0; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(bytes[i]) | static_cast<uint8_t>(bytes[i + 1]) << 8 |
                       static_cast<uint32_t>(static_cast<uint8_t>(bytes[i + 2])) << 16;
    const auto id = static_cast<int32_t>(v % static_cast<uint32_t>(tok.num_tokens() + 512));
    ids.push_back(id);
    if (tok.Decode({&id, 1}).ok()) with_token.push_back(id);
  }
  strata::engine::IncrementalDecoder decoder(tok);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string chunk = decoder.Push(id);
    if (!strata::engine::internal_tokenizer::IsValidUtf8(chunk)) Fail("a chunk splits a character");
    streamed += chunk;
  }
  const std::string rest = decoder.Flush();
  if (!strata::engine::internal_tokenizer::IsValidUtf8(rest)) Fail("Flush splits a character");
  streamed += rest;
  if (streamed != DecodeOrDie(tok, with_token)) Fail("the streamed text is not Decode's");
}

void FuzzChat(const Fixture& f, std::string_view bytes, bool add_generation_prompt) {
  static constexpr std::string_view kRoles[] = {"system", "user", "assistant", "tool", "bot"};
  std::vector<ChatMessage> messages, blank;
  while (!bytes.empty()) {
    const size_t end = bytes.find('\x1E');
    const std::string_view m = bytes.substr(0, end);
    if (!m.empty()) {
      const std::string role(kRoles[static_cast<uint8_t>(m[0]) % std::size(kRoles)]);
      messages.push_back({role, std::string(m.substr(1))});
      blank.push_back({role, ""});
    }
    if (end == std::string_view::npos) break;
    bytes.remove_prefix(end + 1);
  }
  const Tokenizer& tok = *f.tokenizer;
  const absl::StatusOr<std::string> text = tok.ApplyChatTemplate(messages, add_generation_prompt);
  const absl::StatusOr<std::vector<int32_t>> ids = tok.EncodeChat(messages, add_generation_prompt);
  if (text.ok() != ids.ok()) Fail("ApplyChatTemplate and EncodeChat disagree on a chat");
  if (!text.ok()) {
    if (text.status().code() != absl::StatusCode::kInvalidArgument) {
      Fail("a chat refused with " + text.status().ToString());
    }
    return;
  }
  CheckIds(tok, *ids);
  if (DecodeOrDie(tok, *ids) != strata::engine::internal_tokenizer::SanitizeUtf8(*text)) {
    Fail("EncodeChat does not decode to ApplyChatTemplate's text");
  }
  const absl::StatusOr<std::vector<int32_t>> markers = tok.EncodeChat(blank, add_generation_prompt);
  if (!markers.ok() || AddedIds(f, *ids) != AddedIds(f, *markers)) {
    Fail("a message's content changed the chat's control tokens");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixture& f = Get();
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0:
      FuzzEncode(f, rest, false);
      break;
    case 1:
      FuzzEncode(f, rest, true);
      break;
    case 2:
      FuzzIncremental(f, rest);
      break;
    default:
      FuzzChat(f, rest, data[0] & 8);
      break;
  }
  return 0;
}
