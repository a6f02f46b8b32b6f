// Added tokens (special tokens such as "<｜begin▁of▁sentence｜>" and chat markers such as
// "<｜User｜>"): found in the text before any other processing, longest match first, scanning
// left to right (transformers.js's DictionarySplitter), then the lstrip / rstrip flags trim
// JavaScript whitespace off the neighbouring text. Immutable; thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace strata::engine::internal_tokenizer {

struct AddedToken {
  int32_t id;
  std::string content;
  bool lstrip = false;
  bool rstrip = false;
};

class AddedTokens {
 public:
  explicit AddedTokens(std::vector<AddedToken> tokens);

  // Calls emit(section, id) for each part of well-formed UTF-8 `text`, in order: id >= 0 for an
  // added token, -1 for text between them (never empty).
  void Split(std::string_view text,
             absl::FunctionRef<void(std::string_view section, int32_t id)> emit) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

  // The token whose content is exactly `content`, or nullptr.
  const AddedToken* Find(std::string_view content) const;

 private:
  // Index into tokens_ of the longest token starting at text[pos], or -1.
  int32_t LongestMatch(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<std::string_view, int32_t> by_content_;  // views into tokens_
  // Byte trie over the contents: edges_[node << 8 | byte] = child; node 0 is the root.
  absl::flat_hash_map<uint32_t, int32_t> edges_;
  std::vector<int32_t> node_token_;  // index into tokens_ ending at each node, or -1
  std::array<bool, 256> first_byte_{};
  int first_byte_count_ = 0;
  char only_first_byte_ = 0;  // the first byte when all contents share it (memchr fast path)
  bool any_strip_ = false;
};

}  // namespace strata::engine::internal_tokenizer
