// API keys: the router's clients send `Authorization: Bearer <key>`; each key belongs to a
// tenant, whose name goes with the request to the workers (quotas, prefix-cache namespace,
// logs). Keys come from the router's config. They are never logged nor echoed in errors.
//
//   ApiKeys keys({{.key = "sk-alpha", .tenant = "alpha"}});
//   absl::StatusOr<std::string> tenant = keys.Authenticate(request.Header("Authorization"));
//
// Threading: immutable after construction; Authenticate may be called from any thread.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::router {

struct ApiKey {
  std::string key;
  std::string tenant;
};

class ApiKeys {
 public:
  // With no keys, authentication is off and every request belongs to `anonymous_tenant`
  // (a local or colocated deployment); empty keys are ignored.
  explicit ApiKeys(std::vector<ApiKey> keys, std::string anonymous_tenant = "default");

  bool enabled() const { return !keys_.empty(); }

  // The tenant of the `Authorization` header's bearer key. Unauthenticated when the header is
  // missing, not a bearer token, or the key is unknown. The key is compared with every known
  // key in time that does not depend on where (or whether) it matches.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization) const;

 private:
  std::vector<ApiKey> keys_;
  std::string anonymous_tenant_;
};

// Compares in time that depends only on the lengths, not on the contents.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace strata::router
