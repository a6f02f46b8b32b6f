#include "transport/ucx_wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"
#include "xxhash.h"

namespace strata::transport::internal {
namespace {

struct FrameHeader {
  uint32_t magic;
  uint32_t length;
  uint64_t hash;
};
static_assert(sizeof(FrameHeader) == 16);

}  // namespace

std::string Frame(FrameKind kind, const void* data, size_t len) {
  const FrameHeader header{.magic = static_cast<uint32_t>(kind),
                           .length = static_cast<uint32_t>(len),
                           .hash = XXH64(data, len, static_cast<uint32_t>(kind))};
  std::string out(sizeof(header) + len, '\0');
  std::memcpy(out.data(), &header, sizeof(header));
  if (len > 0) std::memcpy(out.data() + sizeof(header), data, len);
  return out;
}

absl::StatusOr<std::string_view> Unframe(FrameKind kind, std::string_view framed,
                                         const char* what) {
  FrameHeader header{};
  if (framed.size() < sizeof(header)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s of %d bytes is not a UCX transport %s (too short)", what, framed.size(), what));
  }
  std::memcpy(&header, framed.data(), sizeof(header));
  const std::string_view body = framed.substr(sizeof(header));
  if (header.magic != static_cast<uint32_t>(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a UCX transport ", what, " (bad magic)"));
  }
  if (header.length != body.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is truncated or padded: %d bytes, want %d", what, body.size(), header.length));
  }
  if (XXH64(body.data(), body.size(), static_cast<uint32_t>(kind)) != header.hash) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is corrupted (checksum mismatch)"));
  }
  return body;
}

absl::Status UcxError(std::string_view op, ucs_status_t status) {
  if (status == UCS_OK) return absl::OkStatus();
  const std::string message = absl::StrCat(ToAbsl(op), ": ", ucs_status_string(status),
                                           " (UCX status ", static_cast<int>(status), ")");
  if (status == UCS_ERR_CANCELED) return absl::CancelledError(message);
  if ((status <= UCS_ERR_FIRST_LINK_FAILURE && status >= UCS_ERR_LAST_ENDPOINT_FAILURE)) {
    return absl::UnavailableError(message);
  }
  switch (status) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_REJECTED:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_SHMEM_SEGMENT:
      return absl::UnavailableError(message);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_MESSAGE_TRUNCATED:
    case UCS_ERR_BUFFER_TOO_SMALL:
      return absl::InvalidArgumentError(message);
    case UCS_ERR_OUT_OF_RANGE:
      return absl::OutOfRangeError(message);
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_NOT_IMPLEMENTED:
    case UCS_ERR_UNSUPPORTED:
      return absl::UnimplementedError(message);
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_ELEM:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace strata::transport::internal
