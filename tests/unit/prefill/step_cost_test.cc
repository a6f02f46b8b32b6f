// StepCostModel: the per-token and per-token-per-position costs it learns from steps, and the
// chunk it allows within a time budget.
#include "prefill/step_cost.h"

#include "gtest/gtest.h"

namespace strata::prefill {
namespace {

// Feeds steps timed by ms = Σ n (a + b (p + n/2)).
void Feed(StepCostModel& m, double a, double b, int steps) {
  for (int i = 0; i < steps; ++i) {
    const double n = 100 + 37 * (i % 5), p = 4000.0 * i;
    m.Observe(n, n * (p + n / 2), n * (a + b * (p + n / 2)));
  }
}

TEST(StepCostModelTest, LearnsBothCostsFromStepsAtDifferentDepths) {
  StepCostModel m;
  EXPECT_FALSE(m.ready());
  EXPECT_EQ(m.TokensWithin(100, 0, 512), 512) << "nothing known: the token limit alone";
  Feed(m, 0.4, 2e-5, 20);
  EXPECT_NEAR(m.a(), 0.4, 1e-6);
  EXPECT_NEAR(m.b(), 2e-5, 1e-10);
  // Shallow: the budget is far above 512 tokens' cost. Deep: fewer tokens fit.
  EXPECT_EQ(m.TokensWithin(250, 0, 512), 512);
  const int64_t deep = m.TokensWithin(250, 60000, 512);
  EXPECT_LT(deep, 512);
  EXPECT_LE(m.Cost(deep, 60000), 250);
  EXPECT_GT(m.Cost(deep + 1, 60000), 250);
  EXPECT_EQ(m.TokensWithin(0, 0, 512), 0);
}

TEST(StepCostModelTest, StepsAtOneDepthGiveAPerTokenCostOnly) {
  StepCostModel m;
  for (int i = 0; i < 5; ++i) m.Observe(200, 200 * 100, 200 * 0.5);
  EXPECT_GT(m.a(), 0);
  EXPECT_GE(m.b(), 0);
  EXPECT_NEAR(m.Cost(200, 0) + m.Cost(0, 0), 100, 1.0);
}

TEST(StepCostModelTest, FollowsADriftingMachine) {
  StepCostModel m;
  Feed(m, 0.4, 0, 20);
  Feed(m, 0.8, 0, 40);  // the machine got twice as slow
  // The old steps have faded: what it predicts for steps like the recent ones is the new speed.
  EXPECT_NEAR(m.Cost(200, 40000) / 200, 0.8, 0.04);
}

}  // namespace
}  // namespace strata::prefill
