// strata prefill / strata decode: one worker of a cluster, configured by the cluster file.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/cluster_config.h"
#include "cli/commands.h"
#include "cli/service_host.h"
#include "common/status.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "engine/kv/kv_cache.h"
#include "engine/model.h"
#include "engine/runtime.h"
#include "engine/tokenizer.h"
#include "kvstore/kvstore_client.h"
#include "prefill/prefill_service.h"
#include "prefill/prefill_worker.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "spdlog/spdlog.h"
#include "transport/transport.h"

namespace strata::cli {
namespace {

struct WorkerFlags {
  std::string config = "deploy/local/cluster.yaml";
  std::string model, redis;
  int index = 0;
  int threads = -1;  // -1: from the config
};

void AddWorkerFlags(CLI::App* cmd, WorkerFlags& f) {
  cmd->add_option("--config", f.config, "cluster file")->capture_default_str();
  cmd->add_option("--index", f.index, "which worker of this role in the cluster file")->capture_default_str();
  cmd->add_option("--model", f.model, "model folder (overrides the cluster file)");
  cmd->add_option("--redis", f.redis, "Redis host:port (overrides the cluster file)");
  cmd->add_option("--threads", f.threads, "CPU threads for the model (overrides the cluster file)");
}

// Gauges and counters published from a stats snapshot on every scrape.
class StatsMetrics {
 public:
  StatsMetrics(prometheus::Registry& r, const std::string& role)
      : running_(prometheus::BuildGauge().Name(absl::StrCat("strata_", role, "_running_requests")).Help("Requests being computed").Register(r).Add({})),
        queued_(prometheus::BuildGauge().Name(absl::StrCat("strata_", role, "_queued_requests")).Help("Requests waiting for KV blocks").Register(r).Add({})),
        free_(prometheus::BuildGauge().Name(absl::StrCat("strata_", role, "_kv_blocks_free")).Help("Free blocks in the KV pool").Register(r).Add({})),
        total_(prometheus::BuildGauge().Name(absl::StrCat("strata_", role, "_kv_blocks_total")).Help("Blocks in the KV pool").Register(r).Add({})),
        tokens_(prometheus::BuildCounter().Name(absl::StrCat("strata_", role, "_tokens_total")).Help(role == "decode" ? "Tokens generated" : "Prompt tokens computed").Register(r).Add({})),
        bytes_(prometheus::BuildCounter().Name(absl::StrCat("strata_", role, "_kv_bytes_sent_total")).Help("KV bytes pushed to decode workers").Register(r).Add({})) {}

  void Update(int64_t running, int64_t queued, int64_t free_blocks, int64_t total_blocks, int64_t tokens, uint64_t bytes) {
    running_.Set(static_cast<double>(running));
    queued_.Set(static_cast<double>(queued));
    free_.Set(static_cast<double>(free_blocks));
    total_.Set(static_cast<double>(total_blocks));
    if (tokens > last_tokens_) tokens_.Increment(static_cast<double>(tokens - last_tokens_));
    if (bytes > last_bytes_) bytes_.Increment(static_cast<double>(bytes - last_bytes_));
    last_tokens_ = std::max(last_tokens_, tokens);
    last_bytes_ = std::max(last_bytes_, bytes);
  }

 private:
  prometheus::Gauge &running_, &queued_, &free_, &total_;
  prometheus::Counter &tokens_, &bytes_;
  int64_t last_tokens_ = 0;
  uint64_t last_bytes_ = 0;
};

// strata_<role>_prefix_*: the worker's local prefix cache (engine::PrefixCache), from its stats.
class PrefixMetrics {
 public:
  PrefixMetrics(prometheus::Registry& r, const std::string& role) {
    auto counter = [&](const std::string& what, const std::string& help) -> prometheus::Counter& {
      return prometheus::BuildCounter().Name(absl::StrCat("strata_", role, "_prefix_", what)).Help(help).Register(r).Add({});
    };
    auto gauge = [&](const std::string& what, const std::string& help) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name(absl::StrCat("strata_", role, "_prefix_", what)).Help(help).Register(r).Add({});
    };
    lookups_ = &counter("lookups_total", "Prefix-cache lookups (one per admitted request)");
    hits_ = &counter("hits_total", "Lookups that resumed from a cached prefix");
    hit_tokens_ = &counter("hit_tokens_total", "Prompt tokens resumed from the cache, not computed");
    inserted_ = &counter("inserted_blocks_total", "Blocks added to the cache");
    evicted_ = &counter("evicted_blocks_total", "Blocks dropped from the cache (LRU, or for space)");
    blocks_ = &gauge("blocks", "Blocks the cache holds");
    checkpoints_ = &gauge("checkpoints", "Boundary checkpoints the cache holds");
    checkpoint_bytes_ = &gauge("checkpoint_bytes", "Bytes of those checkpoints");
  }
  void Update(const engine::PrefixCacheStats& s) {
    Advance(*lookups_, s.lookups, last_.lookups);
    Advance(*hits_, s.hits, last_.hits);
    Advance(*hit_tokens_, s.hit_tokens, last_.hit_tokens);
    Advance(*inserted_, s.inserted_blocks, last_.inserted_blocks);
    Advance(*evicted_, s.evicted_blocks, last_.evicted_blocks);
    blocks_->Set(static_cast<double>(s.blocks));
    checkpoints_->Set(static_cast<double>(s.checkpoints));
    checkpoint_bytes_->Set(static_cast<double>(s.checkpoint_bytes));
    last_ = s;
  }

 private:
  static void Advance(prometheus::Counter& c, int64_t now, int64_t before) {
    if (now > before) c.Increment(static_cast<double>(now - before));
  }
  prometheus::Counter *lookups_, *hits_, *hit_tokens_, *inserted_, *evicted_;
  prometheus::Gauge *blocks_, *checkpoints_, *checkpoint_bytes_;
  engine::PrefixCacheStats last_;
};

// The parts both worker roles build the same way.
struct WorkerBase {
  ClusterConfig config;
  ServiceEndpoints me;
  std::unique_ptr<engine::Runtime> runtime;
  std::unique_ptr<engine::KvLayout> layout;
  std::unique_ptr<engine::KvPool> pool;
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<transport::Transport> transport;
  std::unique_ptr<registry::Registry> registry;
  std::string id;  // registry id, and the worker's location in the prefix index
  std::unique_ptr<registry::PrefixIndex> prefix_index;
  std::unique_ptr<registry::PrefixPublisher> publisher;
  std::shared_ptr<prometheus::Registry> metrics = std::make_shared<prometheus::Registry>();

  // What the prefix cache tells the index (nothing with the cache off).
  std::function<void(absl::Span<const engine::BlockKey>, bool)> OnPrefixChange() {
    if (publisher == nullptr) return nullptr;
    return [p = publisher.get()](absl::Span<const engine::BlockKey> keys, bool added) {
      std::vector<std::string> hex;
      hex.reserve(keys.size());
      for (const engine::BlockKey& k : keys) hex.push_back(k.Hex());
      added ? p->Added(std::move(hex)) : p->Removed(std::move(hex));
    };
  }
  engine::KeyScope scope() const { return {runtime->checkpoint->identity(), layout->fingerprint()}; }
};

absl::Status Prepare(const WorkerFlags& f, const std::string& role, WorkerBase& w) {
  STRATA_ASSIGN_OR_RETURN(w.config, LoadClusterConfig(f.config));
  if (!f.model.empty()) w.config.model = f.model;
  if (!f.redis.empty()) w.config.redis = f.redis;
  STRATA_ASSIGN_OR_RETURN(w.me, w.config.Endpoints(role, f.index));
  const int threads = f.threads >= 0 ? f.threads : (role == "decode" ? w.config.decode.threads : w.config.prefill.threads);
  const int64_t blocks = role == "decode" ? w.config.decode.kv_blocks : w.config.prefill.kv_blocks;
  STRATA_ASSIGN_OR_RETURN(w.runtime, engine::LoadRuntime(w.config.model, {.threads = threads}));
  w.layout = std::make_unique<engine::KvLayout>(w.runtime->config());
  w.pool = std::make_unique<engine::KvPool>(*w.layout, blocks);
  w.model = std::make_unique<engine::Model>(*w.runtime->weights, *w.runtime->backend, *w.runtime->experts, *w.pool);
  if (w.config.transport == "ucx") {
    STRATA_ASSIGN_OR_RETURN(w.transport, transport::MakeUcxTransport({.transports = w.config.ucx_tls, .host = w.me.host}));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("transport '", w.config.transport,
                                                   "' cannot connect separate processes; use ucx"));
  }
  STRATA_ASSIGN_OR_RETURN(w.registry, ConnectRegistry(w.config.RedisAddress(), w.config.cluster));
  w.id = ServiceId(w.me.name);
  if (w.config.prefix_cache.enabled) {
    STRATA_ASSIGN_OR_RETURN(w.prefix_index, ConnectPrefixIndex(w.config));
    w.publisher = std::make_unique<registry::PrefixPublisher>(*w.prefix_index, w.id);
  }
  return absl::OkStatus();
}

registry::ServiceRecord Record(const WorkerBase& w) {
  registry::ServiceRecord r;
  r.id = w.id;
  r.role = w.me.role;
  r.grpc_address = w.me.grpc_address();
  r.http_address = w.me.http_address();
  r.transport_address = w.transport->address();
  r.model = w.config.ServedModelName();
  r.kv_scope = w.scope().Hex();
  return r;
}

// Registers, serves until SIGINT/SIGTERM, then leaves rotation first and lets in-flight calls
// finish (up to 10 s) before the process ends.
absl::Status ServeUntilSignal(const WorkerBase& w, std::unique_ptr<registry::Heartbeat> heartbeat, grpc::Server& grpc,
                              HttpServer& http) {
  STRATA_RETURN_IF_ERROR(Annotate(heartbeat->Start(), "registering in Redis"));
  spdlog::info("{} ready: gRPC {}, HTTP {}, {} KV blocks ({} transport)", w.me.name, w.me.grpc_address(),
               w.me.http_address(), w.pool->num_blocks(), w.transport->name());
  const int sig = WaitForShutdownSignal();
  spdlog::info("{}: signal {}, shutting down", w.me.name, sig);
  heartbeat.reset();  // out of rotation first
  grpc.Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  http.Stop(absl::Seconds(1));
  return absl::OkStatus();
}

absl::Status RunDecode(const WorkerFlags& f) {
  BlockShutdownSignals();
  WorkerBase w;
  STRATA_RETURN_IF_ERROR(Prepare(f, "decode", w));
  STRATA_ASSIGN_OR_RETURN(auto tokenizer, engine::Tokenizer::Load(w.config.model));
  decode::Scheduler scheduler(*w.model, *w.pool, DecodeSchedulerOptions(w.config, *w.runtime, *tokenizer, w.OnPrefixChange()));
  STRATA_ASSIGN_OR_RETURN(auto service, decode::DecodeService::Create(scheduler, *w.pool, *w.transport, {}));
  STRATA_ASSIGN_OR_RETURN(auto grpc, StartGrpcServer(w.me.grpc_address(), {service.get()}));
  StatsMetrics stats(*w.metrics, "decode");
  PrefixMetrics prefix(*w.metrics, "decode");
  // The exposed KV hand-off (prefill's wait for its pushes + verification here), for the
  // "hand-off share of TTFT" figure of `strata bench serve`.
  auto& handoffs = prometheus::BuildCounter().Name("strata_decode_kv_handoffs_total")
                       .Help("Requests whose prompt KV landed from a prefill worker").Register(*w.metrics).Add({});
  auto& handoff_seconds = prometheus::BuildCounter().Name("strata_decode_kv_handoff_seconds_total")
                              .Help("Exposed KV hand-off time: prefill waiting for its pushes, plus verification here")
                              .Register(*w.metrics).Add({});
  int64_t last_handoffs = 0;
  double last_handoff_seconds = 0;
  STRATA_ASSIGN_OR_RETURN(auto http, StartMetricsServer(w.me.host, w.me.http_port, w.metrics, [&] {
    decode::SchedulerStats s = scheduler.stats();
    stats.Update(s.running, s.queued, s.free_blocks, s.total_blocks, s.generated_tokens, 0);
    prefix.Update(s.prefix);
    if (s.handoffs > last_handoffs) handoffs.Increment(static_cast<double>(s.handoffs - last_handoffs));
    if (s.handoff_seconds > last_handoff_seconds) handoff_seconds.Increment(s.handoff_seconds - last_handoff_seconds);
    last_handoffs = s.handoffs;
    last_handoff_seconds = s.handoff_seconds;
  }, [&scheduler] { scheduler.DropPrefixCache(); }));
  auto heartbeat = std::make_unique<registry::Heartbeat>(*w.registry, Record(w), kServiceLease, [&] {
    decode::SchedulerStats s = scheduler.stats();
    return registry::Load{.queued_tokens = s.queued_tokens, .running_requests = s.running + s.queued,
                          .free_kv_blocks = s.free_blocks, .total_kv_blocks = s.total_blocks};
  });
  return ServeUntilSignal(w, std::move(heartbeat), *grpc, *http);
}

absl::Status RunPrefill(const WorkerFlags& f) {
  BlockShutdownSignals();
  WorkerBase w;
  STRATA_RETURN_IF_ERROR(Prepare(f, "prefill", w));
  // The kvstores: where prompts' prefixes are fetched from and new blocks written back to.
  std::unique_ptr<kvstore::KvStoreClient> store;
  if (w.config.kvstore.count > 0 && w.config.prefix_cache.enabled) {
    kvstore::KvStoreClientOptions o;
    for (int i = 0; i < w.config.kvstore.count; ++i) o.addresses.push_back(w.config.KvStoreEndpoints(i).grpc_address());
    STRATA_ASSIGN_OR_RETURN(store, kvstore::KvStoreClient::Create(*w.transport, *w.pool, o));
  }
  STRATA_ASSIGN_OR_RETURN(auto worker, prefill::PrefillWorker::Create(*w.model, *w.pool, *w.transport,
                                                                       {.chunk_tokens = w.config.prefill.chunk_tokens,
                                                                        .step_target_ms = w.config.prefill.step_target_ms,
                                                                        .prefix_cache = w.config.prefix_cache.enabled,
                                                                        .cache = {.max_checkpoint_bytes = int64_t{w.config.prefix_cache.checkpoint_mib} << 20,
                                                                                  .on_change = w.OnPrefixChange()},
                                                                        .checkpoint_every = w.config.prefix_cache.checkpoint_every,
                                                                        .model_identity = w.runtime->checkpoint->identity(),
                                                                        .source = store.get()}));
  prefill::PrefillService service(*worker);
  STRATA_ASSIGN_OR_RETURN(auto grpc, StartGrpcServer(w.me.grpc_address(), {&service}));
  StatsMetrics stats(*w.metrics, "prefill");
  PrefixMetrics prefix(*w.metrics, "prefill");
  STRATA_ASSIGN_OR_RETURN(auto http, StartMetricsServer(w.me.host, w.me.http_port, w.metrics, [&] {
    prefill::PrefillStats s = worker->stats();
    stats.Update(s.running, s.queued, s.free_blocks, s.total_blocks, s.tokens_computed, s.kv_bytes_sent);
    prefix.Update(s.prefix);
  }, [&worker] { worker->DropPrefixCache(); }));
  auto heartbeat = std::make_unique<registry::Heartbeat>(*w.registry, Record(w), kServiceLease, [&] {
    prefill::PrefillStats s = worker->stats();
    return registry::Load{.queued_tokens = s.queued_tokens, .running_requests = s.running + s.queued,
                          .free_kv_blocks = s.free_blocks, .total_kv_blocks = s.total_blocks};
  });
  return ServeUntilSignal(w, std::move(heartbeat), *grpc, *http);
}

}  // namespace

void AddWorkerCommands(CLI::App& app, int* exit_code) {
  auto df = std::make_shared<WorkerFlags>();
  CLI::App* d = app.add_subcommand("decode", "Run a decode worker: continuous batching, sampling, token streams.");
  AddWorkerFlags(d, *df);
  d->callback([df, exit_code] {
    absl::Status s = RunDecode(*df);
    if (!s.ok()) *exit_code = Fail("decode", s.ToString());
  });
  auto pf = std::make_shared<WorkerFlags>();
  CLI::App* p = app.add_subcommand("prefill", "Run a prefill worker: computes prompts and pushes their KV to decode workers.");
  AddWorkerFlags(p, *pf);
  p->callback([pf, exit_code] {
    absl::Status s = RunPrefill(*pf);
    if (!s.ok()) *exit_code = Fail("prefill", s.ToString());
  });
}

}  // namespace strata::cli
