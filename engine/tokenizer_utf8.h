// Text helpers private to the tokenizer: WHATWG-compatible decoding with replacement (what the
// reference JavaScript tokenizer sees after TextDecoder), JavaScript's whitespace set, and the
// GPT-2 byte-level alphabet. Stateless functions; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace strata::engine::internal_tokenizer {

// The system's abseil has its own string_view type (ABSL_OPTION_USE_STD_STRING_VIEW 0); the
// tokenizer works in std::string_view (simdjson's, PCRE2's and the public API's) and converts
// at absl calls with these.
inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }
template <typename T>
const T& AbslArg(const T& v) {
  return v;
}
inline absl::string_view AbslArg(std::string_view s) { return AbslView(s); }
// absl::StrCat / absl::StrAppend accepting std::string_view arguments too.
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(AbslArg(args)...);
}
template <typename... Args>
void CatTo(std::string* out, const Args&... args) {
  absl::StrAppend(out, AbslArg(args)...);
}

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Appends `bytes` to `out` decoded like the WHATWG "utf-8 decode without BOM" algorithm: every
// maximal invalid subpart becomes one U+FFFD. A trailing sequence that is incomplete but could
// still become valid is not decoded; its length (0..3) is returned so a streaming caller can keep
// it for later. Callers at end of input append kReplacementCharacter when the result is non-zero.
size_t AppendWhatwgUtf8(std::string_view bytes, std::string* out);

// `bytes` decoded as above with any incomplete tail replaced too (TextDecoder at end of input).
std::string SanitizeUtf8(std::string_view bytes);

// True when `bytes` is well-formed UTF-8 (no surrogates, no overlongs, at most U+10FFFF).
bool IsValidUtf8(std::string_view bytes);

// Length in bytes of the UTF-8 sequence starting with `lead` in well-formed text (1..4).
inline size_t Utf8SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the code point at text[pos] of well-formed UTF-8 text and stores its length in *len.
uint32_t DecodeCodePoint(std::string_view text, size_t pos, size_t* len);

// Appends `cp` (at most U+10FFFF, not a surrogate) encoded as UTF-8.
void AppendCodePoint(uint32_t cp, std::string* out);

// JavaScript's WhiteSpace and LineTerminator code points: what `\s` and String.prototype.trim
// mean in the reference implementation (Zs plus TAB, LF, VT, FF, CR, U+2028, U+2029, U+FEFF).
bool IsJsWhitespace(uint32_t cp);

// Well-formed text with JavaScript whitespace removed from the end / the start.
std::string_view TrimJsWhitespaceEnd(std::string_view text);
std::string_view TrimJsWhitespaceStart(std::string_view text);

// GPT-2's byte-level alphabet: byte b is written as the code point ByteToCodePoint(b), so that
// every byte has a printable, non-space representation in the vocabulary.
uint32_t ByteToCodePoint(uint8_t byte);
// The inverse; -1 for code points outside the alphabet.
int CodePointToByte(uint32_t cp);

}  // namespace strata::engine::internal_tokenizer
