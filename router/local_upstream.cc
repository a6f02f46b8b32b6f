#include "router/local_upstream.h"

#include <utility>

namespace strata::router {
namespace {

class LocalCall final : public UpstreamCall {
 public:
  LocalCall(decode::Scheduler& scheduler, std::string id)
      : scheduler_(scheduler), id_(std::move(id)) {}
  void Cancel() override { scheduler_.Cancel(id_); }

 private:
  decode::Scheduler& scheduler_;
  const std::string id_;
};

FinishReason Convert(decode::Finish f) {
  switch (f) {
    case decode::Finish::kStop:
      return FinishReason::kStop;
    case decode::Finish::kLength:
      return FinishReason::kLength;
    case decode::Finish::kNone:
      break;
  }
  return FinishReason::kNone;
}

}  // namespace

std::unique_ptr<UpstreamCall> LocalUpstream::Start(UpstreamRequest request,
                                                   std::function<void(UpstreamEvent)> on_event) {
  decode::Request r;
  r.id = request.request_id;
  r.prompt = std::move(request.prompt);
  r.max_tokens = request.max_tokens;
  r.sampling = request.sampling;
  r.ignore_eos = request.ignore_eos;
  r.logprobs = request.logprobs >= 0;
  r.cache_namespace = CacheNamespace(request);
  auto sink = std::make_shared<std::function<void(UpstreamEvent)>>(std::move(on_event));
  decode::Callbacks callbacks;
  callbacks.on_event = [sink](decode::Event e) {
    UpstreamEvent u;
    u.tokens = std::move(e.tokens);
    u.logprobs = std::move(e.logprobs);
    u.done = e.done;
    u.finish = Convert(e.finish);
    u.status = std::move(e.status);
    u.cached_tokens = e.cached_tokens;
    (*sink)(std::move(u));
  };
  absl::Status s = scheduler_.Submit(std::move(r), std::move(callbacks));
  if (!s.ok()) {
    UpstreamEvent u;
    u.done = true;
    u.status = s;
    (*sink)(std::move(u));
  }
  return std::make_unique<LocalCall>(scheduler_, request.request_id);
}

}  // namespace strata::router
