#include "engine/tokenizer_regex.h"

#include <pcre2.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer_utf8.h"

namespace strata::engine::internal_tokenizer {
namespace {

// JavaScript's \s (WhiteSpace + LineTerminator) as a PCRE2 class body.
constexpr std::string_view kJsWhitespace =
    "\\x{9}-\\x{d}\\x{20}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}\\x{feff}";
// JavaScript's `.` without the s flag: anything but a line terminator.
constexpr std::string_view kJsDot = "[^\\x{a}\\x{d}\\x{2028}\\x{2029}]";

// transformers.js's PROBLEMATIC_REGEX_MAP: rewrites it applies before compiling. They are
// equivalent in PCRE2 too, but applying them keeps us on the exact same pattern text.
// BLOOM's split characters .,!?…。，、।۔، (U+2026 U+3002 U+FF0C U+3001 U+0964 U+06D4 U+060C).
#define STRATA_BLOOM_SPLIT_CHARS \
  ".,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C"
constexpr std::array<std::pair<std::string_view, std::string_view>, 2> kProblematicRegexMap = {{
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))"},
    {" ?[^(\\s|[" STRATA_BLOOM_SPLIT_CHARS "])]+", " ?[^\\s" STRATA_BLOOM_SPLIT_CHARS "]+"},
}};
#undef STRATA_BLOOM_SPLIT_CHARS

int HexValue(char c) {
  return absl::ascii_isdigit(static_cast<unsigned char>(c)) ? c - '0' : (c | 0x20) - 'a' + 10;
}

// Parses the hex digits pattern[begin, end) into *value.
bool ParseHex(std::string_view pattern, size_t begin, size_t end, uint32_t* value) {
  if (begin >= end || end > pattern.size()) return false;
  *value = 0;
  for (size_t i = begin; i < end; ++i) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(pattern[i]))) return false;
    *value = *value * 16 + static_cast<uint32_t>(HexValue(pattern[i]));
  }
  return true;
}

// Parses \uXXXX or \u{X...} with pattern[pos] == 'u'; stores the code point and how many
// pattern bytes the escape takes from the 'u' on.
bool ParseUnicodeEscape(std::string_view pattern, size_t pos, uint32_t* cp, size_t* consumed) {
  if (pos + 1 < pattern.size() && pattern[pos + 1] == '{') {
    const size_t close = pattern.find('}', pos + 2);
    if (close == std::string_view::npos || close - pos - 2 > 6) return false;
    if (!ParseHex(pattern, pos + 2, close, cp) || *cp > 0x10FFFF) return false;
    *consumed = close - pos + 1;
    return true;
  }
  if (!ParseHex(pattern, pos + 1, pos + 5, cp)) return false;
  *consumed = 5;
  // A surrogate pair written as two escapes is one code point in "u" mode.
  uint32_t low;
  if (*cp >= 0xD800 && *cp <= 0xDBFF && pos + 10 < pattern.size() && pattern[pos + 5] == '\\' &&
      pattern[pos + 6] == 'u' && ParseHex(pattern, pos + 7, pos + 11, &low) && low >= 0xDC00 &&
      low <= 0xDFFF) {
    *cp = 0x10000 + ((*cp - 0xD800) << 10) + (low - 0xDC00);
    *consumed = 11;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> TranslateJsRegex(std::string_view js_pattern, bool unicode_additions) {
  // transformers.js createPattern(): pattern.replace(/\\([#&~])/g, "$1"), then the map.
  std::string pattern;
  pattern.reserve(js_pattern.size());
  for (size_t i = 0; i < js_pattern.size(); ++i) {
    if (js_pattern[i] == '\\' && i + 1 < js_pattern.size() &&
        (js_pattern[i + 1] == '#' || js_pattern[i + 1] == '&' || js_pattern[i + 1] == '~')) {
      continue;
    }
    pattern.push_back(js_pattern[i]);
  }
  for (const auto& [from, to] : kProblematicRegexMap) {
    pattern = absl::StrReplaceAll(pattern, {{AbslView(from), AbslView(to)}});
  }

  std::string out;
  out.reserve(pattern.size() * 2);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != '\\') {
      if (in_class) {
        if (c == ']') {
          in_class = false;
        } else if (c == '[') {
          out.append("\\[");  // literal in JavaScript; PCRE2 would read [: as a POSIX class
          continue;
        }
      } else if (c == '[') {
        in_class = true;
        out.push_back(c);
        // A ']' right after '[' or '[^' closes the class in JavaScript (empty class); PCRE2
        // reads it that way too with PCRE2_ALLOW_EMPTY_CLASS.
        if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
        continue;
      } else if (c == '.') {
        out.append(kJsDot);
        continue;
      }
      out.push_back(c);
      continue;
    }
    if (i + 1 >= pattern.size()) return absl::InvalidArgumentError("pattern ends with '\\'");
    const char e = pattern[++i];
    switch (e) {
      case 's':
        if (in_class) {
          out.append(kJsWhitespace);
        } else {
          CatTo(&out, "[", kJsWhitespace, "]");
        }
        break;
      case 'S':
        if (in_class) {
          return absl::UnimplementedError("\\S inside a character class is not supported");
        }
        CatTo(&out, "[^", kJsWhitespace, "]");
        break;
      case 'v':
        out.append("\\x{b}");
        break;
      case 'u': {
        uint32_t cp;
        size_t consumed;
        if (!ParseUnicodeEscape(pattern, i, &cp, &consumed)) {
          return absl::InvalidArgumentError(Cat("bad \\u escape at offset ", i - 1));
        }
        CatTo(&out, "\\x{", absl::Hex(cp), "}");
        i += consumed - 1;
        break;
      }
      case 'p':
      case 'P': {
        size_t end = pattern.find('}', i);
        if (i + 1 >= pattern.size() || pattern[i + 1] != '{' || end == std::string_view::npos) {
          return absl::InvalidArgumentError(
              Cat("bad \\", std::string(1, e), " escape at offset ", i - 1));
        }
        std::string_view name = std::string_view(pattern).substr(i + 2, end - i - 2);
        std::string_view additions = unicode_additions && name.size() == 1
                                         ? UnicodePropertyAdditions(name[0])
                                         : std::string_view();
        std::string property = Cat("\\", std::string(1, e), "{", name, "}");
        i = end;
        if (additions.empty()) {
          out.append(property);
        } else if (in_class) {
          if (e == 'P') {
            return absl::UnimplementedError(
                Cat(property, " inside a character class is not supported"));
          }
          CatTo(&out, property, additions);
        } else {
          CatTo(&out, e == 'P' ? "[^" : "[", "\\p{", name, "}", additions, "]");
        }
        break;
      }
      default:
        out.push_back('\\');
        out.push_back(e);
        break;
    }
  }
  return out;
}

MatchData::MatchData() : data_(pcre2_match_data_create(1, nullptr)) {}
MatchData::~MatchData() { pcre2_match_data_free(data_); }

absl::StatusOr<SplitRegex::Compiled> SplitRegex::CompileTranslated(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // No PCRE2_UCP: \d \w \b stay ASCII, as in JavaScript even with the "u" flag.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_ALLOW_EMPTY_CLASS | PCRE2_DOLLAR_ENDONLY,
                                   &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(error_code, message.data(), message.size());
    return absl::InvalidArgumentError(
        Cat("PCRE2 cannot compile the pattern (as translated: ", pattern, ") at offset ",
            error_offset, ": ", reinterpret_cast<char*>(message.data())));
  }
  // Without JIT (a PCRE2 built without it) the interpreter gives the same results, slower.
  return Compiled{code, pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0};
}

absl::StatusOr<std::unique_ptr<SplitRegex>> SplitRegex::Compile(std::string_view js_pattern) {
  absl::StatusOr<std::string> exact_pattern = TranslateJsRegex(js_pattern, true);
  if (!exact_pattern.ok()) return exact_pattern.status();
  absl::StatusOr<std::string> fast_pattern = TranslateJsRegex(js_pattern, false);
  if (!fast_pattern.ok()) return fast_pattern.status();
  absl::StatusOr<Compiled> exact = CompileTranslated(*exact_pattern);
  if (!exact.ok()) return exact.status();
  Compiled fast;
  if (*fast_pattern != *exact_pattern) {
    absl::StatusOr<Compiled> compiled = CompileTranslated(*fast_pattern);
    if (!compiled.ok()) {
      pcre2_code_free(exact->code);
      return compiled.status();
    }
    fast = *compiled;
  }
  return std::unique_ptr<SplitRegex>(new SplitRegex(*exact, fast));
}

SplitRegex::~SplitRegex() {
  pcre2_code_free(exact_.code);
  pcre2_code_free(fast_.code);  // accepts nullptr
}

bool SplitRegex::Find(const Compiled& compiled, std::string_view text, size_t start,
                      MatchData& match_data, size_t* begin, size_t* end) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = PCRE2_ERROR_JIT_STACKLIMIT;
  if (compiled.jit) {
    rc = pcre2_jit_match(compiled.code, subject, text.size(), start, 0, match_data.get(), nullptr);
  }
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
    // The JIT ran out of its (machine) stack: the interpreter keeps its backtracking state on
    // the heap and gets further. The text was validated before, so skip the UTF check.
    rc = pcre2_match(compiled.code, subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                     match_data.get(), nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    // Still failing (heap or match limit on pathological input): treat the rest of the text as
    // one match rather than fail the request. Not reached by any input we know of.
    *begin = start;
    *end = text.size();
    return start < text.size();
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
  *begin = ovector[0];
  *end = ovector[1];
  return true;
}

void SplitRegex::Split(std::string_view text, bool exact, MatchData& match_data,
                       absl::FunctionRef<void(std::string_view)> emit) const {
  const Compiled& compiled = exact || fast_.code == nullptr ? exact_ : fast_;
  size_t prev = 0;
  size_t start = 0;
  size_t begin, end;
  while (start <= text.size() && Find(compiled, text, start, match_data, &begin, &end)) {
    if (begin > prev) emit(text.substr(prev, begin - prev));
    if (end > begin) {
      emit(text.substr(begin, end - begin));
      start = end;
    } else {
      // An empty match: String.prototype.matchAll moves on by one code point ("u" flag).
      if (begin >= text.size()) break;
      start = begin + Utf8SequenceLength(static_cast<uint8_t>(text[begin]));
    }
    prev = end;
  }
  if (prev < text.size()) emit(text.substr(prev));
}

void PreTokenizer::RunFrom(size_t level, std::string_view text, bool exact, MatchData& match_data,
                           absl::FunctionRef<void(std::string_view)> emit) const {
  if (level == splits_.size()) {
    emit(text);
    return;
  }
  splits_[level]->Split(text, exact, match_data, [&](std::string_view piece) {
    RunFrom(level + 1, piece, exact, match_data, emit);
  });
}

namespace {

// The code points of all UnicodePropertyAdditions classes, as sorted, merged ranges.
std::vector<std::pair<uint32_t, uint32_t>> ParseAdditionRanges() {
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (char property : std::string_view("LNPSM")) {
    std::string_view body = UnicodePropertyAdditions(property);
    // The generated bodies are "\x{H}" or "\x{H}-\x{H}" items.
    auto parse = [&body](uint32_t* cp) {
      if (body.substr(0, 3) != "\\x{") return false;
      const size_t close = body.find('}');
      if (close == std::string_view::npos) return false;
      *cp = 0;
      for (char c : body.substr(3, close - 3)) *cp = *cp * 16 + static_cast<uint32_t>(HexValue(c));
      body.remove_prefix(close + 1);
      return true;
    };
    uint32_t first, last;
    while (parse(&first)) {
      last = first;
      if (!body.empty() && body[0] == '-') {
        body.remove_prefix(1);
        if (!parse(&last)) break;
      }
      ranges.emplace_back(first, last);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<uint32_t, uint32_t>> merged;
  for (const auto& r : ranges) {
    if (!merged.empty() && r.first <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

}  // namespace

bool ContainsUnicodeAdditions(std::string_view text) {
  static const auto* const ranges =
      new std::vector<std::pair<uint32_t, uint32_t>>(ParseAdditionRanges());
  if (ranges->empty()) return false;
  const uint32_t lowest = ranges->front().first;
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t len;
    const uint32_t cp = DecodeCodePoint(text, pos, &len);
    pos += len;
    if (cp < lowest) continue;
    auto it = std::upper_bound(ranges->begin(), ranges->end(), std::make_pair(cp, ~uint32_t{0}));
    if (it != ranges->begin() && std::prev(it)->second >= cp) return true;
  }
  return false;
}

}  // namespace strata::engine::internal_tokenizer
