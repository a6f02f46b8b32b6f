#include "expert_pool/placement.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::expert_pool {
namespace {

absl::Status CheckShape(int64_t experts, int64_t ranks) {
  if (ranks < 1) return absl::InvalidArgumentError("the expert pool needs at least one rank");
  if (experts < 1 || experts % ranks != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model's ", experts, " routed experts per layer do not split evenly over ", ranks,
        " expert ranks: choose a rank count that divides ", experts));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Placement> Placement::Even(int64_t layers, int64_t experts, int64_t ranks) {
  return Balanced(experts, ranks, 0, std::vector<std::vector<int64_t>>(
                                         static_cast<size_t>(layers),
                                         std::vector<int64_t>(static_cast<size_t>(experts), 0)));
}

absl::StatusOr<Placement> Placement::Balanced(int64_t experts, int64_t ranks, int64_t redundant,
                                              absl::Span<const std::vector<int64_t>> load) {
  if (absl::Status s = CheckShape(experts, ranks); !s.ok()) return s;
  if (redundant < 0 || redundant % ranks != 0 || redundant > experts * (ranks - 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "experts.redundant = ", redundant, ": want a multiple of the rank count (", ranks,
        ") of at most ", experts * (ranks - 1), " (every expert on every rank)"));
  }
  Placement p;
  p.experts_ = experts;
  p.ranks_ = ranks;
  const int64_t base = experts / ranks, extra = redundant / ranks;
  p.slots_per_rank_ = base + extra;
  p.homes_.resize(load.size());
  for (size_t l = 0; l < load.size(); ++l) {
    if (static_cast<int64_t>(load[l].size()) != experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert load of layer ", l, " has ",
                                                     load[l].size(), " entries, want ", experts));
    }
    auto& homes = p.homes_[l];
    homes.assign(static_cast<size_t>(experts), {});
    for (int64_t e = 0; e < experts; ++e) homes[static_cast<size_t>(e)] = {static_cast<int32_t>(e / base)};
    // One replica per step: the expert with the largest load per replica (ties: fewer replicas,
    // then lower id) that some rank with a free slot does not hold yet, onto the least-loaded
    // such rank (load of a rank: Σ load per replica of what it holds; ties: lower rank).
    std::vector<int64_t> free(static_cast<size_t>(ranks), extra);
    auto per_replica = [&](int64_t e) {
      return static_cast<double>(load[l][static_cast<size_t>(e)]) /
             static_cast<double>(homes[static_cast<size_t>(e)].size());
    };
    auto holds = [&](int64_t e, int64_t r) {
      const auto& h = homes[static_cast<size_t>(e)];
      return std::find(h.begin(), h.end(), r) != h.end();
    };
    for (int64_t step = 0; step < redundant; ++step) {
      int64_t best = -1;
      for (int64_t e = 0; e < experts; ++e) {
        bool placeable = false;
        for (int64_t r = 0; r < ranks && !placeable; ++r) placeable = free[static_cast<size_t>(r)] > 0 && !holds(e, r);
        if (!placeable) continue;
        if (best < 0 || per_replica(e) > per_replica(best) ||
            (per_replica(e) == per_replica(best) &&
             homes[static_cast<size_t>(e)].size() < homes[static_cast<size_t>(best)].size())) {
          best = e;
        }
      }
      if (best < 0) break;  // every rank with room already holds every expert it could take
      std::vector<double> rank_load(static_cast<size_t>(ranks), 0.0);
      for (int64_t e = 0; e < experts; ++e) {
        for (int32_t r : homes[static_cast<size_t>(e)]) rank_load[static_cast<size_t>(r)] += per_replica(e);
      }
      int64_t to = -1;
      for (int64_t r = 0; r < ranks; ++r) {
        if (free[static_cast<size_t>(r)] == 0 || holds(best, r)) continue;
        if (to < 0 || rank_load[static_cast<size_t>(r)] < rank_load[static_cast<size_t>(to)]) to = r;
      }
      homes[static_cast<size_t>(best)].push_back(static_cast<int32_t>(to));
      --free[static_cast<size_t>(to)];
    }
  }
  return p;
}

std::vector<int32_t> Placement::ExpertsOf(int64_t layer, int32_t rank) const {
  std::vector<int32_t> out;
  const auto& homes = homes_[static_cast<size_t>(layer)];
  for (int64_t e = 0; e < experts_; ++e) {
    const auto& h = homes[static_cast<size_t>(e)];
    if (std::find(h.begin(), h.end(), rank) != h.end()) out.push_back(static_cast<int32_t>(e));
  }
  return out;
}

bool Placement::SurvivesLossOf(int32_t rank) const {
  for (const auto& layer : homes_) {
    for (const auto& h : layer) {
      if (std::none_of(h.begin(), h.end(), [&](int32_t r) { return r != rank; })) return false;
    }
  }
  return true;
}

std::string Placement::Describe() const {
  std::string out;
  for (size_t l = 0; l < homes_.size(); ++l) {
    absl::StrAppend(&out, "layer ", l, ":");
    for (size_t e = 0; e < homes_[l].size(); ++e) {
      absl::StrAppend(&out, " e", e, "@", absl::StrJoin(homes_[l][e], ","));
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace strata::expert_pool
