#include "expert_pool/placement.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::expert_pool {
namespace {

TEST(PlacementTest, EvenGivesEachRankAnEqualContiguousShareOfEveryLayer) {
  absl::StatusOr<Placement> p = Placement::Even(3, 8, 2);
  ASSERT_TRUE(p.ok()) << p.status();
  for (int64_t l = 0; l < 3; ++l) {
    EXPECT_THAT(p->ExpertsOf(l, 0), ::testing::ElementsAre(0, 1, 2, 3));
    EXPECT_THAT(p->ExpertsOf(l, 1), ::testing::ElementsAre(4, 5, 6, 7));
    for (int64_t e = 0; e < 8; ++e) EXPECT_THAT(p->Homes(l, e), ::testing::ElementsAre(e / 4));
  }
  EXPECT_FALSE(p->SurvivesLossOf(0));
  EXPECT_FALSE(p->SurvivesLossOf(1));
}

TEST(PlacementTest, ShapesThatDoNotSplitAreRefusedWithTheReason) {
  absl::StatusOr<Placement> p = Placement::Even(2, 8, 3);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), ::testing::HasSubstr("do not split evenly over 3"));
  EXPECT_FALSE(Placement::Even(2, 8, 0).ok());
  const std::vector<std::vector<int64_t>> load(2, std::vector<int64_t>(8, 0));
  EXPECT_FALSE(Placement::Balanced(8, 2, 3, load).ok());   // not a multiple of the ranks
  EXPECT_FALSE(Placement::Balanced(8, 2, 10, load).ok());  // more than every expert everywhere
}

TEST(PlacementTest, RedundantEqualToTheExpertsGivesEveryExpertTwoHomesOnTwoRanks) {
  for (int64_t ranks : {2, 4}) {
    const std::vector<std::vector<int64_t>> load(2, std::vector<int64_t>(8, 0));
    absl::StatusOr<Placement> p = Placement::Balanced(8, ranks, 8, load);
    ASSERT_TRUE(p.ok()) << p.status();
    for (int64_t l = 0; l < 2; ++l) {
      for (int64_t e = 0; e < 8; ++e) {
        const std::vector<int32_t>& h = p->Homes(l, e);
        ASSERT_EQ(h.size(), 2u) << "ranks " << ranks << " expert " << e;
        EXPECT_NE(h[0], h[1]);
      }
      for (int32_t r = 0; r < ranks; ++r) EXPECT_EQ(static_cast<int64_t>(p->ExpertsOf(l, r).size()), p->slots_per_rank());
    }
    for (int32_t r = 0; r < ranks; ++r) EXPECT_TRUE(p->SurvivesLossOf(r)) << "ranks " << ranks << " losing " << r;
  }
}

TEST(PlacementTest, TheHottestExpertIsReplicatedFirstOntoTheLeastLoadedRank) {
  // Layer 0: expert 1 carries most tokens; layer 1: expert 6. Two extra slots (one per rank).
  std::vector<std::vector<int64_t>> load(2, std::vector<int64_t>(8, 10));
  load[0][1] = 1000;
  load[1][6] = 500;
  absl::StatusOr<Placement> p = Placement::Balanced(8, 2, 2, load);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->Homes(0, 1), ::testing::ElementsAre(0, 1));
  EXPECT_THAT(p->Homes(1, 6), ::testing::ElementsAre(1, 0));
  // The second slot goes to the next heaviest per replica that the other rank can take.
  int64_t replicated = 0;
  for (int64_t e = 0; e < 8; ++e) replicated += p->Homes(0, e).size() > 1 ? 1 : 0;
  EXPECT_EQ(replicated, 2);
}

}  // namespace
}  // namespace strata::expert_pool
