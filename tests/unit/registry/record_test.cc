#include <string>

#include "gtest/gtest.h"
#include "registry/registry.h"

namespace strata::registry {
namespace {

ServiceRecord Sample() {
  ServiceRecord r;
  r.id = "decode-0-1234";
  r.role = "decode";
  r.grpc_address = "127.0.0.1:8200";
  r.http_address = "127.0.0.1:8201";
  r.transport_address = std::string("\x00\xff\x01ucx\n\"", 8);  // binary, with NUL and quote
  r.model = "strata-tiny";
  r.load = {
      .queued_tokens = 7, .running_requests = 3, .free_kv_blocks = 100, .total_kv_blocks = 4096};
  return r;
}

TEST(RecordTest, RoundTripsBinaryTransportAddress) {
  const ServiceRecord in = Sample();
  absl::StatusOr<ServiceRecord> out = ParseRecord(Serialize(in));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->id, in.id);
  EXPECT_EQ(out->role, in.role);
  EXPECT_EQ(out->grpc_address, in.grpc_address);
  EXPECT_EQ(out->http_address, in.http_address);
  EXPECT_EQ(out->transport_address, in.transport_address);
  EXPECT_EQ(out->model, in.model);
  EXPECT_EQ(out->load.queued_tokens, 7);
  EXPECT_EQ(out->load.running_requests, 3);
  EXPECT_EQ(out->load.free_kv_blocks, 100);
  EXPECT_EQ(out->load.total_kv_blocks, 4096);
}

TEST(RecordTest, RejectsMalformedInputWithClearErrors) {
  struct Case {
    std::string text, want;
  };
  for (const Case& c :
       {Case{"{not json", "not valid JSON"}, Case{"[1,2]", "not a JSON object"},
        Case{R"({"role":"decode"})", "missing \"id\""},
        Case{R"({"id":"a","role":5})", "\"role\" must be a string"},
        Case{R"({"id":"a","role":"de:code"})", "must not contain ':'"},
        Case{R"({"id":"a","role":"decode","transport_address":"%%%"})", "not base64"},
        Case{R"({"id":"a","role":"decode","load":{"queued_tokens":"x"}})", "load.queued_tokens"}}) {
    absl::StatusOr<ServiceRecord> r = ParseRecord(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.want), std::string::npos)
        << r.status() << " for " << c.text;
  }
}

TEST(RecordTest, ParsesRedisAddresses) {
  absl::StatusOr<RedisOptions> a = ParseRedisAddress("10.0.0.5:6390");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "10.0.0.5");
  EXPECT_EQ(a->port, 6390);
  absl::StatusOr<RedisOptions> b = ParseRedisAddress("redis.local");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->host, "redis.local");
  EXPECT_EQ(b->port, 6379);
  absl::StatusOr<RedisOptions> c = ParseRedisAddress("[::1]:7000");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->port, 7000);
  for (const char* bad : {"", ":6379", "host:", "host:0", "host:70000", "host:port", "[::1"}) {
    EXPECT_FALSE(ParseRedisAddress(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace strata::registry
