// Tokenizer::Load: reads tokenizer.json and tokenizer_config.json (simdjson DOM) and builds the
// id-based tables the encoder and decoder use. Accepts the parts of the Hugging Face format the
// DeepSeek tokenizer uses and reports anything else as Unimplemented rather than guessing.
#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_added_tokens.h"
#include "engine/tokenizer_bpe.h"
#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_utf8.h"
#include "simdjson.h"

namespace strata::engine {
namespace {

using internal_tokenizer::AbslView;
using internal_tokenizer::Cat;
using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;

// Far above any real vocabulary; guards the tables against absurd ids in a corrupt file.
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;

// A parsed JSON file and the helpers that turn type mismatches into errors naming the file and
// the JSON path ("/dir/tokenizer.json: model.merges[12]: expected a string").
class JsonFile {
 public:
  absl::Status Open(const std::string& path) {
    path_ = path;
    absl::StatusOr<std::string> contents = ReadFile(path);
    if (!contents.ok()) {
      return absl::Status(contents.status().code(),
                          Cat(contents.status().message(),
                              " (run `make tokenizer` / deploy/tokenizer/fetch.sh to "
                              "fetch the tokenizer files)"));
    }
    padded_ = simdjson::padded_string(*contents);
    simdjson::error_code error = parser_.parse(padded_).get(root_);
    if (error != simdjson::SUCCESS) {
      return absl::InvalidArgumentError(
          Cat(path_, ": not valid JSON: ", simdjson::error_message(error)));
    }
    return absl::OkStatus();
  }

  element root() const { return root_; }

  absl::Status Error(std::string_view where, std::string_view what,
                     absl::StatusCode code = absl::StatusCode::kInvalidArgument) const {
    return absl::Status(code, Cat(path_, ": ", where, ": ", what));
  }
  absl::Status Unsupported(std::string_view where, std::string_view what) const {
    return Error(where, Cat(what, " (not supported by Strata's tokenizer)"),
                 absl::StatusCode::kUnimplemented);
  }

  absl::StatusOr<object> Object(element e, std::string_view where) const {
    object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return Error(where, "expected an object");
    return o;
  }
  absl::StatusOr<array> Array(element e, std::string_view where) const {
    array a;
    if (e.get_array().get(a) != simdjson::SUCCESS) return Error(where, "expected an array");
    return a;
  }
  absl::StatusOr<std::string_view> String(element e, std::string_view where) const {
    std::string_view s;
    if (e.get_string().get(s) != simdjson::SUCCESS) return Error(where, "expected a string");
    return s;
  }
  absl::StatusOr<int64_t> Int(element e, std::string_view where) const {
    int64_t v;
    if (e.get_int64().get(v) != simdjson::SUCCESS) return Error(where, "expected an integer");
    return v;
  }
  // A member that must be present.
  absl::StatusOr<element> Field(object o, std::string_view key, std::string_view where) const {
    element e;
    if (o.at_key(key).get(e) != simdjson::SUCCESS) {
      return Error(where, Cat("\"", key, "\" is missing"));
    }
    return e;
  }
  // A boolean member; absent or null reads as `absent`.
  absl::StatusOr<bool> Bool(object o, std::string_view key, std::string_view where,
                            bool absent) const {
    element e;
    if (o.at_key(key).get(e) != simdjson::SUCCESS || e.is_null()) return absent;
    bool b;
    if (e.get_bool().get(b) != simdjson::SUCCESS) {
      return Error(Cat(where, ".", key), "expected true or false");
    }
    return b;
  }
  absl::StatusOr<std::string_view> Type(object o, std::string_view where) const {
    STRATA_ASSIGN_OR_RETURN(element type, Field(o, "type", where));
    return String(type, Cat(where, ".type"));
  }

 private:
  std::string path_;
  simdjson::padded_string padded_;
  simdjson::dom::parser parser_;
  element root_;
};

// transformers.js escapeRegExp, for Split patterns given as a literal string.
std::string EscapeJsRegex(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view(".*+?^${}()|[]\\").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

// Builds a Tokenizer; a friend so that it can fill the private tables.
class TokenizerLoader {
 public:
  explicit TokenizerLoader(const std::string& dir)
      : json_path_(dir + "/tokenizer.json"), config_path_(dir + "/tokenizer_config.json") {}

  absl::StatusOr<std::unique_ptr<Tokenizer>> Load() {
    tokenizer_.reset(new Tokenizer());
    STRATA_RETURN_IF_ERROR(json_.Open(json_path_));
    STRATA_ASSIGN_OR_RETURN(object root, json_.Object(json_.root(), "top level"));
    STRATA_RETURN_IF_ERROR(CheckNormalizer(root));
    STRATA_RETURN_IF_ERROR(LoadPreTokenizer(root));
    STRATA_RETURN_IF_ERROR(CheckDecoderAndPostProcessor(root));
    STRATA_RETURN_IF_ERROR(LoadModel(root));
    STRATA_RETURN_IF_ERROR(LoadAddedTokens(root));
    STRATA_RETURN_IF_ERROR(BuildDecodeTable());
    STRATA_RETURN_IF_ERROR(LoadConfig());
    return std::move(tokenizer_);
  }

 private:
  // Only identity normalizers: null, or Sequences of nothing else.
  absl::Status CheckNormalizer(object root) {
    element e;
    if (root.at_key("normalizer").get(e) != simdjson::SUCCESS || e.is_null()) {
      return absl::OkStatus();
    }
    return CheckIdentityNormalizer(e, "normalizer");
  }
  absl::Status CheckIdentityNormalizer(element e, const std::string& where) {
    STRATA_ASSIGN_OR_RETURN(object o, json_.Object(e, where));
    STRATA_ASSIGN_OR_RETURN(std::string_view type, json_.Type(o, where));
    if (type != "Sequence") return json_.Unsupported(where, Cat("type \"", type, "\""));
    STRATA_ASSIGN_OR_RETURN(element list, json_.Field(o, "normalizers", where));
    STRATA_ASSIGN_OR_RETURN(array items, json_.Array(list, where + ".normalizers"));
    size_t i = 0;
    for (element item : items) {
      STRATA_RETURN_IF_ERROR(CheckIdentityNormalizer(item, Cat(where, ".normalizers[", i++, "]")));
    }
    return absl::OkStatus();
  }

  absl::Status LoadPreTokenizer(object root) {
    STRATA_ASSIGN_OR_RETURN(element e, json_.Field(root, "pre_tokenizer", "top level"));
    std::vector<std::unique_ptr<internal_tokenizer::SplitRegex>> splits;
    bool byte_level = false;
    STRATA_RETURN_IF_ERROR(AddPreTokenizer(e, "pre_tokenizer", &splits, &byte_level));
    if (!byte_level) return json_.Unsupported("pre_tokenizer", "no ByteLevel step");
    tokenizer_->pre_tokenizer_ =
        std::make_unique<internal_tokenizer::PreTokenizer>(std::move(splits));
    return absl::OkStatus();
  }
  absl::Status AddPreTokenizer(element e, const std::string& where,
                               std::vector<std::unique_ptr<internal_tokenizer::SplitRegex>>* splits,
                               bool* byte_level) {
    STRATA_ASSIGN_OR_RETURN(object o, json_.Object(e, where));
    STRATA_ASSIGN_OR_RETURN(std::string_view type, json_.Type(o, where));
    if (type == "Sequence") {
      STRATA_ASSIGN_OR_RETURN(element list, json_.Field(o, "pretokenizers", where));
      STRATA_ASSIGN_OR_RETURN(array items, json_.Array(list, where + ".pretokenizers"));
      size_t i = 0;
      for (element item : items) {
        STRATA_RETURN_IF_ERROR(
            AddPreTokenizer(item, Cat(where, ".pretokenizers[", i++, "]"), splits, byte_level));
      }
      return absl::OkStatus();
    }
    if (*byte_level) return json_.Unsupported(where, "a pre-tokenizer after ByteLevel");
    if (type == "ByteLevel") {
      STRATA_ASSIGN_OR_RETURN(bool prefix, json_.Bool(o, "add_prefix_space", where, false));
      // transformers.js defaults use_regex to true (the GPT-2 split regex).
      STRATA_ASSIGN_OR_RETURN(bool use_regex, json_.Bool(o, "use_regex", where, true));
      if (prefix) return json_.Unsupported(where, "add_prefix_space true");
      if (use_regex) return json_.Unsupported(where, "use_regex true (or absent)");
      *byte_level = true;
      return absl::OkStatus();
    }
    if (type != "Split") return json_.Unsupported(where, Cat("type \"", type, "\""));
    STRATA_ASSIGN_OR_RETURN(element behavior_e, json_.Field(o, "behavior", where));
    STRATA_ASSIGN_OR_RETURN(std::string_view behavior,
                            json_.String(behavior_e, where + ".behavior"));
    if (behavior != "Isolated") {
      return json_.Unsupported(where, Cat("behavior \"", behavior, "\""));
    }
    STRATA_ASSIGN_OR_RETURN(bool invert, json_.Bool(o, "invert", where, false));
    if (invert) return json_.Unsupported(where, "invert true");
    STRATA_ASSIGN_OR_RETURN(element pattern_e, json_.Field(o, "pattern", where));
    STRATA_ASSIGN_OR_RETURN(object pattern, json_.Object(pattern_e, where + ".pattern"));
    std::string js_pattern;
    element p;
    if (pattern.at_key("Regex").get(p) == simdjson::SUCCESS) {
      STRATA_ASSIGN_OR_RETURN(std::string_view regex, json_.String(p, where + ".pattern.Regex"));
      js_pattern = std::string(regex);
    } else if (pattern.at_key("String").get(p) == simdjson::SUCCESS) {
      STRATA_ASSIGN_OR_RETURN(std::string_view s, json_.String(p, where + ".pattern.String"));
      js_pattern = EscapeJsRegex(s);
    } else {
      return json_.Error(where + ".pattern", "expected \"Regex\" or \"String\"");
    }
    absl::StatusOr<std::unique_ptr<internal_tokenizer::SplitRegex>> split =
        internal_tokenizer::SplitRegex::Compile(js_pattern);
    if (!split.ok()) {
      const absl::string_view message = split.status().message();
      return json_.Error(where + ".pattern", std::string_view(message.data(), message.size()),
                         split.status().code());
    }
    splits->push_back(*std::move(split));
    return absl::OkStatus();
  }

  absl::Status CheckDecoderAndPostProcessor(object root) {
    STRATA_ASSIGN_OR_RETURN(element decoder_e, json_.Field(root, "decoder", "top level"));
    STRATA_ASSIGN_OR_RETURN(object decoder, json_.Object(decoder_e, "decoder"));
    STRATA_ASSIGN_OR_RETURN(std::string_view type, json_.Type(decoder, "decoder"));
    if (type != "ByteLevel") {
      return json_.Unsupported("decoder", Cat("type \"", type, "\""));
    }
    // A post-processor such as TemplateProcessing would add BOS/EOS to the reference's ids.
    element pp_e;
    if (root.at_key("post_processor").get(pp_e) == simdjson::SUCCESS && !pp_e.is_null()) {
      STRATA_ASSIGN_OR_RETURN(object pp, json_.Object(pp_e, "post_processor"));
      STRATA_ASSIGN_OR_RETURN(std::string_view pp_type, json_.Type(pp, "post_processor"));
      if (pp_type != "ByteLevel") {
        return json_.Unsupported("post_processor", Cat("type \"", pp_type, "\""));
      }
    }
    return absl::OkStatus();
  }

  absl::Status LoadModel(object root) {
    STRATA_ASSIGN_OR_RETURN(element model_e, json_.Field(root, "model", "top level"));
    STRATA_ASSIGN_OR_RETURN(object model, json_.Object(model_e, "model"));
    STRATA_ASSIGN_OR_RETURN(std::string_view type, json_.Type(model, "model"));
    if (type != "BPE") return json_.Unsupported("model", Cat("type \"", type, "\""));
    for (std::string_view flag : {"byte_fallback", "ignore_merges"}) {
      STRATA_ASSIGN_OR_RETURN(bool set, json_.Bool(model, flag, "model", false));
      if (set) return json_.Unsupported("model", Cat(flag, " true"));
    }
    for (std::string_view affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      element a;
      std::string_view s;
      if (model.at_key(affix).get(a) == simdjson::SUCCESS && !a.is_null() &&
          (a.get_string().get(s) != simdjson::SUCCESS || !s.empty())) {
        return json_.Unsupported("model", Cat("a non-empty ", affix));
      }
    }

    STRATA_ASSIGN_OR_RETURN(element vocab_e, json_.Field(model, "vocab", "model"));
    STRATA_ASSIGN_OR_RETURN(object vocab, json_.Object(vocab_e, "model.vocab"));
    vocab_.reserve(vocab.size());
    for (auto [token, id_e] : vocab) {
      int64_t id;
      if (id_e.get_int64().get(id) != simdjson::SUCCESS) {
        return json_.Error(Cat("model.vocab[\"", token, "\"]"), "expected an integer");
      }
      if (id < 0 || id > kMaxTokenId) {
        return json_.Error(Cat("model.vocab[\"", token, "\"]"), Cat("id ", id, " is out of range"));
      }
      if (static_cast<size_t>(id) >= vocab_by_id_.size()) vocab_by_id_.resize(id + 1);
      if (!vocab_by_id_[id].empty()) {
        return json_.Error("model.vocab", Cat("id ", id, " is given to both \"", vocab_by_id_[id],
                                              "\" and \"", token, "\""));
      }
      vocab_by_id_[id] = token;
      vocab_[token] = static_cast<int32_t>(id);
    }

    std::array<int32_t, 256> byte_ids;
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      internal_tokenizer::AppendCodePoint(internal_tokenizer::ByteToCodePoint(b), &ch);
      auto it = vocab_.find(ch);
      if (it == vocab_.end()) {
        return json_.Error("model.vocab",
                           Cat("the byte-level token \"", ch, "\" for byte ", b, " is missing"));
      }
      byte_ids[b] = it->second;
    }

    STRATA_ASSIGN_OR_RETURN(element merges_e, json_.Field(model, "merges", "model"));
    STRATA_ASSIGN_OR_RETURN(array merges, json_.Array(merges_e, "model.merges"));
    absl::flat_hash_map<uint64_t, internal_tokenizer::BpeModel::Merge> merge_map;
    merge_map.reserve(merges.size());
    std::string joined;
    int32_t rank = 0;
    for (element m : merges) {
      // Built only for an error message: the loop runs 100k+ times.
      auto where = [rank] { return Cat("model.merges[", rank, "]"); };
      std::string_view left, right;
      std::string_view text;
      if (m.get_string().get(text) == simdjson::SUCCESS) {
        // Old format "left right"; the reference takes split(" ", 2).
        const size_t space = text.find(' ');
        if (space == std::string_view::npos) {
          return json_.Error(where(), Cat("\"", text, "\" is not two tokens"));
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
        right = right.substr(0, right.find(' '));
      } else {
        STRATA_ASSIGN_OR_RETURN(array pair, json_.Array(m, where()));
        if (pair.size() != 2) return json_.Error(where(), "expected two tokens");
        element first, second;
        if (pair.at(0).get(first) != simdjson::SUCCESS ||
            pair.at(1).get(second) != simdjson::SUCCESS) {
          return json_.Error(where(), "expected two tokens");
        }
        STRATA_ASSIGN_OR_RETURN(left, json_.String(first, where()));
        STRATA_ASSIGN_OR_RETURN(right, json_.String(second, where()));
      }
      joined.assign(left).append(right);
      auto l = vocab_.find(left), r = vocab_.find(right), j = vocab_.find(joined);
      for (auto [it, what] :
           {std::pair{l, left}, std::pair{r, right}, std::pair{j, std::string_view(joined)}}) {
        if (it == vocab_.end()) {
          return json_.Error(where(), Cat("\"", what, "\" is not in model.vocab"));
        }
      }
      // A repeated merge takes its last rank, as in the reference's Map.
      merge_map.insert_or_assign(internal_tokenizer::BpeModel::PairKey(l->second, r->second),
                                 internal_tokenizer::BpeModel::Merge{rank, j->second});
      ++rank;
    }
    byte_ids_ = byte_ids;
    merges_ = std::move(merge_map);
    return absl::OkStatus();
  }

  absl::Status LoadAddedTokens(object root) {
    std::vector<internal_tokenizer::AddedToken> tokens;
    element list_e;
    if (root.at_key("added_tokens").get(list_e) == simdjson::SUCCESS && !list_e.is_null()) {
      STRATA_ASSIGN_OR_RETURN(array list, json_.Array(list_e, "added_tokens"));
      size_t i = 0;
      for (element item : list) {
        const std::string where = Cat("added_tokens[", i++, "]");
        STRATA_ASSIGN_OR_RETURN(object o, json_.Object(item, where));
        STRATA_ASSIGN_OR_RETURN(element id_e, json_.Field(o, "id", where));
        STRATA_ASSIGN_OR_RETURN(int64_t id, json_.Int(id_e, where + ".id"));
        if (id < 0 || id > kMaxTokenId) {
          return json_.Error(where, Cat("id ", id, " is out of range"));
        }
        STRATA_ASSIGN_OR_RETURN(element content_e, json_.Field(o, "content", where));
        STRATA_ASSIGN_OR_RETURN(std::string_view content, json_.String(content_e, where));
        STRATA_ASSIGN_OR_RETURN(bool lstrip, json_.Bool(o, "lstrip", where, false));
        STRATA_ASSIGN_OR_RETURN(bool rstrip, json_.Bool(o, "rstrip", where, false));
        tokens.push_back({static_cast<int32_t>(id), std::string(content), lstrip, rstrip});
      }
    }
    // The reference keeps one string -> id map for the vocabulary and the added tokens, the
    // added ones written last; BPE output spelling an added token's text takes its id.
    std::vector<int32_t> output_ids;
    for (const auto& token : tokens) {
      auto it = vocab_.find(token.content);
      if (it == vocab_.end() || it->second == token.id) continue;
      if (output_ids.empty()) {
        output_ids.resize(vocab_by_id_.size());
        for (size_t i = 0; i < output_ids.size(); ++i) output_ids[i] = static_cast<int32_t>(i);
      }
      output_ids[it->second] = token.id;
    }
    tokenizer_->bpe_ = std::make_unique<internal_tokenizer::BpeModel>(byte_ids_, std::move(merges_),
                                                                      std::move(output_ids));
    tokenizer_->added_tokens_ =
        std::make_unique<internal_tokenizer::AddedTokens>(std::move(tokens));
    // Views into the tokenizer's own copy of the contents.
    for (const auto& token : tokenizer_->added_tokens_->tokens()) {
      added_content_[token.content] = token.id;
      if (static_cast<size_t>(token.id) >= added_by_id_.size()) added_by_id_.resize(token.id + 1);
      added_by_id_[token.id] = token.content;
    }
    return absl::OkStatus();
  }

  absl::Status BuildDecodeTable() {
    Tokenizer& t = *tokenizer_;
    const size_t n = std::max(vocab_by_id_.size(), added_by_id_.size());
    t.token_kinds_.assign(n, Tokenizer::TokenKind::kNone);
    t.token_offsets_.assign(n + 1, 0);
    t.token_bytes_.clear();
    for (size_t id = 0; id < n; ++id) {
      t.token_offsets_[id] = static_cast<uint32_t>(t.token_bytes_.size());
      std::string_view text;
      if (id < added_by_id_.size() && !added_by_id_[id].empty()) {
        text = added_by_id_[id];
      } else if (id < vocab_by_id_.size()) {
        text = vocab_by_id_[id];
      }
      if (text.empty()) continue;
      // The reference's decoder tells added tokens apart by their text.
      if (added_content_.contains(text)) {
        t.token_kinds_[id] = Tokenizer::TokenKind::kLiteral;
        t.token_bytes_.append(text);
        continue;
      }
      t.token_kinds_[id] = Tokenizer::TokenKind::kBytes;
      for (size_t pos = 0, len = 0; pos < text.size(); pos += len) {
        const int byte = internal_tokenizer::CodePointToByte(
            internal_tokenizer::DecodeCodePoint(text, pos, &len));
        // A character outside the byte-level alphabet becomes 0 in the reference's Uint8Array.
        t.token_bytes_.push_back(static_cast<char>(byte < 0 ? 0 : byte));
      }
    }
    t.token_offsets_[n] = static_cast<uint32_t>(t.token_bytes_.size());
    return absl::OkStatus();
  }

  absl::Status LoadConfig() {
    JsonFile config;
    STRATA_RETURN_IF_ERROR(config.Open(config_path_));
    STRATA_ASSIGN_OR_RETURN(object root, config.Object(config.root(), "top level"));
    for (auto [key, id, text] :
         {std::tuple{"bos_token", &tokenizer_->bos_id_, &tokenizer_->bos_text_},
          std::tuple{"eos_token", &tokenizer_->eos_id_, &tokenizer_->eos_text_}}) {
      STRATA_ASSIGN_OR_RETURN(element e, config.Field(root, key, "top level"));
      std::string_view content;
      if (e.get_string().get(content) != simdjson::SUCCESS) {
        // {"__type": "AddedToken", "content": ...}
        STRATA_ASSIGN_OR_RETURN(object o, config.Object(e, key));
        STRATA_ASSIGN_OR_RETURN(element c, config.Field(o, "content", key));
        STRATA_ASSIGN_OR_RETURN(content, config.String(c, Cat(key, ".content")));
      }
      if (auto it = added_content_.find(content); it != added_content_.end()) {
        *id = it->second;
      } else if (auto v = vocab_.find(content); v != vocab_.end()) {
        *id = v->second;
      } else {
        return config.Error(key, Cat("\"", content, "\" is not a token of ", json_path_));
      }
      *text = std::string(content);
    }
    element template_e;
    std::string_view chat_template;
    if (root.at_key("chat_template").get(template_e) == simdjson::SUCCESS &&
        template_e.get_string().get(chat_template) == simdjson::SUCCESS) {
      // ApplyChatTemplate renders DeepSeek's format; refuse it for other templates.
      tokenizer_->deepseek_chat_template_ =
          absl::StrContains(AbslView(chat_template), "<｜User｜>") &&
          absl::StrContains(AbslView(chat_template), "<｜Assistant｜>");
    }
    return absl::OkStatus();
  }

  const std::string json_path_;
  const std::string config_path_;
  std::unique_ptr<Tokenizer> tokenizer_;
  JsonFile json_;
  // Views into json_'s parsed document, alive until Load returns.
  absl::flat_hash_map<std::string_view, int32_t> vocab_;
  std::vector<std::string_view> vocab_by_id_;
  absl::flat_hash_map<std::string_view, int32_t> added_content_;
  std::vector<std::string_view> added_by_id_;
  std::array<int32_t, 256> byte_ids_{};
  absl::flat_hash_map<uint64_t, internal_tokenizer::BpeModel::Merge> merges_;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  return TokenizerLoader(dir).Load();
}

}  // namespace strata::engine
