// Where the routed experts live across the expert pool's ranks (DESIGN.md §1 step 4).
//
// The base placement gives every rank an equal, contiguous share of every layer's experts: with
// E experts and R ranks, rank r holds experts [r·E/R, (r+1)·E/R) of each layer (E % R == 0, so
// each layer's work splits evenly whatever the routing does on average). `redundant` extra slots
// per layer hold replicas of the hottest experts, chosen from observed per-expert load the way
// DeepSeek's EPLB does: repeatedly replicate the expert whose load per replica is the largest,
// then pack the replicas onto ranks greedily (heaviest first, each onto the least-loaded rank
// that has a free slot and no replica of the same expert yet). With redundant == E every expert
// has two homes on two different ranks, so any one rank can die without losing an expert.
//
// A Placement is an immutable value: the attention side picks a replica for each (token, expert)
// pair from it, the ranks load the experts it gives them, and a rebalance makes a new one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata::expert_pool {

class Placement {
 public:
  // The base placement (no replicas) of `experts` experts per layer over `ranks` ranks.
  static absl::StatusOr<Placement> Even(int64_t layers, int64_t experts, int64_t ranks);
  // The base placement plus `redundant` replicas per layer, chosen by load: load[l][e] is the
  // tokens routed to expert e of layer l over some window (all zeros: replicas in id order).
  // Each rank gets E/R + redundant/R slots per layer (redundant % R == 0, redundant <= E·(R−1)).
  static absl::StatusOr<Placement> Balanced(int64_t experts, int64_t ranks, int64_t redundant,
                                            absl::Span<const std::vector<int64_t>> load);

  int64_t layers() const { return static_cast<int64_t>(homes_.size()); }
  int64_t experts() const { return experts_; }
  int64_t ranks() const { return ranks_; }
  int64_t slots_per_rank() const { return slots_per_rank_; }

  // The ranks that hold expert e of layer l (the first is its base home), never empty.
  const std::vector<int32_t>& Homes(int64_t layer, int64_t expert) const {
    return homes_[static_cast<size_t>(layer)][static_cast<size_t>(expert)];
  }
  // The experts rank r holds in layer l, in increasing id.
  std::vector<int32_t> ExpertsOf(int64_t layer, int32_t rank) const;
  // Whether every expert of every layer has a home on a rank other than `rank`.
  bool SurvivesLossOf(int32_t rank) const;

  // One line per layer ("layer 3: e0@0,2 e1@0 ..."), for logs and /healthz.
  std::string Describe() const;

 private:
  int64_t experts_ = 0, ranks_ = 0, slots_per_rank_ = 0;
  std::vector<std::vector<std::vector<int32_t>>> homes_;  // [layer][expert] → ranks
};

}  // namespace strata::expert_pool
