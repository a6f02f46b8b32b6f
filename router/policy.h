// router::Policy — picks the (prefill, decode) pair for a request from the live services
// (DESIGN.md §4). Chosen by name in the cluster config:
//   round_robin  each role in turn
//   least_load   prefill with the fewest prompt tokens still to compute (reported, plus those
//                sent since); decode with the most free KV blocks
//                per request it would then run (ties: fewer running requests, then id)
//   kv_aware     by cost, in prompt tokens to compute: a worker's cached prefix of the request
//                (Candidate::cached_tokens, from the prefix index) is work it need not do.
//                A decode worker that holds a prefix and would compute the rest itself (at most
//                local_prefill_limit tokens) costs that rest; any other costs the cheapest prefill
//                worker's queue plus the prompt past that worker's prefix, plus the KV transfer;
//                each request a decode worker already runs adds kDecodeLoadTokens. Prefill: the
//                cheapest by the same measure. Decode workers without room for the request's
//                blocks come last.
// The router adds the requests it has sent since the last registry refresh to the reported load,
// so a burst does not all land on the one worker that looked idle.
//
// Threading: Choose() may be called from any thread (implementations lock what they keep).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "registry/registry.h"

namespace strata::router {

struct Candidate {
  const registry::ServiceRecord* record = nullptr;
  int64_t inflight = 0;         // requests this router sent it since its last load report
  int64_t inflight_tokens = 0;  // and their prompt tokens
  int64_t cached_tokens = 0;    // of this request's prompt, in its prefix cache (kv_aware)
};

struct Choice {
  int prefill = -1;  // index into the prefill candidates; -1: none (decode computes the prompt)
  int decode = -1;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string name() const = 0;
  // Whether Choose looks at Candidate::cached_tokens (the upstream then asks the prefix index).
  virtual bool uses_prefix_index() const { return false; }
  // `prompt_tokens` and `blocks_needed` describe the request. Unavailable when no decode worker
  // is live; a missing prefill role is not an error (decode then computes the prompt).
  virtual absl::StatusOr<Choice> Choose(const std::vector<Candidate>& prefill,
                                        const std::vector<Candidate>& decode, int64_t prompt_tokens,
                                        int64_t blocks_needed) = 0;
};

struct PolicyOptions {
  // kv_aware: the decode workers' local_prefill_limit (prefix_cache.local_prefill_limit).
  int64_t local_prefill_limit = 2048;
};

// "round_robin", "least_load" or "kv_aware"; InvalidArgument naming the choices otherwise.
absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name, const PolicyOptions& options = {});

}  // namespace strata::router
