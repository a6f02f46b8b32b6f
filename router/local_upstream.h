// The colocated Upstream: the request runs on a decode::Scheduler in this process, which
// computes the prompt itself (chunked, batched with other requests' decode steps). This is what
// `strata serve --colocated` serves, and the reference every disaggregated path is compared with.
//
// Threading: as router::Upstream.
#pragma once

#include "decode/scheduler.h"
#include "router/upstream.h"

namespace strata::router {

class LocalUpstream final : public Upstream {
 public:
  explicit LocalUpstream(decode::Scheduler& scheduler) : scheduler_(scheduler) {}

  std::unique_ptr<UpstreamCall> Start(UpstreamRequest request,
                                      std::function<void(UpstreamEvent)> on_event) override;

 private:
  decode::Scheduler& scheduler_;
};

}  // namespace strata::router
