// `strata bench prefix`: what reusing a long document's KV saves, through a running cluster. One
// random document of `doc_tokens` token ids (new every run, so the first ask is cold), asked
// about four times with different questions, each a streamed completion whose time to first
// token is measured:
//   cold        nothing cached anywhere: the whole prompt computed;
//   warm local  the workers' own prefix caches hold it (decode or prefill);
//   warm RAM    the workers' caches dropped (POST /admin/drop-caches on each `workers` URL): the
//               prefill worker fetches it from the kvstore's RAM tier;
//   warm SSD    the kvstores' RAM tiers dropped too (each `kvstores` URL): read from the SSD tier.
// Each warm TTFT is held to the target share of the cold one (≤ 1% at 1M tokens, ≤ 5% at 128K;
// shorter documents are held to the 128K target) and recorded in bench/results/prefix.tsv, with
// the cached tokens each answer reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace strata::bench {

struct PrefixBenchOptions {
  std::string url = "http://127.0.0.1:8000";
  std::string api_key;
  std::string model;  // empty: the first of GET /v1/models
  int64_t doc_tokens = 32768;
  int64_t question_tokens = 32;
  int64_t output_tokens = 4;
  std::vector<std::string> workers;   // http://host:port of every prefill and decode worker
  std::vector<std::string> kvstores;  // http://host:port of every kvstore
  uint64_t seed = 0;                  // 0: from the clock (a document nobody has cached)
  double timeout_s = 7200;            // per request (a cold 1M-token prompt on a CPU is long)
  std::string results_file = "prefix";
};

absl::Status RunPrefixBench(const PrefixBenchOptions& options);

}  // namespace strata::bench
