#include "router/auth.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace strata::router {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walk all of `b` whatever `a` holds; fold every difference (and the length difference) into
  // one accumulator read only at the end, so neither the position of the first mismatch nor a
  // match shows in the timing.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

ApiKeys::ApiKeys(std::vector<ApiKey> keys, std::string anonymous_tenant)
    : anonymous_tenant_(std::move(anonymous_tenant)) {
  for (ApiKey& k : keys) {
    if (!k.key.empty()) keys_.push_back(std::move(k));
  }
}

absl::StatusOr<std::string> ApiKeys::Authenticate(absl::string_view authorization) const {
  if (keys_.empty()) return anonymous_tenant_;
  authorization = absl::StripAsciiWhitespace(authorization);
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.");
  }
  constexpr absl::string_view kBearer = "bearer ";
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError(
        "The Authorization header must be 'Bearer <key>' (other schemes are not accepted).");
  }
  const absl::string_view key = absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  const ApiKey* found = nullptr;
  for (const ApiKey& k : keys_) {
    // No early exit: every key is compared.
    if (ConstantTimeEquals(key, k.key) && found == nullptr) found = &k;
  }
  if (found == nullptr) return absl::UnauthenticatedError("Incorrect API key provided.");
  return found->tenant;
}

}  // namespace strata::router
