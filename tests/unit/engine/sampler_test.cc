#include "engine/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(SamplerTest, GreedyPicksTheHighestAndTheLowestIdOnTies) {
  std::vector<float> logits = {0.1f, 2.0f, 2.0f, -1.0f, 5.0f};
  Sampler greedy({}, 4);  // id 4 is past the tokenizer's vocabulary: never chosen
  EXPECT_EQ(greedy.Sample(logits.data()), 1);
}

TEST(SamplerTest, SameSeedSameSequenceAndDistributionFollowsTemperature) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f};
  Sampler a({.temperature = 1.0f, .seed = 7}, 4), b({.temperature = 1.0f, .seed = 7}, 4);
  std::map<int, int> counts;
  for (int i = 0; i < 20000; ++i) {
    int32_t x = a.Sample(logits.data());
    EXPECT_EQ(x, b.Sample(logits.data()));
    counts[x]++;
  }
  // softmax(0,1,2,3) = 0.032, 0.087, 0.237, 0.644
  EXPECT_NEAR(counts[3] / 20000.0, 0.644, 0.02);
  EXPECT_NEAR(counts[0] / 20000.0, 0.032, 0.01);
  Sampler other({.temperature = 1.0f, .seed = 8}, 4);
  int same = 0;
  for (int i = 0; i < 100; ++i) same += other.Sample(logits.data()) == a.Sample(logits.data());
  EXPECT_LT(same, 100);
}

TEST(SamplerTest, TopKAndTopPCutTheTail) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f};
  Sampler k2({.temperature = 1.0f, .top_k = 2, .seed = 1}, 4);
  Sampler p({.temperature = 1.0f, .top_p = 0.6f, .seed = 1}, 4);  // 0.644 alone covers 0.6
  for (int i = 0; i < 2000; ++i) {
    EXPECT_GE(k2.Sample(logits.data()), 2);
    EXPECT_EQ(p.Sample(logits.data()), 3);
  }
}

TEST(SamplerTest, LogProbIsLogSoftmax) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f};
  Sampler s({}, 4);
  EXPECT_NEAR(s.LogProb(logits.data(), 3), std::log(0.643914), 1e-5);
}

TEST(StopMatcherTest, HoldsBackPossibleStopsAndCutsAtTheStop) {
  StopMatcher m({"</end>", "STOP"});
  std::string out;
  out += m.Push("Hello </e");
  EXPECT_EQ(out, "Hello ");  // "</e" could begin "</end>"
  out += m.Push("xtra S");
  EXPECT_EQ(out, "Hello </extra ");
  out += m.Push("TOP and more");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "Hello </extra ");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, FlushReturnsHeldTextWhenNoStopCompleted) {
  StopMatcher m({"###"});
  std::string out = m.Push("a#");
  out += m.Push("#");
  EXPECT_EQ(out, "a");
  out += m.Flush();
  EXPECT_EQ(out, "a##");
  EXPECT_FALSE(m.stopped());
}

}  // namespace
}  // namespace strata::engine
