// How long a prefill step will take, learnt from the steps already run, so the worker can cut
// its chunks to a time budget: a step that carries a chunk deep into a 1M-token prompt costs far
// more per token than one at its start (attention and the lightning indexer read the whole
// context), and a short request sharing the worker must not wait seconds for each such step.
//
//   ms ≈ Σ_j n_j · (a + b · (p_j + n_j / 2))
//
// for the rows of the step (n_j tokens of job j from position p_j): `a` is the per-token work of
// the weights, `b` the per-token, per-position work of the context. Fitted by least squares with
// exponential forgetting, so it follows a machine whose speed drifts.
//
// Threading: one thread (the prefill worker's loop).
#pragma once

#include <cstdint>

namespace strata::prefill {

class StepCostModel {
 public:
  // One step: its rows' Σ n_j and Σ n_j·(p_j + n_j/2), and how long it took.
  void Observe(double tokens, double token_positions, double ms);
  bool ready() const { return steps_ > 0; }
  // Estimated milliseconds for n tokens from position p.
  double Cost(int64_t n, int64_t p) const;
  // The most tokens from position p (at most `limit`) whose estimated cost fits in `ms`; `limit`
  // before any observation.
  int64_t TokensWithin(double ms, int64_t p, int64_t limit) const;
  double a() const { return a_; }
  double b() const { return b_; }

 private:
  static constexpr double kForget = 0.9;
  double s11_ = 0, s12_ = 0, s22_ = 0, t1_ = 0, t2_ = 0;
  double a_ = 0, b_ = 0;
  int64_t steps_ = 0;
};

}  // namespace strata::prefill
