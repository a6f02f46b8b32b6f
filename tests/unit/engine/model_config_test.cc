#include "engine/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace strata::engine {
namespace {

using ::testing::HasSubstr;

TEST(ModelConfigTest, PresetsMatchThePublishedShapes) {
  auto flash = PresetConfig("flash");
  ASSERT_TRUE(flash.ok()) << flash.status();
  EXPECT_EQ(flash->hidden_size, 4096);
  EXPECT_EQ(flash->num_hidden_layers, 43);
  EXPECT_EQ(flash->compress_ratios.size(), 44u);  // 43 layers + 1 MTP layer
  EXPECT_EQ(flash->compress_ratios[0], 0);
  EXPECT_EQ(flash->compress_ratios[2], 4);
  EXPECT_EQ(flash->compress_ratios[3], 128);
  EXPECT_EQ(flash->compress_ratios[42], 4);
  EXPECT_EQ(flash->compress_ratios[43], 0);
  auto pro = PresetConfig("pro");
  ASSERT_TRUE(pro.ok()) << pro.status();
  EXPECT_EQ(pro->compress_ratios.size(), 62u);
  EXPECT_EQ(pro->compress_ratios[0], 128);
  EXPECT_EQ(pro->n_routed_experts, 384);
  EXPECT_DOUBLE_EQ(pro->routed_scaling_factor, 2.5);
  auto tiny = PresetConfig("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->compress_ratios, (std::vector<int64_t>{0, 4, 128, 4, 0}));
  EXPECT_EQ(tiny->nope_dim(), 64);
  auto one = PresetConfig("flash", 1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->num_hidden_layers, 1);
  EXPECT_EQ(one->num_hash_layers, 1);
  EXPECT_EQ(one->compress_ratios, (std::vector<int64_t>{0, 0}));
  EXPECT_FALSE(PresetConfig("huge").ok());
  EXPECT_FALSE(PresetConfig("tiny", 9).ok());
}

TEST(ModelConfigTest, JsonRoundTrips) {
  for (const char* name : {"tiny", "small", "flash", "pro"}) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok());
    auto back = ModelConfig::FromJson(c->ToJson(), "config.json");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->ToJson(), c->ToJson()) << name;
  }
}

// config.json of the tiny preset with one field changed (or removed when `value` is null).
std::string TinyWith(const std::string& field, nlohmann::json value) {
  nlohmann::json j = nlohmann::json::parse(PresetConfig("tiny")->ToJson());
  if (value.is_null()) {
    j.erase(field);
  } else {
    j[field] = value;
  }
  return j.dump();
}

TEST(ModelConfigTest, ErrorsNameTheFieldAndTheRule) {
  struct Case {
    std::string field;
    nlohmann::json value;
    std::string want;
  } cases[] = {
      {"compress_ratios", {0, 4, 128}, "'compress_ratios' has 3 entries, want 5"},
      {"compress_ratios", {0, 4, 64, 4, 0}, "'compress_ratios'[2] is 64"},
      {"head_dim", 160, "non-RoPE width"},
      {"scoring_func", "softmax", "'scoring_func' is 'softmax'"},
      {"hidden_size", nullptr, "field 'hidden_size' is missing"},
      {"hidden_size", "big", "field 'hidden_size' must be an integer"},
      {"num_key_value_heads", 2, "num_key_value_heads"},
      {"num_experts_per_tok", 9, "exceeds n_routed_experts"},
      {"index_head_dim", 96, "'index_head_dim'"},
      {"eos_token_id", 200000, "outside the vocabulary"},
      {"o_groups", 3, "o_groups"},
  };
  for (const Case& c : cases) {
    auto config = ModelConfig::FromJson(TinyWith(c.field, c.value), "models/x/config.json");
    ASSERT_FALSE(config.ok()) << c.field;
    EXPECT_THAT(config.status().message(), HasSubstr(c.want)) << c.field;
    EXPECT_THAT(config.status().message(), HasSubstr("models/x/config.json")) << c.field;
  }
  auto bad = ModelConfig::FromJson("{\"vocab_size\": ", "c.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("not valid JSON"));
}

TEST(ModelConfigTest, UnknownFieldsAreIgnoredAndRopeTypeAliasAccepted) {
  nlohmann::json j = nlohmann::json::parse(PresetConfig("tiny")->ToJson());
  j["some_future_field"] = {1, 2, 3};
  j["rope_scaling"].erase("type");
  j["rope_scaling"]["rope_type"] = "yarn";
  auto config = ModelConfig::FromJson(j.dump(), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, "yarn");
}

}  // namespace
}  // namespace strata::engine
