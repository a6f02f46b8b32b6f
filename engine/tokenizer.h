// The DeepSeek tokenizer: byte-level BPE read from a Hugging Face tokenizer.json, giving the
// same ids as the reference JavaScript tokenizer (@lenml/tokenizers, a port of transformers.js)
// and rendering DeepSeek's chat format. The serving path encodes a chat with EncodeChat (the
// template's markers as control ids, the messages' text only ever as text) and streams generated
// ids back to text with IncrementalDecoder.
//
//   STRATA_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(dir));
//   STRATA_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->EncodeChat(messages, true));
//
// Text is UTF-8. Input that is not valid UTF-8 is first decoded the way a browser's
// TextDecoder does (each maximal invalid subpart becomes U+FFFD), so it never fails and gives
// the ids the reference gives for the decoded string.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata::engine {

namespace internal_tokenizer {
class AddedTokens;
class BpeModel;
class PreTokenizer;
}  // namespace internal_tokenizer

// One chat turn. Roles: "system", "user", "assistant", "tool" (a tool's output).
struct ChatMessage {
  std::string role;
  std::string content;
};

// Immutable after Load; every method may be called from any number of threads at once (the
// word cache inside is internally synchronised).
class Tokenizer {
 public:
  // `dir` holds tokenizer.json and tokenizer_config.json. Errors name the file and what is
  // wrong with it; parts of tokenizer.json this implementation does not support (other
  // normalizers, pre-tokenizers or models) are reported as Unimplemented.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Ids of `text`. Adds no BOS. The text of an added token (e.g. "<｜User｜>") anywhere in
  // `text` becomes that token's id, as in the reference. For text written by whoever controls
  // the prompt format (a raw completion prompt, a rendered template); never for a chat
  // message's content, which would then be able to open roles and end turns (EncodeChat).
  std::vector<int32_t> Encode(std::string_view text) const;

  // Ids of `text` read as plain text: the text of an added token (special or not, e.g.
  // "<｜end▁of▁sentence｜>", "<｜Assistant｜>") is encoded as its characters, never as the
  // token's id. Adds no BOS. Equals Encode for text that holds no added token's text.
  std::vector<int32_t> EncodePlainText(std::string_view text) const;

  // Text of `ids`: byte-level tokens are joined and decoded as UTF-8 with replacement, added
  // tokens give their literal text (special tokens included). Error: an id with no token.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;

  // DeepSeek's chat format (the chat_template of tokenizer_config.json): BOS, the system
  // messages joined by "\n\n", "<｜User｜>" + content per user message, "<｜Assistant｜>" +
  // content + EOS per assistant message, tool outputs wrapped in DeepSeek's tool-output tokens,
  // and with `add_generation_prompt` a final "<｜Assistant｜>". Errors: a role other than the
  // four above (InvalidArgument); a tokenizer whose template is not DeepSeek's
  // (FailedPrecondition).
  absl::StatusOr<std::string> ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt) const;

  // The prompt ids of a conversation in the chat format above, safe for text a client sends:
  // the template's own markers (BOS, role and tool-output tokens, EOS) are their ids and each
  // message's content is plain text (EncodePlainText), so no message can forge a role, end a
  // turn or write any other control token. Decodes to ApplyChatTemplate's text; equals
  // Encode(ApplyChatTemplate(...)) when no content holds an added token's text. Errors: as
  // ApplyChatTemplate.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(absl::Span<const ChatMessage> messages,
                                                  bool add_generation_prompt) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // Highest token id + 1 (128815 for DeepSeek V3). The model's embedding table may be larger;
  // ids in between have no text.
  int32_t num_tokens() const { return static_cast<int32_t>(token_kinds_.size()); }

 private:
  friend class IncrementalDecoder;
  friend class TokenizerLoader;

  enum class TokenKind : uint8_t {
    kNone,     // no token has this id
    kBytes,    // byte-level BPE token: its bytes join the neighbouring ones before UTF-8 decoding
    kLiteral,  // added token: its text is emitted as it is
  };

  Tokenizer();
  // Appends the ids of `text`; with `match_added_tokens` false, added tokens' text is text.
  void EncodeTo(std::string_view text, bool match_added_tokens, std::vector<int32_t>* ids) const;
  // The chat format as a sequence of pieces, each emitted with `marker` true for the template's
  // own tokens (BOS, role and tool-output markers, EOS) and false for text (message contents
  // and the template's separators). Errors: as ApplyChatTemplate, before anything is emitted.
  absl::Status RenderChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                          absl::FunctionRef<void(std::string_view piece, bool marker)> emit) const;
  TokenKind kind(int32_t id) const {
    return id >= 0 && id < num_tokens() ? token_kinds_[id] : TokenKind::kNone;
  }
  std::string_view token_bytes(int32_t id) const {
    return std::string_view(token_bytes_)
        .substr(token_offsets_[id], token_offsets_[id + 1] - token_offsets_[id]);
  }

  std::unique_ptr<internal_tokenizer::AddedTokens> added_tokens_;
  std::unique_ptr<internal_tokenizer::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<internal_tokenizer::BpeModel> bpe_;
  // Per id: its kind and its bytes (raw bytes for kBytes, UTF-8 text for kLiteral).
  std::vector<TokenKind> token_kinds_;
  std::vector<uint32_t> token_offsets_;  // num_tokens() + 1 entries
  std::string token_bytes_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  std::string bos_text_;
  std::string eos_text_;
  bool deepseek_chat_template_ = false;
};

// Turns generated ids into text as they arrive, never returning part of a UTF-8 character: an
// incomplete trailing sequence is held back until the next ids complete it, or until they prove
// it invalid (it then becomes U+FFFD, as Decode would write it). The concatenation of Push
// results and Flush equals Tokenizer::Decode of the same ids. One instance per stream, used by
// one thread at a time; `tokenizer` must outlive it.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // Text completed by `id`, possibly empty. Ids with no token decode to "".
  std::string Push(int32_t id);
  // Whatever is held back (an incomplete sequence becomes U+FFFD, like the reference); the
  // decoder is then empty and may be reused.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // at most 3 bytes of an incomplete UTF-8 sequence
};

}  // namespace strata::engine
