#include "engine/tokenizer_utf8.h"

#include <array>

#include "simdjson.h"

namespace strata::engine::internal_tokenizer {
namespace {

// Byte-level alphabet tables, built once (the same construction as GPT-2's bytes_to_unicode:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order).
struct ByteLevelTables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 0x144> cp_to_byte{};  // every alphabet code point is below U+0144

  ByteLevelTables() {
    cp_to_byte.fill(-1);
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      byte_to_cp[b] = printable(b) ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* const tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

size_t AppendWhatwgUtf8(std::string_view bytes, std::string* out) {
  // Fast path: long valid runs are copied as they are.
  if (simdjson::validate_utf8(bytes.data(), bytes.size())) {
    out->append(bytes);
    return 0;
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t lead = p[i];
    if (lead < 0x80) {
      out->push_back(static_cast<char>(lead));
      ++i;
      continue;
    }
    // The Encoding Standard's decoder: the lead fixes how many continuation bytes follow and the
    // allowed range of the first one (this rejects overlongs, surrogates and > U+10FFFF).
    size_t needed;
    uint8_t lower = 0x80, upper = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      needed = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      needed = 2;
      if (lead == 0xE0) lower = 0xA0;
      if (lead == 0xED) upper = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      needed = 3;
      if (lead == 0xF0) lower = 0x90;
      if (lead == 0xF4) upper = 0x8F;
    } else {
      out->append(kReplacementCharacter);
      ++i;
      continue;
    }
    size_t seen = 0;
    size_t j = i + 1;
    bool bad = false;
    while (seen < needed) {
      if (j >= n) break;  // incomplete at the end of the input
      const uint8_t b = p[j];
      if (b < lower || b > upper) {
        bad = true;
        break;
      }
      lower = 0x80;
      upper = 0xBF;
      ++seen;
      ++j;
    }
    if (bad) {
      // The offending byte is not consumed: it starts the next sequence.
      out->append(kReplacementCharacter);
      i = j;
      continue;
    }
    if (seen < needed) return n - i;
    out->append(bytes.substr(i, j - i));
    i = j;
  }
  return 0;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + 8);
  if (AppendWhatwgUtf8(bytes, &out) != 0) out.append(kReplacementCharacter);
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  return simdjson::validate_utf8(bytes.data(), bytes.size());
}

uint32_t DecodeCodePoint(std::string_view text, size_t pos, size_t* len) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data()) + pos;
  const size_t n = Utf8SequenceLength(p[0]);
  *len = n;
  switch (n) {
    case 1:
      return p[0];
    case 2:
      return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3:
      return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
             (p[3] & 0x3Fu);
  }
}

void AppendCodePoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsJsWhitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x00A0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string_view TrimJsWhitespaceEnd(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    size_t len;
    if (!IsJsWhitespace(DecodeCodePoint(text, start, &len))) break;
    end = start;
  }
  return text.substr(0, end);
}

std::string_view TrimJsWhitespaceStart(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len;
    if (!IsJsWhitespace(DecodeCodePoint(text, pos, &len))) break;
    pos += len;
  }
  return text.substr(pos);
}

uint32_t ByteToCodePoint(uint8_t byte) { return Tables().byte_to_cp[byte]; }

int CodePointToByte(uint32_t cp) {
  if (cp >= Tables().cp_to_byte.size()) return -1;
  return Tables().cp_to_byte[cp];
}

}  // namespace strata::engine::internal_tokenizer
