// strata router: the cluster's front door (OpenAI HTTP API and the gRPC API strata.v1.Api) in
// front of the registry's workers.
// strata serve --colocated: the same APIs served by one process running the whole model.
#include <algorithm>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "cli/cluster_config.h"
#include "cli/commands.h"
#include "cli/service_host.h"
#include "common/status.h"
#include "decode/scheduler.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/runtime.h"
#include "engine/tokenizer.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "router/api_service.h"
#include "router/cluster_upstream.h"
#include "router/front.h"
#include "router/local_upstream.h"
#include "router/policy.h"
#include "spdlog/spdlog.h"

namespace strata::cli {
namespace {

struct RouterFlags {
  std::string config = "deploy/local/cluster.yaml";
  std::string model, redis;
  bool colocated = false;
  int threads = -1;
};

router::OpenAiFrontOptions FrontOptions(const ClusterConfig& config, const engine::ModelConfig& model) {
  router::OpenAiFrontOptions o;
  o.http.address = config.router.host;
  o.http.port = static_cast<uint16_t>(config.router.http_port);
  o.http.io_threads = 2;
  o.served_model = config.ServedModelName();
  o.max_context_tokens = model.max_position_embeddings;
  o.max_in_flight = config.router.max_inflight;
  for (const ApiKey& k : config.router.api_keys) o.api_keys.push_back({k.key, k.tenant});
  return o;
}

// The gRPC API answers like the HTTP front: same model, context, limits and keys.
router::ApiServiceOptions ApiOptions(const router::OpenAiFrontOptions& http) {
  return {.served_model = http.served_model,
          .max_context_tokens = http.max_context_tokens,
          .default_max_tokens = http.default_max_tokens,
          .max_in_flight = http.max_in_flight,
          .api_keys = http.api_keys};
}

// SIGTERM: the gRPC API stops accepting and drains, then the HTTP front, within one grace period.
void StopApis(grpc::Server& grpc_server, router::OpenAiFront& front) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  grpc_server.Shutdown(absl::ToChronoTime(deadline));
  front.Stop(std::max(deadline - absl::Now(), absl::ZeroDuration()));
}

absl::Status RunRouter(const RouterFlags& f) {
  BlockShutdownSignals();
  STRATA_ASSIGN_OR_RETURN(ClusterConfig config, LoadClusterConfig(f.config));
  if (!f.model.empty()) config.model = f.model;
  if (!f.redis.empty()) config.redis = f.redis;
  STRATA_ASSIGN_OR_RETURN(engine::ModelConfig model, engine::ModelConfig::Load(config.model + "/config.json"));
  STRATA_ASSIGN_OR_RETURN(auto tokenizer, engine::Tokenizer::Load(config.model));
  STRATA_ASSIGN_OR_RETURN(auto registry, ConnectRegistry(config.RedisAddress(), config.cluster));
  STRATA_ASSIGN_OR_RETURN(
      auto policy, router::MakePolicy(config.router.policy,
                                      {.local_prefill_limit = config.prefix_cache.local_prefill_limit}));
  std::unique_ptr<registry::PrefixIndex> prefix_index;
  if (policy->uses_prefix_index()) {
    STRATA_ASSIGN_OR_RETURN(prefix_index, ConnectPrefixIndex(config));
  }
  router::ClusterUpstream upstream(
      *registry, std::move(policy),
      {.model = config.ServedModelName(),
       .max_attempts = config.router.max_attempts,
       .inactivity_timeout = absl::Seconds(config.router.inactivity_timeout_s),
       .request_timeout = absl::Seconds(config.router.request_timeout_s)},
      Clock::Real(), prefix_index.get());
  absl::Status first = upstream.Refresh();
  if (!first.ok()) spdlog::warn("registry not readable yet: {}", first.ToString());

  auto metrics = std::make_shared<prometheus::Registry>();
  auto& live = prometheus::BuildGauge()
                   .Name("strata_router_live_workers")
                   .Help("Workers in rotation, by role (from the registry)")
                   .Register(*metrics);
  prometheus::Gauge& live_prefill = live.Add({{"role", "prefill"}});
  prometheus::Gauge& live_decode = live.Add({{"role", "decode"}});
  // kv_aware's own overhead: the prefix-index lookups before each request is routed.
  auto& lookups = prometheus::BuildCounter().Name("strata_router_prefix_lookups_total")
                      .Help("Prefix-index lookups (kv_aware routing), by outcome").Register(*metrics);
  prometheus::Counter& lookups_ok = lookups.Add({{"outcome", "ok"}});
  prometheus::Counter& lookups_failed = lookups.Add({{"outcome", "failed"}});
  prometheus::Counter& lookups_skipped = lookups.Add({{"outcome", "skipped"}});
  prometheus::Counter& lookup_seconds = prometheus::BuildCounter().Name("strata_router_prefix_lookup_seconds_total")
                                            .Help("Time spent in prefix-index lookups (hashing the prompt included)")
                                            .Register(*metrics).Add({});
  absl::Notification stop;
  std::thread watcher([&] {
    router::PrefixLookupStats last;
    do {
      router::ClusterSnapshot s = upstream.snapshot();
      live_prefill.Set(static_cast<double>(s.prefill.size()));
      live_decode.Set(static_cast<double>(s.decode.size()));
      const router::PrefixLookupStats p = upstream.prefix_stats();
      lookups_ok.Increment(static_cast<double>((p.lookups - p.failures) - (last.lookups - last.failures)));
      lookups_failed.Increment(static_cast<double>(p.failures - last.failures));
      lookups_skipped.Increment(static_cast<double>(p.skipped - last.skipped));
      lookup_seconds.Increment(p.seconds - last.seconds);
      last = p;
    } while (!stop.WaitForNotificationWithTimeout(absl::Milliseconds(250)));
  });

  const router::OpenAiFrontOptions front_options = FrontOptions(config, model);
  router::OpenAiFront front(front_options, *tokenizer, upstream, metrics);
  router::ApiService api(ApiOptions(front_options), *tokenizer, upstream, metrics);
  ServiceEndpoints me = config.RouterEndpoints();
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc_server = absl::UnknownError("not started");
  absl::Status started =
      Annotate(front.Start(), absl::StrCat("router HTTP on ", config.router.host, ":", config.router.http_port));
  if (started.ok()) {
    grpc_server = StartGrpcServer(me.grpc_address(), {&api});
    started = grpc_server.status();
  }
  if (!started.ok()) {
    stop.Notify();
    watcher.join();
    return started;  // the front stops as it goes
  }
  registry::ServiceRecord record{.id = ServiceId("router"), .role = "router", .grpc_address = me.grpc_address(),
                                 .http_address = me.http_address(), .model = config.ServedModelName()};
  auto heartbeat = std::make_unique<registry::Heartbeat>(*registry, record, kServiceLease, [] { return registry::Load{}; });
  absl::Status registered = heartbeat->Start();
  if (!registered.ok()) spdlog::warn("router not registered in Redis: {}", registered.ToString());
  spdlog::info("router ready: http://{}:{}/v1, gRPC {} (model {}, policy {})", config.router.host, front.port(),
               me.grpc_address(), config.ServedModelName(), config.router.policy);
  const int sig = WaitForShutdownSignal();
  spdlog::info("router: signal {}, shutting down", sig);
  heartbeat.reset();
  StopApis(**grpc_server, front);
  stop.Notify();
  watcher.join();
  return absl::OkStatus();
}

absl::Status RunColocated(const RouterFlags& f) {
  BlockShutdownSignals();
  STRATA_ASSIGN_OR_RETURN(ClusterConfig config, LoadClusterConfig(f.config));
  if (!f.model.empty()) config.model = f.model;
  const int threads = f.threads >= 0 ? f.threads : config.decode.threads;
  STRATA_ASSIGN_OR_RETURN(auto runtime, engine::LoadRuntime(config.model, {.threads = threads}));
  STRATA_ASSIGN_OR_RETURN(auto tokenizer, engine::Tokenizer::Load(config.model));
  engine::KvLayout layout(runtime->config());
  engine::KvPool pool(layout, config.decode.kv_blocks);
  engine::Model model(*runtime->weights, *runtime->backend, *runtime->experts, pool);
  decode::Scheduler scheduler(model, pool, DecodeSchedulerOptions(config, *runtime, *tokenizer));
  router::LocalUpstream upstream(scheduler);
  auto metrics = std::make_shared<prometheus::Registry>();
  const router::OpenAiFrontOptions front_options = FrontOptions(config, runtime->config());
  router::OpenAiFront front(front_options, *tokenizer, upstream, metrics);
  router::ApiService api(ApiOptions(front_options), *tokenizer, upstream, metrics);
  STRATA_RETURN_IF_ERROR(
      Annotate(front.Start(), absl::StrCat("HTTP on ", config.router.host, ":", config.router.http_port)));
  const std::string grpc_address = config.RouterEndpoints().grpc_address();
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> grpc_server, StartGrpcServer(grpc_address, {&api}));
  spdlog::info("colocated server ready: http://{}:{}/v1, gRPC {} (model {}, {} KV blocks)", config.router.host,
               front.port(), grpc_address, config.ServedModelName(), pool.num_blocks());
  const int sig = WaitForShutdownSignal();
  spdlog::info("serve: signal {}, shutting down", sig);
  StopApis(*grpc_server, front);
  return absl::OkStatus();
}

}  // namespace

void AddRouterCommands(CLI::App& app, int* exit_code) {
  auto rf = std::make_shared<RouterFlags>();
  CLI::App* r = app.add_subcommand("router", "Run the router: the OpenAI-compatible HTTP API in front of the cluster's workers.");
  r->add_option("--config", rf->config, "cluster file")->capture_default_str();
  r->add_option("--model", rf->model, "model folder, for the tokenizer and context length (overrides the cluster file)");
  r->add_option("--redis", rf->redis, "Redis host:port (overrides the cluster file)");
  r->callback([rf, exit_code] {
    absl::Status s = RunRouter(*rf);
    if (!s.ok()) *exit_code = Fail("router", s.ToString());
  });

  auto sf = std::make_shared<RouterFlags>();
  CLI::App* s = app.add_subcommand("serve", "Serve the OpenAI-compatible API from one process (--colocated): the whole "
                                            "model, batched, no other services.");
  s->add_flag("--colocated", sf->colocated, "run prefill and decode in this process (the only mode so far)")->required();
  s->add_option("--config", sf->config, "cluster file (its router section: address, port, keys)")->capture_default_str();
  s->add_option("--model", sf->model, "model folder (overrides the cluster file)");
  s->add_option("--threads", sf->threads, "CPU threads for the model (default: the decode section's)");
  s->callback([sf, exit_code] {
    absl::Status st = RunColocated(*sf);
    if (!st.ok()) *exit_code = Fail("serve", st.ToString());
  });
}

}  // namespace strata::cli
