// Private to registry/: checks both implementations apply before storing a record, so a record the
// in-memory registry accepts is one Redis accepts too.
#pragma once

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "registry/registry.h"

namespace strata::registry {

// Role and id must be non-empty; the role must not contain ':' (it delimits the Redis key, and
// "a:b"/"c" would collide with "a"/"b:c"); the lease must be at least a millisecond.
absl::Status ValidateRole(const std::string& role);
absl::Status ValidatePut(const ServiceRecord& record, absl::Duration lease);

}  // namespace strata::registry
