#include "cli/service_host.h"

#include <signal.h>
#include <unistd.h>

#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "proto/grpc_options.h"
#include "prometheus/text_serializer.h"

namespace strata::cli {
namespace {

sigset_t ShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A peer that vanishes mid-write must give an error, not kill the process.
  signal(SIGPIPE, SIG_IGN);
}

int WaitForShutdownSignal() {
  sigset_t set = ShutdownSignals();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

std::string RenderMetrics(prometheus::Registry& registry) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry.Collect());
  return out.str();
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(const std::string& host, int port,
                                                               std::shared_ptr<prometheus::Registry> metrics,
                                                               std::function<void()> refresh,
                                                               std::function<void()> drop_caches) {
  auto server = std::make_unique<HttpServer>(
      HttpServerOptions{.address = host, .port = static_cast<uint16_t>(port), .io_threads = 1},
      [metrics, refresh, drop_caches](HttpRequest request, std::shared_ptr<HttpExchange> exchange) {
        if (request.path == "/admin/drop-caches" && drop_caches) {
          if (request.method != "POST") {
            exchange->Respond({.status = 405, .body = "POST /admin/drop-caches\n"});
            return;
          }
          drop_caches();
          exchange->Respond({.status = 200, .body = "dropped\n"});
        } else if (request.path == "/healthz") {
          exchange->Respond({.status = 200, .body = "ok\n"});
        } else if (request.path == "/metrics") {
          if (refresh) refresh();
          exchange->Respond({.status = 200, .content_type = "text/plain; version=0.0.4", .body = RenderMetrics(*metrics)});
        } else {
          exchange->Respond({.status = 404, .body = "not found: this service serves /metrics and /healthz\n"});
        }
      });
  STRATA_RETURN_IF_ERROR(Annotate(server->Start(), absl::StrCat("HTTP on ", host, ":", port)));
  return server;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& address,
                                                              const std::vector<grpc::Service*>& services) {
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &bound);
  proto::ConfigureInternalServer(builder);  // keepalive from peers; 1M-token prompts fit
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", address, " (address in use?)"));
  }
  return server;
}

absl::StatusOr<std::unique_ptr<registry::Registry>> ConnectRegistry(const std::string& redis, const std::string& cluster) {
  STRATA_ASSIGN_OR_RETURN(registry::RedisOptions options, registry::ParseRedisAddress(redis));
  options.cluster = cluster;
  return registry::MakeRedisRegistry(options);
}

std::string ServiceId(const std::string& name) { return absl::StrCat(name, "-", ::getpid()); }

absl::StatusOr<std::unique_ptr<registry::PrefixIndex>> ConnectPrefixIndex(const ClusterConfig& config) {
  STRATA_ASSIGN_OR_RETURN(registry::RedisOptions redis, registry::ParseRedisAddress(config.RedisAddress()));
  redis.cluster = config.cluster;
  return registry::MakeRedisPrefixIndex({.redis = redis});
}

decode::SchedulerOptions DecodeSchedulerOptions(
    const ClusterConfig& config, const engine::Runtime& runtime, const engine::Tokenizer& tokenizer,
    std::function<void(absl::Span<const engine::BlockKey>, bool)> on_change) {
  const PrefixCacheSettings& pc = config.prefix_cache;
  return {.max_batch = config.decode.max_batch,
          .max_queue = config.decode.max_queue,
          .chunk_tokens = config.prefill.chunk_tokens,
          .eos_id = tokenizer.eos_id(),
          .num_tokens = tokenizer.num_tokens(),
          .prefix_cache = pc.enabled,
          .cache = {.max_checkpoint_bytes = int64_t{pc.checkpoint_mib} << 20, .on_change = std::move(on_change)},
          .checkpoint_every = pc.checkpoint_every,
          .model_identity = runtime.checkpoint->identity(),
          .local_prefill_limit = pc.local_prefill_limit};
}

}  // namespace strata::cli
