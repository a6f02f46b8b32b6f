// The tokenizer's regex pre-tokenizer: HF `Split` patterns, written for JavaScript's RegExp with
// the "u" flag by the reference implementation, translated to PCRE2 (8-bit, UTF, JIT) so that
// they match exactly what JavaScript matches, and applied like transformers.js's regexSplit.
// Compiled patterns are immutable and shared; each calling thread brings its own match data.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace strata::engine::internal_tokenizer {

// Rewrites a JavaScript ("gu" flags) pattern into PCRE2 syntax with the same meaning:
// \s and \S become JavaScript's Unicode whitespace set, `.` excludes JavaScript's line
// terminators, \uXXXX and \u{X} become \x{X}, \v is VT, and \p{L} \p{N} \p{P} \p{S} \p{M} gain
// the code points Node's newer Unicode assigns to them. Also applies the edits transformers.js
// makes before compiling (dropping the backslash in \# \& \~, its PROBLEMATIC_REGEX_MAP).
// Errors on constructs with no PCRE2 equivalent here (\S or \P{..} inside a class).
// With `unicode_additions` false the properties keep PCRE2's own (older) tables: the result then
// matches like the exact one on any text for which ContainsUnicodeAdditions is false.
absl::StatusOr<std::string> TranslateJsRegex(std::string_view js_pattern,
                                             bool unicode_additions = true);

// Class body (PCRE2 syntax) with the code points JavaScript's \p{<property>} matches beyond
// the system PCRE2's tables; empty when there are none. Generated: engine/tokenizer_unicode.cc.
std::string_view UnicodePropertyAdditions(char property);

// True when well-formed UTF-8 `text` holds a code point of any UnicodePropertyAdditions class
// (code points assigned in Unicode 15 and later: rare in practice).
bool ContainsUnicodeAdditions(std::string_view text);

// Per-thread scratch for matching; create with SplitRegex::NewMatchData.
class MatchData {
 public:
  MatchData();
  ~MatchData();
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_real_match_data_8* get() const { return data_; }

 private:
  pcre2_real_match_data_8* data_;
};

// One compiled split pattern. Thread-safe: Split may run on many threads at once.
class SplitRegex {
 public:
  // `js_pattern` as written in tokenizer.json.
  static absl::StatusOr<std::unique_ptr<SplitRegex>> Compile(std::string_view js_pattern);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Splits well-formed UTF-8 `text` into the non-empty gaps between matches and the matches
  // themselves, in order (HF behaviour "Isolated"), calling `emit` for each. `exact` selects the
  // pattern with the Unicode additions; pass ContainsUnicodeAdditions(text) (or true).
  void Split(std::string_view text, bool exact, MatchData& match_data,
             absl::FunctionRef<void(std::string_view)> emit) const;

 private:
  // A compiled pattern. PCRE2 checks the additions' explicit ranges one by one for every
  // character, which makes matching several times slower, hence the second pattern without them.
  struct Compiled {
    pcre2_real_code_8* code = nullptr;
    bool jit = false;
  };
  SplitRegex(Compiled exact, Compiled fast) : exact_(exact), fast_(fast) {}
  static absl::StatusOr<Compiled> CompileTranslated(const std::string& pattern);
  // Next match at or after `start`: true and [*begin, *end), or false when there is none.
  static bool Find(const Compiled& compiled, std::string_view text, size_t start,
                   MatchData& match_data, size_t* begin, size_t* end);

  Compiled exact_;
  Compiled fast_;  // code == nullptr: the same as exact_
};

// A sequence of split patterns, each applied to every piece the previous one produced.
class PreTokenizer {
 public:
  explicit PreTokenizer(std::vector<std::unique_ptr<SplitRegex>> splits)
      : splits_(std::move(splits)) {}

  // `exact` as for SplitRegex::Split.
  void Run(std::string_view text, bool exact, MatchData& match_data,
           absl::FunctionRef<void(std::string_view)> emit) const {
    RunFrom(0, text, exact, match_data, emit);
  }

 private:
  void RunFrom(size_t level, std::string_view text, bool exact, MatchData& match_data,
               absl::FunctionRef<void(std::string_view)> emit) const;

  std::vector<std::unique_ptr<SplitRegex>> splits_;
};

}  // namespace strata::engine::internal_tokenizer
