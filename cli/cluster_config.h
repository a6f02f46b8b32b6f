// The cluster file (deploy/local/cluster.yaml): the services a cluster has, where each listens and
// its settings. `strata up` reads it to start a whole cluster on one machine; each service command
// (`strata router|prefill|decode --config FILE [--index I]`) reads the same file to find its own
// settings and its peers.
//
//   STRATA_ASSIGN_OR_RETURN(ClusterConfig config, LoadClusterConfig("deploy/local/cluster.yaml"));
//   ServiceEndpoints me = config.DecodeEndpoints(index);   // me.grpc_address(), me.http_port
//
// Parsing is strict: an unknown key, a value of the wrong type or out of range, or two services on
// one port is an error naming the file, the line and the key.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::cli {

struct ApiKey {
  std::string key;
  std::string tenant;
};

struct RouterSettings {
  std::string host = "127.0.0.1";
  int http_port = 8000;               // OpenAI API, /metrics, /healthz
  int grpc_port = 8001;               // strata.v1.Api
  std::string policy = "kv_aware";  // round_robin | least_load | kv_aware
  int max_inflight = 256;
  std::vector<ApiKey> api_keys;
  int max_attempts = 3;              // decode attempts per request (moves off failed workers)
  double inactivity_timeout_s = 15;  // no event from a decode worker for this long: it is hung
  double request_timeout_s = 3600;   // every request's deadline
};

struct PrefillSettings {
  int count = 1;
  std::string host = "127.0.0.1";
  int base_port = 8100;  // worker i: gRPC on base_port + 2i, HTTP on base_port + 2i + 1
  int threads = 1;
  int chunk_tokens = 512;
  double step_target_ms = 250;  // a step's time budget (0: chunk_tokens alone)
  int kv_blocks = 1024;
};

struct DecodeSettings {
  int count = 1;
  std::string host = "127.0.0.1";
  int base_port = 8200;
  int threads = 1;
  int kv_blocks = 4096;
  int max_batch = 32;
  int max_queue = 256;
};

// The kvstore (DESIGN.md §1 step 5): the prefix-cache store the prefill workers fetch cached
// blocks from and write new ones back to. count 0: none (the workers' own caches only). Each
// kvstore keeps its SSD tier in ssd_dir/kvstore-<index>; a restarted one serves what it holds.
struct KvStoreSettings {
  int count = 0;
  std::string host = "127.0.0.1";
  int base_port = 8300;  // kvstore i: gRPC on base_port + 2i, HTTP on base_port + 2i + 1
  int ram_mib = 1024;
  std::string ssd_dir;   // empty: RAM only
  int ssd_mib = 0;
};

// Prefix reuse on the workers (DESIGN.md §5): each keeps finished requests' full KV blocks in its
// own pool, with boundary checkpoints, so a prompt that starts like an earlier one (the next turn
// of a conversation, another question about a document) computes only the rest.
struct PrefixCacheSettings {
  bool enabled = true;
  int checkpoint_every = 16;        // blocks (of 128 tokens) between checkpoints
  int checkpoint_mib = 512;         // per worker: memory its checkpoints may take
  // A decode worker computes a request itself, rather than sending it to a prefill worker, when
  // its prompt past what that decode worker has cached is at most this many tokens.
  int local_prefill_limit = 2048;
};

// What `strata up` does when one of its processes (a service, the private Redis) exits without
// being asked to: restart it after a backoff that doubles from backoff_s up to max_backoff_s
// (back to backoff_s once it has stayed up reset_after_s), and give up on it when it would be its
// restart number max_restarts + 1 within window_s.
struct SuperviseSettings {
  int max_restarts = 5;  // 0: never restart
  double window_s = 60;
  double backoff_s = 0.5;
  double max_backoff_s = 10;
  double reset_after_s = 30;
};

// Where one service listens.
struct ServiceEndpoints {
  std::string name;  // "router", "prefill-0", "decode-1": log prefix, base of its registry id
  std::string role;  // "router", "prefill", "decode" or "kvstore"
  int index = 0;
  std::string host;
  int grpc_port = 0;
  int http_port = 0;  // /metrics and /healthz (the router's OpenAI API too)

  std::string grpc_address() const;  // host:port
  std::string http_address() const;
};

struct ClusterConfig {
  std::string source;               // the file it was read from, for messages
  std::string cluster = "local";    // Redis key namespace
  std::string model;                // model folder; `--model` overrides
  std::string model_name;           // name clients pass as "model"; see ServedModelName()
  std::string redis;                // host:port of an existing Redis; empty: a private one
  int redis_port = 6390;            // port of the private redis-server
  std::string transport = "ucx";    // ucx | inproc
  std::string ucx_tls;              // UCX_TLS for the KV transfer; empty: UCX's choice
  std::string log_format = "text";  // text | json
  RouterSettings router;
  PrefillSettings prefill;
  DecodeSettings decode;
  KvStoreSettings kvstore;
  PrefixCacheSettings prefix_cache;
  SuperviseSettings supervise;

  // `model_name`, or the model folder's base name when that is empty.
  std::string ServedModelName() const;
  // True when `strata up` starts its own redis-server (no `redis` given).
  bool private_redis() const { return redis.empty(); }
  // `redis`, or 127.0.0.1:redis_port for the private one.
  std::string RedisAddress() const;

  ServiceEndpoints RouterEndpoints() const;
  ServiceEndpoints PrefillEndpoints(int index) const;  // 0 <= index < prefill.count
  ServiceEndpoints DecodeEndpoints(int index) const;   // 0 <= index < decode.count
  ServiceEndpoints KvStoreEndpoints(int index) const;  // 0 <= index < kvstore.count
  // `role` ("router", "prefill", "decode", "kvstore") number `index`, or an error naming the
  // valid range.
  absl::StatusOr<ServiceEndpoints> Endpoints(absl::string_view role, int index) const;
  // The router, then every prefill worker, every decode worker and every kvstore.
  std::vector<ServiceEndpoints> AllServices() const;
};

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);
absl::StatusOr<ClusterConfig> ParseClusterConfig(absl::string_view yaml,
                                                 const std::string& source_name);

}  // namespace strata::cli
