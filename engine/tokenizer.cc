// Encoding and decoding. Loading is in tokenizer_load.cc, the chat format in tokenizer_chat.cc.
#include "engine/tokenizer.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer_added_tokens.h"
#include "engine/tokenizer_bpe.h"
#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_utf8.h"

namespace strata::engine {

using internal_tokenizer::AppendWhatwgUtf8;
using internal_tokenizer::Cat;
using internal_tokenizer::kReplacementCharacter;

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeTo(text, /*match_added_tokens=*/true, &ids);
  return ids;
}

std::vector<int32_t> Tokenizer::EncodePlainText(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeTo(text, /*match_added_tokens=*/false, &ids);
  return ids;
}

void Tokenizer::EncodeTo(std::string_view text, bool match_added_tokens,
                         std::vector<int32_t>* ids) const {
  // The reference tokenizes JavaScript strings, which hold no invalid UTF-8; decode invalid
  // input the way its TextDecoder would.
  std::string sanitized;
  if (!internal_tokenizer::IsValidUtf8(text)) {
    sanitized = internal_tokenizer::SanitizeUtf8(text);
    text = sanitized;
  }
  internal_tokenizer::MatchData match_data;
  // The split patterns with Unicode 15+ code points added to their classes are much slower;
  // they are only needed when the text holds such a code point.
  const bool exact = internal_tokenizer::ContainsUnicodeAdditions(text);
  // The normalizer is the identity (checked at load), so text goes straight to the split
  // regexes and, piece by piece, to the byte-level BPE. (With DeepSeek's split regexes no piece
  // spells a whole added token, so plain text never yields one's id; tokenizer_test checks.)
  auto encode_section = [&](std::string_view section) {
    pre_tokenizer_->Run(section, exact, match_data,
                        [&](std::string_view piece) { bpe_->Encode(piece, ids); });
  };
  if (!match_added_tokens) {
    if (!text.empty()) encode_section(text);
    return;
  }
  added_tokens_->Split(text, [&](std::string_view section, int32_t id) {
    if (id >= 0) {
      ids->push_back(id);
    } else {
      encode_section(section);
    }
  });
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  // Byte-level tokens are decoded in runs: a character may span several tokens, but not an
  // added token (the reference decodes the bytes on either side of one separately).
  std::string run;
  auto flush_run = [&] {
    if (AppendWhatwgUtf8(run, &text) != 0) text.append(kReplacementCharacter);
    run.clear();
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    switch (kind(id)) {
      case TokenKind::kNone:
        return absl::InvalidArgumentError(Cat("cannot decode ids[", i, "] = ", id,
                                              ": no token has this id (this tokenizer has ",
                                              num_tokens(), " ids, from 0)"));
      case TokenKind::kBytes:
        run.append(token_bytes(id));
        break;
      case TokenKind::kLiteral:
        flush_run();
        text.append(token_bytes(id));
        break;
    }
  }
  flush_run();
  return text;
}

std::string IncrementalDecoder::Push(int32_t id) {
  std::string out;
  switch (tokenizer_.kind(id)) {
    case Tokenizer::TokenKind::kNone:
      break;
    case Tokenizer::TokenKind::kBytes: {
      pending_.append(tokenizer_.token_bytes(id));
      const size_t held = AppendWhatwgUtf8(pending_, &out);
      pending_.erase(0, pending_.size() - held);
      break;
    }
    case Tokenizer::TokenKind::kLiteral:
      out = Flush();
      out.append(tokenizer_.token_bytes(id));
      break;
  }
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out;
  if (!pending_.empty()) {
    // Whatever is held is an incomplete sequence: one U+FFFD, as TextDecoder ends a stream.
    if (AppendWhatwgUtf8(pending_, &out) != 0) out.append(kReplacementCharacter);
    pending_.clear();
  }
  return out;
}

}  // namespace strata::engine
