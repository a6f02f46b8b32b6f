// Internal to transport/: what UcxTransport puts on the wire around UCX's own bytes, and UCX
// status conversion.
//
// Addresses and remote keys are framed (magic, length, XXH64 of the UCX bytes) before they leave
// the process, so a truncated, corrupted or foreign string is refused with a clear error instead
// of being handed to UCX's unpacking code, which trusts its input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ucs/type/status.h"

namespace strata::transport::internal {

enum class FrameKind : uint32_t {
  kWorkerAddress = 0x41555453,  // "STUA"
  kRemoteKey = 0x4b555453,      // "STUK"
  kGrantKey = 0x47555453,       // "STUG": a kRemoteKey frame + a grant's 16-byte token
};
inline constexpr size_t kGrantTokenBytes = 16;

std::string Frame(FrameKind kind, const void* data, size_t len);
// The UCX bytes inside `framed`; `what` names the string in errors ("peer address").
absl::StatusOr<std::string_view> Unframe(FrameKind kind, std::string_view framed, const char* what);

// "<op>: <ucs_status_string> (UCX status <n>)" with a code that says what a caller can do:
// Cancelled for UCS_ERR_CANCELED, Unavailable for connection and peer failures, etc.
absl::Status UcxError(std::string_view op, ucs_status_t status);

// The header UcxTransport puts in front of every active message: which sending endpoint it came
// from and its place in that endpoint's stream, so the receiver delivers in issue order.
struct MessageHeader {
  uint64_t stream = 0;
  uint64_t seq = 0;
  uint16_t id = 0;
  uint16_t flags = 0;  // kEndOfStream, kHello, kHelloReply
  uint32_t reserved = 0;  // kPutAck: the refusal count
};
static_assert(sizeof(MessageHeader) == 24);
inline constexpr uint16_t kEndOfStream = 1;  // the sending endpoint closed; forget its stream
inline constexpr uint16_t kHello = 2;        // Connect's handshake (not part of the stream)
inline constexpr uint16_t kHelloReply = 4;
// Puts as messages (UcxOptions::put_path): kPutData carries bytes for the receiver's registered
// memory (header: PutHeader); kPutFlush (payload: a 64-bit token) asks for a kPutAck once every
// earlier message of the stream has been handled; kPutAck (not part of a stream; seq: the token;
// reserved: how many kPutData of the stream the receiver has refused or lost so far) answers it.
inline constexpr uint16_t kPutData = 8;
inline constexpr uint16_t kPutFlush = 16;
inline constexpr uint16_t kPutAck = 32;

// The header of a kPutData message.
struct PutHeader {
  MessageHeader message;
  uint64_t address = 0;   // where the payload goes in the receiver's memory
  uint64_t key_hash = 0;  // XXH64 of the region's framed key (ucx_core.cc: RegionKeyHash)
};
static_assert(sizeof(PutHeader) == 40);

}  // namespace strata::transport::internal
