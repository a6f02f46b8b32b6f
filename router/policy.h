// router::Policy — picks the (prefill, decode) pair for a request from the live services
// (DESIGN.md §4). Chosen by name in the cluster config:
//   round_robin  each role in turn
//   least_load   prefill with the fewest prompt tokens still to compute (reported, plus those
//                sent since); decode with the most free KV blocks
//                per request it would then run (ties: fewer running requests, then id)
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
};

struct Choice {
  int prefill = -1;  // index into the prefill candidates; -1: none (decode computes the prompt)
  int decode = -1;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string name() const = 0;
  // `prompt_tokens` and `blocks_needed` describe the request. Unavailable when no decode worker
  // is live; a missing prefill role is not an error (decode then computes the prompt).
  virtual absl::StatusOr<Choice> Choose(const std::vector<Candidate>& prefill,
                                        const std::vector<Candidate>& decode, int64_t prompt_tokens,
                                        int64_t blocks_needed) = 0;
};

// "round_robin" or "least_load"; InvalidArgument naming the choices otherwise.
absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name);

}  // namespace strata::router
