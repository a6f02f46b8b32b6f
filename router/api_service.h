// The router's public gRPC API, strata.v1.Api (proto/strata/v1/api.proto), served next to the
// OpenAI HTTP front (router/front.h) and answering like it: the same authentication (metadata
// `authorization: Bearer <key>`), the same checks, tokenization, context budget and stop
// sequences (router/generation.h), the same router::Upstream behind.
//
//   ApiService api({.served_model = "strata", .api_keys = {{"sk-…", "tenant-a"}}},
//                  *tokenizer, upstream, metrics);
//   auto server = StartGrpcServer("0.0.0.0:8001", {&api});
//   ... on SIGTERM: server->Shutdown(deadline); then destroy the server, then `api`.
//
// Generate streams GenerateResponse messages: the new token ids, the text they complete (stop
// sequences cut, never leaked; a token's text may come with a later message while it could still
// start one), their logprobs when asked for. Ids are sent as generated, so the ids of the tokens
// that completed a stop sequence are sent though their text is not. Messages are coalesced while
// a write is in flight. The last message carries finish_reason and usage. On a stop sequence the
// upstream call is cancelled; a client that cancels (or whose deadline passes) cancels it too.
//
// Status codes: UNAUTHENTICATED missing or wrong key; INVALID_ARGUMENT a bad field (max_tokens
// < 0 — 0 means "not set": the default, capped by the room the prompt leaves —, sampling out of
// range, more than 4 stop sequences, no input, a token id outside the vocabulary) or prompt plus
// max_tokens over the context; NOT_FOUND unknown model; OUT_OF_RANGE the prompt alone is longer
// than the context; UNAVAILABLE over max_in_flight; an upstream failure ends the stream with the
// upstream's status and message.
//
// Threading: gRPC's callback threads call in; tokenization runs on a small pool of the service's
// own (long prompts must not hold gRPC's threads); upstream events are handled on the upstream's
// threads. The tokenizer, the upstream and the registry must outlive the service; the gRPC server
// serving it must be shut down before it is destroyed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/thread_pool.h"
#include "engine/tokenizer.h"
#include "prometheus/registry.h"
#include "router/auth.h"
#include "router/upstream.h"
#include "strata/v1/api.grpc.pb.h"

namespace strata::router {

struct ApiServiceOptions {
  std::string served_model = "strata";  // the model name requests must name; listed by ListModels
  int64_t max_context_tokens = 65536;   // prompt + max_tokens must fit in it
  int64_t default_max_tokens = 1024;    // when the request sets none (capped by the room left)
  int64_t max_in_flight = 256;          // Generate streams admitted at once; more: UNAVAILABLE
  std::vector<ApiKey> api_keys;         // empty: no authentication, tenant "default"
  int tokenizer_threads = 2;
};

class ApiService final : public strata::v1::Api::CallbackService {
 public:
  ApiService(ApiServiceOptions options, const engine::Tokenizer& tokenizer, Upstream& upstream,
             std::shared_ptr<prometheus::Registry> registry, Clock& clock = Clock::Real());
  // Waits until every stream has ended (the gRPC server's Shutdown cancels those still open at
  // its deadline, which cancels their upstream calls).
  ~ApiService() override;
  ApiService(const ApiService&) = delete;
  ApiService& operator=(const ApiService&) = delete;

  grpc::ServerWriteReactor<strata::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const strata::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const strata::v1::ListModelsRequest* request,
                                       strata::v1::ListModelsResponse* response) override;

 private:
  class Stream;
  struct Metrics;

  // The tenant of the call's `authorization` metadata.
  absl::StatusOr<std::string> Authenticate(const grpc::CallbackServerContext& context) const;
  // Takes an in-flight slot; false when all max_in_flight are taken.
  bool Admit();
  // Frees the slot Admit took (any thread).
  void ReleaseSlot();
  // The last thing a stream does (any thread): keeps its upstream call for ReapFinishedCalls.
  void Retire(std::unique_ptr<UpstreamCall> call);
  // Destroys upstream calls whose final event has come (never on the upstream's own thread).
  void ReapFinishedCalls();
  void CountResponse(absl::string_view method, absl::StatusCode code);
  std::string NextId();

  const ApiServiceOptions options_;
  const engine::Tokenizer& tokenizer_;
  Upstream& upstream_;
  const std::shared_ptr<prometheus::Registry> registry_;
  Clock& clock_;
  const ApiKeys keys_;
  const std::unique_ptr<Metrics> metrics_;
  const uint64_t id_prefix_;
  std::atomic<uint64_t> next_id_{0};

  absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // admitted, outcome not yet known (the limit)
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;       // streams not yet destroyed (the destructor waits)
  std::vector<std::unique_ptr<UpstreamCall>> finished_calls_ ABSL_GUARDED_BY(mu_);

  ThreadPool tokenizer_pool_;  // last: joined first
};

}  // namespace strata::router
