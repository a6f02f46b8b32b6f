#include "cli/cluster_config.h"

#include <string>

#include "gtest/gtest.h"

namespace strata::cli {
namespace {

// Parses `yaml` and returns the error message (empty if it parsed).
std::string ErrorOf(const std::string& yaml) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(yaml, "c.yaml");
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  return std::string(config.status().message());
}

TEST(ClusterConfigTest, ShippedLocalClusterFile) {
  absl::StatusOr<ClusterConfig> c =
      LoadClusterConfig(STRATA_SOURCE_DIR "/deploy/local/cluster.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cluster, "local");
  EXPECT_EQ(c->model, "models/tiny");
  EXPECT_EQ(c->ServedModelName(), "strata-tiny");
  EXPECT_TRUE(c->private_redis());
  EXPECT_EQ(c->RedisAddress(), "127.0.0.1:6390");
  EXPECT_EQ(c->transport, "ucx");
  EXPECT_EQ(c->log_format, "text");
  EXPECT_EQ(c->router.policy, "kv_aware");
  EXPECT_EQ(c->router.max_inflight, 256);
  ASSERT_EQ(c->router.api_keys.size(), 1u);
  EXPECT_EQ(c->router.api_keys[0].key, "sk-strata-local");
  EXPECT_EQ(c->router.api_keys[0].tenant, "local");
  EXPECT_EQ(c->prefill.chunk_tokens, 512);
  EXPECT_EQ(c->decode.max_batch, 32);
  EXPECT_EQ(c->kvstore.count, 1);
  EXPECT_EQ(c->kvstore.ssd_dir, ".cache/kvstore");
  EXPECT_EQ(c->supervise.max_restarts, 5);
  EXPECT_EQ(c->supervise.window_s, 60);
  EXPECT_EQ(c->supervise.backoff_s, 0.5);
  EXPECT_EQ(c->supervise.max_backoff_s, 10);
  EXPECT_EQ(c->supervise.reset_after_s, 30);

  const ServiceEndpoints router = c->RouterEndpoints();
  EXPECT_EQ(router.http_address(), "127.0.0.1:8000");
  EXPECT_EQ(router.grpc_address(), "127.0.0.1:8001");
  const ServiceEndpoints prefill = c->PrefillEndpoints(0);
  EXPECT_EQ(prefill.name, "prefill-0");
  EXPECT_EQ(prefill.grpc_address(), "127.0.0.1:8100");
  EXPECT_EQ(prefill.http_address(), "127.0.0.1:8101");
  const ServiceEndpoints decode = c->DecodeEndpoints(0);
  EXPECT_EQ(decode.grpc_address(), "127.0.0.1:8200");
  EXPECT_EQ(decode.http_address(), "127.0.0.1:8201");
  EXPECT_EQ(c->KvStoreEndpoints(0).grpc_address(), "127.0.0.1:8300");
  EXPECT_EQ(c->AllServices().size(), 4u);  // router, prefill-0, decode-0, kvstore-0
}

TEST(ClusterConfigTest, WorkerPortsFollowBasePortAndIndex) {
  absl::StatusOr<ClusterConfig> c = ParseClusterConfig(
      "prefill: {count: 2, base_port: 9000}\ndecode: {count: 3, base_port: 9100, host: 10.0.0.2}\n",
      "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->PrefillEndpoints(1).grpc_port, 9002);
  EXPECT_EQ(c->PrefillEndpoints(1).http_port, 9003);
  EXPECT_EQ(c->DecodeEndpoints(2).grpc_address(), "10.0.0.2:9104");
  EXPECT_EQ(c->DecodeEndpoints(2).http_address(), "10.0.0.2:9105");
  std::vector<std::string> names;
  for (const ServiceEndpoints& s : c->AllServices()) names.push_back(s.name);
  EXPECT_EQ(names, (std::vector<std::string>{"router", "prefill-0", "prefill-1", "decode-0",
                                             "decode-1", "decode-2"}));

  absl::StatusOr<ServiceEndpoints> d1 = c->Endpoints("decode", 1);
  ASSERT_TRUE(d1.ok()) << d1.status();
  EXPECT_EQ(d1->name, "decode-1");
  absl::StatusOr<ServiceEndpoints> d3 = c->Endpoints("decode", 3);
  ASSERT_FALSE(d3.ok());
  EXPECT_NE(d3.status().message().find("index 0..2"), std::string::npos) << d3.status();
  EXPECT_FALSE(c->Endpoints("experts", 0).ok());
  EXPECT_TRUE(c->Endpoints("router", 0).ok());
  EXPECT_FALSE(c->Endpoints("router", 1).ok());
}

TEST(ClusterConfigTest, DefaultsAndModelNameFromFolder) {
  absl::StatusOr<ClusterConfig> c =
      ParseClusterConfig("model: /data/models/flash-v4/\nredis: 'r1:7000'\n", "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ServedModelName(), "flash-v4");
  EXPECT_FALSE(c->private_redis());
  EXPECT_EQ(c->RedisAddress(), "r1:7000");
  EXPECT_EQ(c->router.http_port, 8000);
  EXPECT_EQ(c->prefill.count, 1);
  EXPECT_EQ(c->decode.kv_blocks, 4096);
  EXPECT_TRUE(c->router.api_keys.empty());
  // An empty file is all defaults.
  EXPECT_TRUE(ParseClusterConfig("", "c.yaml").ok());
}

TEST(ClusterConfigTest, UnknownKeysAreRejectedByName) {
  std::string error = ErrorOf("cluster: x\nmodle: models/tiny\n");
  EXPECT_NE(error.find("c.yaml:2"), std::string::npos) << error;
  EXPECT_NE(error.find("unknown key 'modle'"), std::string::npos) << error;

  error = ErrorOf("router:\n  host: 127.0.0.1\n  polcy: round_robin\n");
  EXPECT_NE(error.find("c.yaml:3"), std::string::npos) << error;
  EXPECT_NE(error.find("'router.polcy'"), std::string::npos) << error;
  EXPECT_NE(error.find("policy"), std::string::npos) << error;  // lists the known keys

  error = ErrorOf("decode: {count: 1, max_batchh: 3}\n");
  EXPECT_NE(error.find("'decode.max_batchh'"), std::string::npos) << error;

  error = ErrorOf("router:\n  api_keys:\n    - {key: k, tenant: t, quota: 5}\n");
  EXPECT_NE(error.find("router.api_keys[0].quota"), std::string::npos) << error;
}

TEST(ClusterConfigTest, WrongTypesAndRangesNameKeyAndLine) {
  std::string error = ErrorOf("router:\n  http_port: eighty\n");
  EXPECT_NE(error.find("c.yaml:2"), std::string::npos) << error;
  EXPECT_NE(error.find("router.http_port"), std::string::npos) << error;

  error = ErrorOf("decode:\n  count: 0\n");
  EXPECT_NE(error.find("c.yaml:2"), std::string::npos) << error;
  EXPECT_NE(error.find("'decode.count' is 0, want 1..256"), std::string::npos) << error;

  error = ErrorOf("redis_port: 70000\n");
  EXPECT_NE(error.find("redis_port"), std::string::npos) << error;

  error = ErrorOf("prefill: {count: 2, base_port: 65534}\n");  // 65534..65537 does not fit
  EXPECT_NE(error.find("prefill.base_port"), std::string::npos) << error;

  error = ErrorOf("router: 5\n");
  EXPECT_NE(error.find("'router' must be a mapping"), std::string::npos) << error;

  error = ErrorOf("cluster: 'a b'\n");
  EXPECT_NE(error.find("'cluster'"), std::string::npos) << error;

  error = ErrorOf("redis: 'host:notaport'\n");
  EXPECT_NE(error.find("'redis'"), std::string::npos) << error;
}

TEST(ClusterConfigTest, ChoicesAreChecked) {
  std::string error = ErrorOf("router:\n  policy: random\n");
  EXPECT_NE(error.find("'router.policy' is 'random', want one of round_robin, least_load"),
            std::string::npos)
      << error;
  EXPECT_NE(ErrorOf("transport: tcp\n").find("want one of ucx, inproc"), std::string::npos);
  EXPECT_NE(ErrorOf("log_format: xml\n").find("text, json"), std::string::npos);
  EXPECT_EQ(ErrorOf("transport: inproc\nlog_format: json\nrouter: {policy: round_robin}\n"), "");
}

TEST(ClusterConfigTest, ApiKeysAreValidated) {
  absl::StatusOr<ClusterConfig> c = ParseClusterConfig(
      "router:\n  api_keys:\n    - {key: a, tenant: t1}\n    - key: b\n      tenant: t2\n",
      "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->router.api_keys.size(), 2u);
  EXPECT_EQ(c->router.api_keys[1].key, "b");
  EXPECT_EQ(c->router.api_keys[1].tenant, "t2");

  EXPECT_NE(ErrorOf("router: {api_keys: [{key: a}]}\n").find("api_keys[0].tenant' is missing"),
            std::string::npos);
  EXPECT_NE(ErrorOf("router: {api_keys: [{tenant: t}]}\n").find("api_keys[0].key' is missing"),
            std::string::npos);
  const std::string dup =
      ErrorOf("router: {api_keys: [{key: secret, tenant: t}, {key: secret, tenant: u}]}\n");
  EXPECT_NE(dup.find("api_keys[1].key' repeats"), std::string::npos) << dup;
  EXPECT_EQ(dup.find("secret"), std::string::npos) << "keys must not appear in messages: " << dup;
  EXPECT_NE(ErrorOf("router: {api_keys: sk-1}\n").find("must be a list"), std::string::npos);
}

TEST(ClusterConfigTest, PortCollisionsAreRejected) {
  // decode-0's HTTP port (8201) is the router's HTTP port.
  std::string error = ErrorOf("router: {http_port: 8201}\n");
  EXPECT_NE(error.find("8201"), std::string::npos) << error;
  EXPECT_NE(error.find("decode-0"), std::string::npos) << error;
  EXPECT_NE(error.find("router"), std::string::npos) << error;
  // prefill workers 0..5 use 8100..8111; decode starts at 8110.
  error = ErrorOf("prefill: {count: 6}\ndecode: {base_port: 8110}\n");
  EXPECT_NE(error.find("prefill-5"), std::string::npos) << error;
  // The private Redis port counts; an external Redis does not.
  EXPECT_NE(ErrorOf("redis_port: 8000\n"), "");
  EXPECT_EQ(ErrorOf("redis_port: 8000\nredis: 'r:6379'\n"), "");
  // Different hosts may share a port, but a wildcard host overlaps every host.
  EXPECT_EQ(ErrorOf("router: {host: 10.0.0.1, http_port: 8201}\n"), "");
  EXPECT_NE(ErrorOf("router: {host: 0.0.0.0, http_port: 8201}\n"), "");
}

TEST(ClusterConfigTest, PrefixCacheSection) {
  absl::StatusOr<ClusterConfig> c = ParseClusterConfig("", "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->prefix_cache.enabled);  // the defaults
  EXPECT_EQ(c->prefix_cache.checkpoint_every, 16);
  EXPECT_EQ(c->prefix_cache.checkpoint_mib, 512);
  EXPECT_EQ(c->prefix_cache.local_prefill_limit, 2048);
  c = ParseClusterConfig(
      "prefix_cache:\n  enabled: false\n  checkpoint_every: 4\n  checkpoint_mib: 64\n  local_prefill_limit: 0\n",
      "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->prefix_cache.enabled);
  EXPECT_EQ(c->prefix_cache.checkpoint_every, 4);
  EXPECT_EQ(c->prefix_cache.checkpoint_mib, 64);
  EXPECT_EQ(c->prefix_cache.local_prefill_limit, 0);
  std::string error = ErrorOf("prefix_cache:\n  checkpoint_every: 0\n");
  EXPECT_NE(error.find("c.yaml:2: 'prefix_cache.checkpoint_every' is 0"), std::string::npos) << error;
  error = ErrorOf("prefix_cache:\n  enable: true\n");
  EXPECT_NE(error.find("unknown key 'prefix_cache.enable'"), std::string::npos) << error;
}

TEST(ClusterConfigTest, SuperviseSection) {
  absl::StatusOr<ClusterConfig> c = ParseClusterConfig("", "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->supervise.max_restarts, 5);  // the defaults, also without the section
  EXPECT_EQ(c->supervise.window_s, 60);
  EXPECT_EQ(c->supervise.backoff_s, 0.5);
  EXPECT_EQ(c->supervise.max_backoff_s, 10);
  EXPECT_EQ(c->supervise.reset_after_s, 30);

  c = ParseClusterConfig(
      "supervise:\n  max_restarts: 0\n  window_s: 120\n  backoff_s: 0.25\n  max_backoff_s: 4\n"
      "  reset_after_s: 5.5\n",
      "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->supervise.max_restarts, 0);
  EXPECT_EQ(c->supervise.window_s, 120);
  EXPECT_EQ(c->supervise.backoff_s, 0.25);
  EXPECT_EQ(c->supervise.max_backoff_s, 4);
  EXPECT_EQ(c->supervise.reset_after_s, 5.5);

  std::string error = ErrorOf("supervise:\n  max_restart: 3\n");
  EXPECT_NE(error.find("c.yaml:2: unknown key 'supervise.max_restart'"), std::string::npos)
      << error;
  error = ErrorOf("supervise:\n  max_restarts: -1\n");
  EXPECT_NE(error.find("c.yaml:2: 'supervise.max_restarts' is -1, want 0..1000"), std::string::npos)
      << error;
  error = ErrorOf("supervise: {backoff_s: soon}\n");
  EXPECT_NE(error.find("supervise.backoff_s"), std::string::npos) << error;
  error = ErrorOf("supervise: {backoff_s: 0}\n");
  EXPECT_NE(error.find("'supervise.backoff_s' is 0, want 0.01..3600 (seconds)"), std::string::npos)
      << error;
  error = ErrorOf("supervise: {window_s: .nan}\n");
  EXPECT_NE(error.find("'supervise.window_s' is nan"), std::string::npos) << error;
  error = ErrorOf("supervise: {backoff_s: 2, max_backoff_s: 1}\n");
  EXPECT_NE(error.find("'supervise.max_backoff_s' is 1, less than supervise.backoff_s (2)"),
            std::string::npos)
      << error;
  EXPECT_NE(ErrorOf("supervise: 5\n").find("'supervise' must be a mapping"), std::string::npos);
}

TEST(ClusterConfigTest, MissingFileIsAnError) {
  EXPECT_FALSE(LoadClusterConfig("/nonexistent/cluster.yaml").ok());
}

}  // namespace
}  // namespace strata::cli
