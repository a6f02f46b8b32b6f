// Fuzzes the parsing of the protobuf messages Strata's services accept (proto/strata/v1): what
// the decode worker (DecodeRequest), the prefill worker (PrefillRequest, its KvTarget), every
// worker's Status and the router's gRPC API (GenerateRequest, ListModelsRequest) receive, and what
// the router and the decode worker read back from their peers (TokenEvent, PrefillReply,
// WorkerStatus). The first byte picks the message; the rest is its wire bytes.
//
// The services' own checks are not fuzzed here: they are not functions that take a message. The
// decode and prefill services translate the message inline in their gRPC reactors and validate
// in Scheduler::Submit / PrefillWorker::Submit, members of objects that need a model, a KV pool
// and a thread; the router's gRPC API validates in a function private to router/api_service.cc.
//
// Besides ASan and UBSan, for every message that parses it checks that each string field is valid
// UTF-8 (proto3 promises it, and ids and addresses go into logs and JSON), that it serializes to
// ByteSizeLong() bytes, and that those bytes parse back to a message that writes the same bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/stubs/logging.h"
#include "strata/v1/api.pb.h"
#include "strata/v1/kv.pb.h"
#include "strata/v1/worker.pb.h"

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

[[noreturn]] void Fail(const Message& m, const std::string& what) {
  std::fprintf(stderr, "worker_proto_fuzzer: %s: %s\n", m.GetTypeName().c_str(), what.c_str());
  std::abort();
}

bool IsUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Every string field, at any depth, holds valid UTF-8.
void CheckStrings(const Message& m) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->type() == FieldDescriptor::TYPE_STRING) {
      const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
      for (int i = 0; i < n; ++i) {
        const std::string s = f->is_repeated() ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
        if (!IsUtf8(s)) Fail(m, "string field " + f->name() + " is not UTF-8");
      }
    } else if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f); ++i) CheckStrings(r->GetRepeatedMessage(m, f, i));
      } else {
        CheckStrings(r->GetMessage(m, f));
      }
    }
  }
}

template <typename T>
void Fuzz(const uint8_t* data, size_t size) {
  T message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return;
  CheckStrings(message);
  std::string bytes;
  if (!message.SerializeToString(&bytes)) Fail(message, "a parsed message does not serialize");
  if (bytes.size() != message.ByteSizeLong()) Fail(message, "ByteSizeLong is not the size written");
  T again;
  if (!again.ParseFromString(bytes)) Fail(message, "its own serialization does not parse");
  // No maps, so serialization is deterministic: equal messages give equal bytes (and NaN
  // logprobs compare equal, as they would not field by field).
  if (again.SerializeAsString() != bytes)
    Fail(message, "its serialization parses to another message");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string field it refuses as invalid UTF-8; the fuzzer makes many.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t* rest = data + 1;
  const size_t n = size - 1;
  switch (data[0] % 9) {
    case 0:
      Fuzz<strata::v1::DecodeRequest>(rest, n);
      break;
    case 1:
      Fuzz<strata::v1::PrefillRequest>(rest, n);
      break;
    case 2:
      Fuzz<strata::v1::KvTarget>(rest, n);
      break;
    case 3:
      Fuzz<strata::v1::WorkerStatusRequest>(rest, n);
      break;
    case 4:
      Fuzz<strata::v1::GenerateRequest>(rest, n);
      break;
    case 5:
      Fuzz<strata::v1::ListModelsRequest>(rest, n);
      break;
    case 6:
      Fuzz<strata::v1::TokenEvent>(rest, n);
      break;
    case 7:
      Fuzz<strata::v1::PrefillReply>(rest, n);
      break;
    case 8:
      Fuzz<strata::v1::WorkerStatus>(rest, n);
      break;
  }
  return 0;
}
