#include "engine/tokenizer_added_tokens.h"

#include <cstring>
#include <utility>

#include "engine/tokenizer_utf8.h"

namespace strata::engine::internal_tokenizer {

AddedTokens::AddedTokens(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  node_token_.push_back(-1);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;  // an empty token never matches (as in the reference)
    // A later token with the same content replaces the earlier one, like the reference's maps.
    by_content_[content] = static_cast<int32_t>(t);
    any_strip_ = any_strip_ || tokens_[t].lstrip || tokens_[t].rstrip;
    int32_t node = 0;
    for (char c : content) {
      const uint32_t key = (static_cast<uint32_t>(node) << 8) | static_cast<uint8_t>(c);
      auto [it, inserted] = edges_.try_emplace(key, static_cast<int32_t>(node_token_.size()));
      if (inserted) node_token_.push_back(-1);
      node = it->second;
    }
    node_token_[node] = static_cast<int32_t>(t);
    const auto first = static_cast<uint8_t>(content[0]);
    if (!first_byte_[first]) {
      first_byte_[first] = true;
      ++first_byte_count_;
      only_first_byte_ = content[0];
    }
  }
}

const AddedToken* AddedTokens::Find(std::string_view content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

int32_t AddedTokens::LongestMatch(std::string_view text, size_t pos) const {
  int32_t node = 0;
  int32_t match = -1;
  for (size_t j = pos; j < text.size(); ++j) {
    auto it = edges_.find((static_cast<uint32_t>(node) << 8) | static_cast<uint8_t>(text[j]));
    if (it == edges_.end()) break;
    node = it->second;
    if (node_token_[node] >= 0) match = node_token_[node];
  }
  return match;
}

void AddedTokens::Split(std::string_view text,
                        absl::FunctionRef<void(std::string_view, int32_t)> emit) const {
  struct Section {
    std::string_view text;
    int32_t token;  // index into tokens_, or -1
  };
  std::vector<Section> sections;
  size_t start = 0;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (first_byte_count_ == 0) break;
    if (first_byte_count_ == 1) {
      const void* hit = std::memchr(text.data() + i, only_first_byte_, n - i);
      if (hit == nullptr) break;
      i = static_cast<size_t>(static_cast<const char*>(hit) - text.data());
    } else if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    const int32_t token = LongestMatch(text, i);
    if (token < 0) {
      ++i;
      continue;
    }
    if (i > start) sections.push_back({text.substr(start, i - start), -1});
    sections.push_back({text.substr(i, tokens_[token].content.size()), token});
    i += tokens_[token].content.size();
    start = i;
  }
  if (start < n) sections.push_back({text.substr(start), -1});

  if (any_strip_) {
    // The reference identifies added tokens by their text, section by section, after the
    // trimming so far; trimming a token's own text (content with edge whitespace) unmakes it.
    auto lookup = [this](std::string_view section) {
      auto it = by_content_.find(section);
      return it == by_content_.end() ? -1 : it->second;
    };
    for (size_t s = 0; s < sections.size(); ++s) {
      const int32_t t = lookup(sections[s].text);
      if (t < 0) continue;
      if (tokens_[t].lstrip && s > 0) {
        sections[s - 1].text = TrimJsWhitespaceEnd(sections[s - 1].text);
      }
      if (tokens_[t].rstrip && s + 1 < sections.size()) {
        sections[s + 1].text = TrimJsWhitespaceStart(sections[s + 1].text);
      }
    }
    for (Section& section : sections) section.token = lookup(section.text);
  }
  for (const Section& section : sections) {
    if (section.text.empty()) continue;
    emit(section.text, section.token >= 0 ? tokens_[section.token].id : -1);
  }
}

}  // namespace strata::engine::internal_tokenizer
