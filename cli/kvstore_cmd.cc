// strata kvstore: one prefix-cache store of a cluster (the cluster file's `kvstore:` section):
// its RAM and SSD tiers, strata.v1.KvStore on gRPC, the data over UCX, /metrics and /healthz,
// registered in Redis, and every block it holds published in the prefix index.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/cluster_config.h"
#include "cli/commands.h"
#include "cli/service_host.h"
#include "common/status.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"
#include "kvstore/block_store.h"
#include "kvstore/kvstore_service.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "spdlog/spdlog.h"
#include "transport/transport.h"

namespace strata::cli {
namespace {

struct KvStoreFlags {
  std::string config = "deploy/local/cluster.yaml";
  std::string model, redis;
  int index = 0;
};

// strata_kvstore_*: the store's and the service's counts, published on every scrape.
class KvStoreMetrics {
 public:
  explicit KvStoreMetrics(prometheus::Registry& r) {
    auto gauge = [&](const std::string& name, const std::string& help, const prometheus::Labels& labels = {}) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name("strata_kvstore_" + name).Help(help).Register(r).Add(labels);
    };
    // Counters are mirrored as gauges set to the store's running totals (they only grow).
    blocks_ram_ = &gauge("blocks", "Records held, by tier and kind", {{"tier", "ram"}, {"kind", "block"}});
    checkpoints_ram_ = &gauge("blocks", "Records held, by tier and kind", {{"tier", "ram"}, {"kind", "checkpoint"}});
    blocks_ssd_ = &gauge("blocks", "Records held, by tier and kind", {{"tier", "ssd"}, {"kind", "block"}});
    checkpoints_ssd_ = &gauge("blocks", "Records held, by tier and kind", {{"tier", "ssd"}, {"kind", "checkpoint"}});
    hits_ram_ = &gauge("hits_total", "Records served, by the tier they came from", {{"tier", "ram"}});
    hits_ssd_ = &gauge("hits_total", "Records served, by the tier they came from", {{"tier", "ssd"}});
    bytes_ram_ = &gauge("hit_bytes_total", "Bytes served, by tier", {{"tier", "ram"}});
    bytes_ssd_ = &gauge("hit_bytes_total", "Bytes served, by tier", {{"tier", "ssd"}});
    misses_ = &gauge("misses_total", "Fetches that found no resumable prefix");
    lookups_ = &gauge("lookups_total", "Lookups of a key chain");
    committed_ = &gauge("committed_total", "Records written and verified");
    rejected_ = &gauge("rejected_total", "Records dropped at commit: they did not verify");
    evict_ram_ = &gauge("evictions_total", "Records evicted, by tier", {{"tier", "ram"}});
    evict_ssd_ = &gauge("evictions_total", "Records evicted, by tier", {{"tier", "ssd"}});
    corrupt_ = &gauge("corrupt_total", "Records that failed verification when read from the SSD tier (deleted)");
    write_expiries_ = &gauge("lease_expiries_total", "Leases that lapsed, by kind", {{"kind", "write"}});
    read_expiries_ = &gauge("lease_expiries_total", "Leases that lapsed, by kind", {{"kind", "read"}});
    fetches_ = &gauge("fetches_total", "Prefixes pushed to requesters");
    fetched_bytes_ = &gauge("fetch_bytes_total", "Bytes pushed to requesters");
    fetch_seconds_ = &gauge("fetch_seconds_total", "Time spent in fetches (pin, SSD reads, puts)");
  }
  void Update(const kvstore::StoreStats& s, const kvstore::KvStoreService::Stats& f) {
    blocks_ram_->Set(static_cast<double>(s.ram_blocks));
    checkpoints_ram_->Set(static_cast<double>(s.ram_checkpoints));
    blocks_ssd_->Set(static_cast<double>(s.ssd.blocks));
    checkpoints_ssd_->Set(static_cast<double>(s.ssd.checkpoints));
    hits_ram_->Set(static_cast<double>(s.hits_ram));
    hits_ssd_->Set(static_cast<double>(s.hits_ssd));
    bytes_ram_->Set(static_cast<double>(s.bytes_ram));
    bytes_ssd_->Set(static_cast<double>(s.bytes_ssd));
    misses_->Set(static_cast<double>(s.misses));
    lookups_->Set(static_cast<double>(s.lookups));
    committed_->Set(static_cast<double>(s.committed));
    rejected_->Set(static_cast<double>(s.rejected));
    evict_ram_->Set(static_cast<double>(s.ram_evictions));
    evict_ssd_->Set(static_cast<double>(s.ssd.evictions));
    corrupt_->Set(static_cast<double>(s.corrupt + s.ssd.corrupt));
    write_expiries_->Set(static_cast<double>(s.write_lease_expiries));
    read_expiries_->Set(static_cast<double>(s.read_lease_expiries));
    fetches_->Set(static_cast<double>(f.fetches));
    fetched_bytes_->Set(static_cast<double>(f.fetched_bytes));
    fetch_seconds_->Set(f.fetch_seconds);
  }

 private:
  prometheus::Gauge *blocks_ram_, *checkpoints_ram_, *blocks_ssd_, *checkpoints_ssd_, *hits_ram_, *hits_ssd_,
      *bytes_ram_, *bytes_ssd_, *misses_, *lookups_, *committed_, *rejected_, *evict_ram_, *evict_ssd_, *corrupt_,
      *write_expiries_, *read_expiries_, *fetches_, *fetched_bytes_, *fetch_seconds_;
};

absl::Status RunKvStore(const KvStoreFlags& f) {
  BlockShutdownSignals();
  STRATA_ASSIGN_OR_RETURN(ClusterConfig config, LoadClusterConfig(f.config));
  if (!f.model.empty()) config.model = f.model;
  if (!f.redis.empty()) config.redis = f.redis;
  STRATA_ASSIGN_OR_RETURN(ServiceEndpoints me, config.Endpoints("kvstore", f.index));
  // The KV layout is all the store needs of the model: its config, not its weights.
  STRATA_ASSIGN_OR_RETURN(engine::ModelConfig model, engine::ModelConfig::Load(config.model + "/config.json"));
  const engine::KvLayout layout(model);
  STRATA_ASSIGN_OR_RETURN(auto registry, ConnectRegistry(config.RedisAddress(), config.cluster));
  STRATA_ASSIGN_OR_RETURN(auto index, ConnectPrefixIndex(config));
  const std::string id = ServiceId(me.name);
  registry::PrefixPublisher publisher(*index, id);
  kvstore::BlockStoreOptions options{
      .ram_bytes = int64_t{config.kvstore.ram_mib} << 20,
      .ssd_dir = config.kvstore.ssd_dir.empty() ? "" : absl::StrCat(config.kvstore.ssd_dir, "/", me.name),
      .ssd_bytes = int64_t{config.kvstore.ssd_mib} << 20,
      .on_change = [&publisher](absl::Span<const engine::BlockKey> keys, bool added) {
        std::vector<std::string> hex;
        for (const engine::BlockKey& k : keys) hex.push_back(k.Hex());
        added ? publisher.Added(std::move(hex)) : publisher.Removed(std::move(hex));
      }};
  STRATA_ASSIGN_OR_RETURN(auto store, kvstore::BlockStore::Open(layout, options));
  // What the SSD tier kept across a restart is this process's to serve now: publish it again.
  {
    std::vector<std::string> hex;
    for (const engine::BlockKey& k : store->StoredBlocks()) hex.push_back(k.Hex());
    if (!hex.empty()) spdlog::info("{}: {} blocks on the SSD tier from before", me.name, hex.size());
    publisher.Added(std::move(hex));
  }
  STRATA_ASSIGN_OR_RETURN(auto transport,
                          transport::MakeUcxTransport({.transports = config.ucx_tls, .host = me.host}));
  STRATA_ASSIGN_OR_RETURN(auto service, kvstore::KvStoreService::Create(*store, *transport, layout));
  STRATA_ASSIGN_OR_RETURN(auto grpc, StartGrpcServer(me.grpc_address(), {service.get()}));
  auto metrics = std::make_shared<prometheus::Registry>();
  KvStoreMetrics gauges(*metrics);
  STRATA_ASSIGN_OR_RETURN(auto http, StartMetricsServer(me.host, me.http_port, metrics, [&] {
    gauges.Update(store->stats(), service->stats());
  }, [&store] { store->DropRam(); }));
  registry::ServiceRecord record{.id = id, .role = "kvstore", .grpc_address = me.grpc_address(),
                                 .http_address = me.http_address(), .transport_address = transport->address(),
                                 .model = config.ServedModelName()};
  auto heartbeat = std::make_unique<registry::Heartbeat>(*registry, record, kServiceLease, [&] {
    const kvstore::StoreStats s = store->stats();
    return registry::Load{.free_kv_blocks = 0, .total_kv_blocks = s.ram_blocks + s.ssd.blocks};
  });
  STRATA_RETURN_IF_ERROR(Annotate(heartbeat->Start(), "registering in Redis"));
  const kvstore::StoreStats s = store->stats();
  spdlog::info("{} ready: gRPC {}, HTTP {}, RAM tier {} MiB{}, SSD I/O {}", me.name, me.grpc_address(),
               me.http_address(), config.kvstore.ram_mib,
               options.ssd_dir.empty() ? "" : absl::StrCat(", SSD tier ", config.kvstore.ssd_mib, " MiB in ", options.ssd_dir),
               options.ssd_dir.empty() ? "none" : (s.ssd.io_uring ? "io_uring" : "pread/pwrite"));
  const int sig = WaitForShutdownSignal();
  spdlog::info("{}: signal {}, shutting down", me.name, sig);
  heartbeat.reset();
  grpc->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  http->Stop(absl::Seconds(1));
  return absl::OkStatus();
}

}  // namespace

void AddKvStoreCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<KvStoreFlags>();
  CLI::App* cmd = app.add_subcommand(
      "kvstore", "Run a kvstore: the prefix-cache store (RAM and SSD tiers) prefill workers fetch from and write to.");
  cmd->add_option("--config", f->config, "cluster file")->capture_default_str();
  cmd->add_option("--index", f->index, "which kvstore of the cluster file")->capture_default_str();
  cmd->add_option("--model", f->model, "model folder (overrides the cluster file; only its config.json is read)");
  cmd->add_option("--redis", f->redis, "Redis host:port (overrides the cluster file)");
  cmd->callback([f, exit_code] {
    absl::Status s = RunKvStore(*f);
    if (!s.ok()) *exit_code = Fail("kvstore", s.ToString());
  });
}

}  // namespace strata::cli
