#include "cli/cluster_config.h"

#include <algorithm>
#include <filesystem>
#include <initializer_list>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/strings.h"
#include "common/yaml_config.h"
#include "registry/registry.h"

namespace strata::cli {
namespace {

constexpr int kMaxWorkers = 256;

bool IsWildcard(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "[::]";
}

// Reads one cluster file. Every check names the file, the line and the dotted key.
class Parser {
 public:
  explicit Parser(const YamlConfig& yaml) : yaml_(yaml) {}

  absl::StatusOr<ClusterConfig> Parse() {
    ClusterConfig c;
    c.source = yaml_.source();
    STRATA_RETURN_IF_ERROR(
        CheckKeys("", {"cluster", "model", "model_name", "redis", "redis_port", "transport",
                       "ucx_tls", "log_format", "router", "prefill", "decode", "kvstore",
                       "prefix_cache", "supervise"}));
    STRATA_RETURN_IF_ERROR(Read("cluster", &c.cluster));
    if (c.cluster.empty() || !std::all_of(c.cluster.begin(), c.cluster.end(), [](char ch) {
          return absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' ||
                 ch == '.';
        })) {
      return Error("cluster", "must be a non-empty name of letters, digits, '-', '_' and '.'");
    }
    STRATA_RETURN_IF_ERROR(Read("model", &c.model));
    STRATA_RETURN_IF_ERROR(Read("model_name", &c.model_name));
    STRATA_RETURN_IF_ERROR(Read("redis", &c.redis));
    if (!c.redis.empty()) {
      if (absl::StatusOr<registry::RedisOptions> r = registry::ParseRedisAddress(c.redis);
          !r.ok()) {
        return Error("redis", r.status().message());
      }
    }
    STRATA_RETURN_IF_ERROR(ReadInt("redis_port", &c.redis_port, 1, 65535));
    STRATA_RETURN_IF_ERROR(ReadChoice("transport", &c.transport, {"ucx", "inproc"}));
    STRATA_RETURN_IF_ERROR(Read("ucx_tls", &c.ucx_tls));
    STRATA_RETURN_IF_ERROR(ReadChoice("log_format", &c.log_format, {"text", "json"}));

    STRATA_RETURN_IF_ERROR(CheckKeys(
        "router", {"host", "http_port", "grpc_port", "policy", "max_inflight", "api_keys", "max_attempts",
                   "inactivity_timeout_s", "request_timeout_s"}));
    STRATA_RETURN_IF_ERROR(ReadHost("router.host", &c.router.host));
    STRATA_RETURN_IF_ERROR(ReadInt("router.http_port", &c.router.http_port, 1, 65535));
    STRATA_RETURN_IF_ERROR(ReadInt("router.grpc_port", &c.router.grpc_port, 1, 65535));
    STRATA_RETURN_IF_ERROR(
        ReadChoice("router.policy", &c.router.policy, {"round_robin", "least_load", "kv_aware"}));
    STRATA_RETURN_IF_ERROR(ReadInt("router.max_inflight", &c.router.max_inflight, 1, 1 << 20));
    STRATA_RETURN_IF_ERROR(ReadApiKeys(&c.router.api_keys));
    STRATA_RETURN_IF_ERROR(ReadInt("router.max_attempts", &c.router.max_attempts, 1, 100));
    STRATA_RETURN_IF_ERROR(
        ReadSeconds("router.inactivity_timeout_s", &c.router.inactivity_timeout_s, 1, 86400));
    STRATA_RETURN_IF_ERROR(
        ReadSeconds("router.request_timeout_s", &c.router.request_timeout_s, 1, 7 * 86400));

    STRATA_RETURN_IF_ERROR(CheckKeys(
        "prefill", {"count", "host", "base_port", "threads", "chunk_tokens", "step_target_ms", "kv_blocks"}));
    STRATA_RETURN_IF_ERROR(ReadInt("prefill.count", &c.prefill.count, 1, kMaxWorkers));
    STRATA_RETURN_IF_ERROR(ReadHost("prefill.host", &c.prefill.host));
    STRATA_RETURN_IF_ERROR(
        ReadInt("prefill.base_port", &c.prefill.base_port, 1, 65535 - 2 * c.prefill.count + 1));
    STRATA_RETURN_IF_ERROR(ReadInt("prefill.threads", &c.prefill.threads, 1, 4096));
    STRATA_RETURN_IF_ERROR(ReadInt("prefill.chunk_tokens", &c.prefill.chunk_tokens, 1, 1 << 24));
    STRATA_RETURN_IF_ERROR(ReadSeconds("prefill.step_target_ms", &c.prefill.step_target_ms, 0, 600000));
    STRATA_RETURN_IF_ERROR(ReadInt("prefill.kv_blocks", &c.prefill.kv_blocks, 1, 1 << 30));

    STRATA_RETURN_IF_ERROR(CheckKeys("decode", {"count", "host", "base_port", "threads",
                                                "kv_blocks", "max_batch", "max_queue"}));
    STRATA_RETURN_IF_ERROR(ReadInt("decode.count", &c.decode.count, 1, kMaxWorkers));
    STRATA_RETURN_IF_ERROR(ReadHost("decode.host", &c.decode.host));
    STRATA_RETURN_IF_ERROR(
        ReadInt("decode.base_port", &c.decode.base_port, 1, 65535 - 2 * c.decode.count + 1));
    STRATA_RETURN_IF_ERROR(ReadInt("decode.threads", &c.decode.threads, 1, 4096));
    STRATA_RETURN_IF_ERROR(ReadInt("decode.kv_blocks", &c.decode.kv_blocks, 1, 1 << 30));
    STRATA_RETURN_IF_ERROR(ReadInt("decode.max_batch", &c.decode.max_batch, 1, 1 << 16));
    STRATA_RETURN_IF_ERROR(ReadInt("decode.max_queue", &c.decode.max_queue, 1, 1 << 20));

    STRATA_RETURN_IF_ERROR(
        CheckKeys("kvstore", {"count", "host", "base_port", "ram_mib", "ssd_dir", "ssd_mib"}));
    STRATA_RETURN_IF_ERROR(ReadInt("kvstore.count", &c.kvstore.count, 0, kMaxWorkers));
    STRATA_RETURN_IF_ERROR(ReadHost("kvstore.host", &c.kvstore.host));
    STRATA_RETURN_IF_ERROR(
        ReadInt("kvstore.base_port", &c.kvstore.base_port, 1, 65535 - 2 * std::max(c.kvstore.count, 1) + 1));
    STRATA_RETURN_IF_ERROR(ReadInt("kvstore.ram_mib", &c.kvstore.ram_mib, 1, 1 << 24));
    STRATA_RETURN_IF_ERROR(Read("kvstore.ssd_dir", &c.kvstore.ssd_dir));
    STRATA_RETURN_IF_ERROR(ReadInt("kvstore.ssd_mib", &c.kvstore.ssd_mib, 0, 1 << 30));
    if (!c.kvstore.ssd_dir.empty() && c.kvstore.ssd_mib == 0) {
      return Error("kvstore.ssd_mib", "is 0 while kvstore.ssd_dir is set: give the SSD tier a size");
    }

    STRATA_RETURN_IF_ERROR(CheckKeys(
        "prefix_cache", {"enabled", "checkpoint_every", "checkpoint_mib", "local_prefill_limit"}));
    STRATA_RETURN_IF_ERROR(Read("prefix_cache.enabled", &c.prefix_cache.enabled));
    STRATA_RETURN_IF_ERROR(
        ReadInt("prefix_cache.checkpoint_every", &c.prefix_cache.checkpoint_every, 1, 1 << 20));
    STRATA_RETURN_IF_ERROR(
        ReadInt("prefix_cache.checkpoint_mib", &c.prefix_cache.checkpoint_mib, 1, 1 << 24));
    STRATA_RETURN_IF_ERROR(ReadInt("prefix_cache.local_prefill_limit",
                                   &c.prefix_cache.local_prefill_limit, 0, 1 << 30));

    STRATA_RETURN_IF_ERROR(CheckKeys(
        "supervise", {"max_restarts", "window_s", "backoff_s", "max_backoff_s", "reset_after_s"}));
    STRATA_RETURN_IF_ERROR(ReadInt("supervise.max_restarts", &c.supervise.max_restarts, 0, 1000));
    STRATA_RETURN_IF_ERROR(ReadSeconds("supervise.window_s", &c.supervise.window_s, 1, 86400));
    STRATA_RETURN_IF_ERROR(ReadSeconds("supervise.backoff_s", &c.supervise.backoff_s, 0.01, 3600));
    STRATA_RETURN_IF_ERROR(
        ReadSeconds("supervise.max_backoff_s", &c.supervise.max_backoff_s, 0.01, 3600));
    if (c.supervise.max_backoff_s < c.supervise.backoff_s) {
      return Error("supervise.max_backoff_s",
                   absl::StrCat("is ", c.supervise.max_backoff_s,
                                ", less than supervise.backoff_s (", c.supervise.backoff_s, ")"));
    }
    STRATA_RETURN_IF_ERROR(
        ReadSeconds("supervise.reset_after_s", &c.supervise.reset_after_s, 0.01, 86400));

    STRATA_RETURN_IF_ERROR(CheckPorts(c));
    return c;
  }

 private:
  // The node at `path` ("" is the root), walking with reset(): YAML::Node's operator= would
  // overwrite the node it is called on.
  YAML::Node Node(absl::string_view path) const {
    YAML::Node node;
    node.reset(yaml_.root());
    if (path.empty()) return node;
    for (absl::string_view key : absl::StrSplit(path, '.')) {
      if (!node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
      const YAML::Node& parent = node;
      YAML::Node child = parent[std::string(key)];
      if (!child.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
      node.reset(child);
    }
    return node;
  }

  absl::Status ErrorAt(const YAML::Node& node, absl::string_view path,
                       absl::string_view message) const {
    const int line = node.IsDefined() ? node.Mark().line + 1 : 0;
    return absl::InvalidArgumentError(absl::StrCat(
        yaml_.source(), line > 0 ? absl::StrCat(":", line) : "", ": '", path, "' ", message));
  }
  absl::Status Error(absl::string_view path, absl::string_view message) const {
    return ErrorAt(Node(path), path, message);
  }

  // Rejects keys of the mapping at `path` that are not in `known` (a typo must not be ignored).
  absl::Status CheckKeys(absl::string_view path,
                         std::initializer_list<absl::string_view> known) const {
    YAML::Node node = Node(path);
    if (!node.IsDefined() || node.IsNull()) return absl::OkStatus();
    if (!node.IsMap()) return Error(path, "must be a mapping");
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      const std::string full = path.empty() ? key : absl::StrCat(path, ".", key);
      return absl::InvalidArgumentError(
          absl::StrCat(yaml_.source(), ":", it->first.Mark().line + 1, ": unknown key '", full,
                       "' (known keys", path.empty() ? "" : absl::StrCat(" of '", path, "'"), ": ",
                       absl::StrJoin(known, ", "), ")"));
    }
    return absl::OkStatus();
  }

  // Leaves `*out` (the default) alone when the key is absent.
  template <typename T>
  absl::Status Read(absl::string_view path, T* out) const {
    absl::StatusOr<T> value = yaml_.Get<T>(path, *out);
    if (!value.ok()) return value.status();
    *out = *std::move(value);
    return absl::OkStatus();
  }

  absl::Status ReadInt(absl::string_view path, int* out, int min, int max) const {
    STRATA_RETURN_IF_ERROR(Read(path, out));
    if (*out < min || *out > max)
      return Error(path, absl::StrCat("is ", *out, ", want ", min, "..", max));
    return absl::OkStatus();
  }

  // A duration in seconds (an integer or a decimal number).
  absl::Status ReadSeconds(absl::string_view path, double* out, double min, double max) const {
    STRATA_RETURN_IF_ERROR(Read(path, out));
    // `!(in range)` also catches NaN (".nan" in YAML).
    if (!(*out >= min && *out <= max))
      return Error(path, absl::StrCat("is ", *out, ", want ", min, "..", max, " (seconds)"));
    return absl::OkStatus();
  }

  absl::Status ReadChoice(absl::string_view path, std::string* out,
                          std::initializer_list<absl::string_view> choices) const {
    STRATA_RETURN_IF_ERROR(Read(path, out));
    if (std::find(choices.begin(), choices.end(), *out) == choices.end()) {
      return Error(path,
                   absl::StrCat("is '", *out, "', want one of ", absl::StrJoin(choices, ", ")));
    }
    return absl::OkStatus();
  }

  absl::Status ReadHost(absl::string_view path, std::string* out) const {
    STRATA_RETURN_IF_ERROR(Read(path, out));
    if (out->empty()) return Error(path, "must not be empty");
    return absl::OkStatus();
  }

  absl::Status ReadApiKeys(std::vector<ApiKey>* out) const {
    constexpr absl::string_view kPath = "router.api_keys";
    YAML::Node list = Node(kPath);
    if (!list.IsDefined() || list.IsNull()) return absl::OkStatus();
    if (!list.IsSequence()) return Error(kPath, "must be a list of {key: ..., tenant: ...}");
    std::set<std::string> seen;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node& entry = list[i];
      const std::string at = absl::StrCat(kPath, "[", i, "]");
      if (!entry.IsMap()) return ErrorAt(entry, at, "must be a mapping {key: ..., tenant: ...}");
      ApiKey key;
      for (auto it = entry.begin(); it != entry.end(); ++it) {
        const std::string name = it->first.IsScalar() ? it->first.Scalar() : "";
        std::string* field = name == "key" ? &key.key : name == "tenant" ? &key.tenant : nullptr;
        if (field == nullptr) {
          return ErrorAt(it->first, absl::StrCat(at, ".", name),
                         "is an unknown key (known keys: key, tenant)");
        }
        if (!it->second.IsScalar())
          return ErrorAt(it->second, absl::StrCat(at, ".", name), "must be a string");
        *field = it->second.Scalar();
      }
      // Never echo the key itself: error messages end up in logs.
      if (key.key.empty()) return ErrorAt(entry, absl::StrCat(at, ".key"), "is missing or empty");
      if (key.tenant.empty())
        return ErrorAt(entry, absl::StrCat(at, ".tenant"), "is missing or empty");
      if (!seen.insert(key.key).second)
        return ErrorAt(entry, absl::StrCat(at, ".key"), "repeats an earlier key");
      out->push_back(std::move(key));
    }
    return absl::OkStatus();
  }

  // Every port a service (or the private Redis) listens on must be its own.
  absl::Status CheckPorts(const ClusterConfig& c) const {
    struct Use {
      std::string host;
      int port;
      std::string what;  // "the HTTP port of decode-0"
      std::string key;   // the key that sets it, for the line number
    };
    std::vector<Use> uses;
    if (c.private_redis())
      uses.push_back({"127.0.0.1", c.redis_port, "the private Redis port", "redis_port"});
    for (const ServiceEndpoints& s : c.AllServices()) {
      const std::string key =
          s.role == "router" ? "router.grpc_port" : absl::StrCat(s.role, ".base_port");
      uses.push_back({s.host, s.grpc_port, absl::StrCat("the gRPC port of ", s.name), key});
      uses.push_back({s.host, s.http_port, absl::StrCat("the HTTP port of ", s.name),
                      s.role == "router" ? "router.http_port" : key});
    }
    for (size_t i = 0; i < uses.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        const bool same_host =
            uses[i].host == uses[j].host || IsWildcard(uses[i].host) || IsWildcard(uses[j].host);
        if (same_host && uses[i].port == uses[j].port) {
          return Error(uses[i].key, absl::StrCat("makes port ", uses[i].port, " ", uses[i].what,
                                                 ", but it is already ", uses[j].what));
        }
      }
    }
    return absl::OkStatus();
  }

  const YamlConfig& yaml_;
};

ServiceEndpoints Worker(absl::string_view role, int index, const std::string& host, int base_port) {
  ServiceEndpoints s;
  s.name = absl::StrCat(role, "-", index);
  s.role = std::string(role);
  s.index = index;
  s.host = host;
  s.grpc_port = base_port + 2 * index;
  s.http_port = base_port + 2 * index + 1;
  return s;
}

std::string HostPort(const std::string& host, int port) {
  // An IPv6 literal needs brackets before the port.
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

}  // namespace

std::string ServiceEndpoints::grpc_address() const { return HostPort(host, grpc_port); }
std::string ServiceEndpoints::http_address() const { return HostPort(host, http_port); }

std::string ClusterConfig::ServedModelName() const {
  if (!model_name.empty()) return model_name;
  std::filesystem::path path(model);
  if (!path.has_filename()) path = path.parent_path();  // "models/tiny/"
  return path.filename().string();
}

std::string ClusterConfig::RedisAddress() const {
  return private_redis() ? absl::StrCat("127.0.0.1:", redis_port) : redis;
}

ServiceEndpoints ClusterConfig::RouterEndpoints() const {
  ServiceEndpoints s;
  s.name = "router";
  s.role = "router";
  s.host = router.host;
  s.grpc_port = router.grpc_port;
  s.http_port = router.http_port;
  return s;
}

ServiceEndpoints ClusterConfig::PrefillEndpoints(int index) const {
  return Worker("prefill", index, prefill.host, prefill.base_port);
}

ServiceEndpoints ClusterConfig::DecodeEndpoints(int index) const {
  return Worker("decode", index, decode.host, decode.base_port);
}

ServiceEndpoints ClusterConfig::KvStoreEndpoints(int index) const {
  return Worker("kvstore", index, kvstore.host, kvstore.base_port);
}

absl::StatusOr<ServiceEndpoints> ClusterConfig::Endpoints(absl::string_view role, int index) const {
  const bool known = role == "router" || role == "prefill" || role == "decode" || role == "kvstore";
  const int count = role == "router"    ? 1
                    : role == "prefill" ? prefill.count
                    : role == "decode"  ? decode.count
                    : role == "kvstore" ? kvstore.count
                                        : 0;
  if (!known) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown service role '", role, "' (want router, prefill, decode or kvstore)"));
  }
  if (count == 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the file has no ", role, " (", role, ".count is 0)"));
  }
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", role, " index ", index, " is out of range: the file has ", count, " ", role,
        count == 1 ? " service" : " services", " (index 0..", count - 1, ")"));
  }
  if (role == "router") return RouterEndpoints();
  if (role == "kvstore") return KvStoreEndpoints(index);
  return role == "prefill" ? PrefillEndpoints(index) : DecodeEndpoints(index);
}

std::vector<ServiceEndpoints> ClusterConfig::AllServices() const {
  std::vector<ServiceEndpoints> all = {RouterEndpoints()};
  for (int i = 0; i < prefill.count; ++i) all.push_back(PrefillEndpoints(i));
  for (int i = 0; i < decode.count; ++i) all.push_back(DecodeEndpoints(i));
  for (int i = 0; i < kvstore.count; ++i) all.push_back(KvStoreEndpoints(i));
  return all;
}

absl::StatusOr<ClusterConfig> ParseClusterConfig(absl::string_view yaml,
                                                 const std::string& source_name) {
  STRATA_ASSIGN_OR_RETURN(YamlConfig parsed, YamlConfig::Parse(yaml, source_name));
  return Parser(parsed).Parse();
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(YamlConfig parsed, YamlConfig::LoadFile(path));
  return Parser(parsed).Parse();
}

}  // namespace strata::cli
