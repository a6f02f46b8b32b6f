// ServiceRecord ⇄ JSON, and the checks shared by the Registry implementations.
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"
#include "registry/internal.h"
#include "registry/registry.h"

namespace strata::registry {
namespace {

using nlohmann::json;

// Reads `object[key]` into `*out` if present; an error naming the key if it has the wrong type.
absl::Status ReadString(const json& object, const char* key, bool required, std::string* out) {
  auto it = object.find(key);
  if (it == object.end()) {
    if (required)
      return absl::InvalidArgumentError(absl::StrCat("service record: missing \"", key, "\""));
    return absl::OkStatus();
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("service record: \"", key, "\" must be a string"));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadInt(const json& object, const char* key, int64_t* out) {
  auto it = object.find(key);
  if (it == object.end()) return absl::OkStatus();
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("service record: \"load.", key, "\" must be an integer"));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateRole(const std::string& role) {
  if (role.empty()) return absl::InvalidArgumentError("service record: empty role");
  if (role.find(':') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("service record: role '", role, "' must not contain ':'"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePut(const ServiceRecord& record, absl::Duration lease) {
  if (absl::Status status = ValidateRole(record.role); !status.ok()) return status;
  if (record.id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("service record of role '", record.role, "': empty id"));
  }
  if (lease < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("service record '", record.id, "': lease ",
                                                   absl::FormatDuration(lease),
                                                   " is shorter than 1ms"));
  }
  return absl::OkStatus();
}

std::string Serialize(const ServiceRecord& record) {
  json load = {{"queued_tokens", record.load.queued_tokens},
               {"running_requests", record.load.running_requests},
               {"free_kv_blocks", record.load.free_kv_blocks},
               {"total_kv_blocks", record.load.total_kv_blocks}};
  json object = {{"id", record.id},
                 {"role", record.role},
                 {"grpc_address", record.grpc_address},
                 {"http_address", record.http_address},
                 // Opaque bytes (a UCX worker address): JSON strings must be UTF-8.
                 {"transport_address", absl::Base64Escape(record.transport_address)},
                 {"model", record.model},
                 {"kv_scope", record.kv_scope},
                 {"load", std::move(load)}};
  return object.dump();
}

absl::StatusOr<ServiceRecord> ParseRecord(std::string_view bytes) {
  json object = json::parse(bytes, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return absl::InvalidArgumentError("service record: not valid JSON");
  if (!object.is_object()) return absl::InvalidArgumentError("service record: not a JSON object");
  ServiceRecord record;
  std::string transport_base64;
  for (absl::Status status :
       {ReadString(object, "id", true, &record.id), ReadString(object, "role", true, &record.role),
        ReadString(object, "grpc_address", false, &record.grpc_address),
        ReadString(object, "http_address", false, &record.http_address),
        ReadString(object, "transport_address", false, &transport_base64),
        ReadString(object, "model", false, &record.model),
        ReadString(object, "kv_scope", false, &record.kv_scope)}) {
    if (!status.ok()) return status;
  }
  if (record.id.empty()) return absl::InvalidArgumentError("service record: empty \"id\"");
  if (absl::Status status = ValidateRole(record.role); !status.ok()) return status;
  if (!absl::Base64Unescape(transport_base64, &record.transport_address)) {
    return absl::InvalidArgumentError(
        absl::StrCat("service record '", record.id, "': \"transport_address\" is not base64"));
  }
  if (auto it = object.find("load"); it != object.end()) {
    if (!it->is_object())
      return absl::InvalidArgumentError("service record: \"load\" must be an object");
    for (absl::Status status : {ReadInt(*it, "queued_tokens", &record.load.queued_tokens),
                                ReadInt(*it, "running_requests", &record.load.running_requests),
                                ReadInt(*it, "free_kv_blocks", &record.load.free_kv_blocks),
                                ReadInt(*it, "total_kv_blocks", &record.load.total_kv_blocks)}) {
      if (!status.ok()) return status;
    }
  }
  return record;
}

absl::StatusOr<RedisOptions> ParseRedisAddress(std::string_view address) {
  RedisOptions options;
  std::string_view host = address, port;
  if (!address.empty() && address.front() == '[') {  // [::1]:6379
    const size_t close = address.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis address '", ToAbsl(address), "': missing ']'"));
    }
    host = address.substr(1, close - 1);
    std::string_view rest = address.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return absl::InvalidArgumentError(
            absl::StrCat("redis address '", ToAbsl(address), "': want [host]:port"));
      }
      port = rest.substr(1);
      if (port.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("redis address '", ToAbsl(address), "': empty port"));
      }
    }
  } else if (const size_t colon = address.rfind(':'); colon != std::string_view::npos) {
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (port.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis address '", ToAbsl(address), "': empty port"));
    }
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis address '", ToAbsl(address), "': empty host"));
  }
  options.host = std::string(host);
  if (!port.empty()) {
    int value = 0;
    if (!absl::SimpleAtoi(ToAbsl(port), &value) || value < 1 || value > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "redis address '", ToAbsl(address), "': port '", ToAbsl(port), "' is not in 1..65535"));
    }
    options.port = value;
  }
  return options;
}

}  // namespace strata::registry
