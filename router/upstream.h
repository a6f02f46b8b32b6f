// What the router's HTTP and gRPC fronts send a tokenized request to. The fronts know only this
// interface; `strata serve --colocated` plugs in an in-process engine, `strata router` the
// cluster client that picks a prefill and a decode worker and streams tokens back over gRPC.
//
// Threading: Start() may be called from any thread; `on_event` is called from an upstream
// thread, never concurrently for one call, in order, and ends with exactly one event whose
// `done` is true. It must not block. An event with no tokens that is not `done` is a keep-alive:
// the upstream is alive and busy with the request (queued, prefilling); a streaming front may
// tell its client so. UpstreamCall::Cancel() may be called from any thread, also
// after the final event, and makes the final event come soon (with a Cancelled status if it had
// not finished).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampler.h"

namespace strata::router {

struct UpstreamRequest {
  std::string request_id;
  std::string tenant;
  std::string traceparent;        // W3C trace context, forwarded to workers
  std::vector<int32_t> prompt;    // token ids, chat template already applied
  int64_t max_tokens = 16;
  engine::SamplingParams sampling;
  bool ignore_eos = false;
  int32_t logprobs = -1;          // -1: none; 0: the sampled token's logprob
};

// The prefix-cache namespace a request's KV blocks are keyed under (engine/kv/block_key.h): its
// tenant's own, so no request ever reuses another tenant's blocks.
inline const std::string& CacheNamespace(const UpstreamRequest& r) { return r.tenant; }

enum class FinishReason { kNone, kStop, kLength };

struct UpstreamEvent {
  std::vector<int32_t> tokens;     // newly generated tokens (possibly several per event)
  std::vector<float> logprobs;     // one per token when requested
  bool done = false;
  FinishReason finish = FinishReason::kNone;  // kStop: EOS; kLength: max_tokens (with done)
  absl::Status status;             // non-OK only with done: the request failed
  int64_t cached_tokens = 0;       // prompt tokens served from a prefix cache (with done)
};

class UpstreamCall {
 public:
  virtual ~UpstreamCall() = default;
  virtual void Cancel() = 0;
};

class Upstream {
 public:
  virtual ~Upstream() = default;
  virtual std::unique_ptr<UpstreamCall> Start(UpstreamRequest request, std::function<void(UpstreamEvent)> on_event) = 0;
  // Whether requests can be served now (the router's /healthz): e.g. Unavailable while no decode
  // worker is live.
  virtual absl::Status Ready() const { return absl::OkStatus(); }
};

}  // namespace strata::router
