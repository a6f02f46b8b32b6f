// Reads one value from a service's Prometheus /metrics page, so system benchmarks can combine
// what the client measures with what the services count (e.g. the KV hand-off share of TTFT).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace strata::bench {

// The value of the series named exactly `series` (e.g. "strata_decode_kv_handoffs_total") at
// `url` (http://host:port; "/metrics" is appended). NotFound when the page lacks it.
absl::StatusOr<double> ScrapeMetric(const std::string& url, const std::string& series);

}  // namespace strata::bench
