#include "common/yaml_config.h"

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(YamlConfigTest, ReadsNestedValuesWithDefaults) {
  auto config = YamlConfig::Parse("router:\n  http:\n    port: 8080\n  name: r0\n", "cluster.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config->Get<int>("router.http.port", 0), 8080);
  EXPECT_EQ(*config->Get<std::string>("router.name", ""), "r0");
  EXPECT_EQ(*config->Get<int>("router.grpc.port", 9000), 9000);
  EXPECT_EQ(*config->Get<int>("decode.workers", 2), 2);
}

TEST(YamlConfigTest, WrongTypeNamesFileKeyAndLine) {
  auto config = YamlConfig::Parse("router:\n  http:\n    port: eighty\n", "cluster.yaml");
  ASSERT_TRUE(config.ok());
  auto port = config->Get<int>("router.http.port", 0);
  ASSERT_FALSE(port.ok());
  EXPECT_NE(port.status().message().find("cluster.yaml:3"), std::string::npos) << port.status();
  EXPECT_NE(port.status().message().find("router.http.port"), std::string::npos);
  EXPECT_NE(port.status().message().find("integer"), std::string::npos);
}

TEST(YamlConfigTest, MalformedYamlNamesFileAndLine) {
  auto config = YamlConfig::Parse("a: [1, 2\nb: 3\n", "bad.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("bad.yaml:"), std::string::npos) << config.status();
}

TEST(YamlConfigTest, ScalarWhereMappingExpected) {
  auto config = YamlConfig::Parse("router: 5\n", "c.yaml");
  ASSERT_TRUE(config.ok());
  auto port = config->Get<int>("router.http.port", 0);
  EXPECT_FALSE(port.ok());
}

}  // namespace
}  // namespace strata
