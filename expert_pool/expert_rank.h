// One rank of the expert pool (DESIGN.md §1 step 4): the routed experts placed on it, for every
// layer, run on its own backend for the attention workers attached to it. The plain class under
// `strata experts`; its gRPC layer only carries Attach (control), the data moves over
// transport:: (wire.h).
//
// Per attached worker the rank keeps a dispatch region (the worker puts waves into it), the rows
// of the worker's current Run, and a staging area its results are put back from. The transport's
// progress thread only queues a wave's message; one compute thread runs the waves in arrival
// order, so the worker's next wave lands while this one computes and this one's results travel
// while the next computes (the overlap of the pool's waves).
//
// Threading: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/backend.h"
#include "engine/model_weights.h"
#include "expert_pool/wire.h"
#include "transport/transport.h"

namespace strata::expert_pool {

// What a worker asks for when it attaches.
struct AttachRequest {
  std::string client_address;        // its transport's address
  transport::RemoteRegion combine;   // where results go
  int32_t rank_index = 0;            // this rank's index in the worker's list, echoed in answers
  int64_t max_rows = 0;              // tokens per Run it will send at most
};

// What it gets back.
struct RankAttachment {
  uint64_t client = 0;
  std::string address;                       // this rank's transport address
  transport::RemoteRegion dispatch;          // where its waves go (DispatchBytes(max_rows) long)
  std::vector<std::vector<int32_t>> experts; // per layer, the experts held here, increasing id
};

// The dispatch bytes a Run of `max_rows` tokens needs at most on one rank (k experts each).
int64_t DispatchBytes(int64_t d, int64_t k, int64_t max_rows);

struct ExpertRankStats {
  int64_t waves = 0, pairs = 0, rows = 0, failed_waves = 0, clients = 0;
  double compute_seconds = 0;
};

class ExpertRank {
 public:
  // `weights` holds (at least) the experts of `experts[layer]` for every layer; the rank serves
  // exactly those. `backend` runs them; `transport` carries the data.
  static absl::StatusOr<std::unique_ptr<ExpertRank>> Create(const engine::ModelWeights& weights,
                                                            engine::Backend& backend,
                                                            transport::Transport& transport,
                                                            std::vector<std::vector<int32_t>> experts);
  ~ExpertRank();

  absl::StatusOr<RankAttachment> Attach(const AttachRequest& request);
  void Detach(uint64_t client);

  const std::vector<std::vector<int32_t>>& experts() const { return experts_; }
  ExpertRankStats stats() const;

 private:
  struct Client {
    uint64_t id = 0;
    int32_t rank_index = 0;
    int64_t max_rows = 0;
    std::shared_ptr<transport::Endpoint> ep;
    transport::RemoteRegion combine;
    std::unique_ptr<transport::MemoryRegistration> dispatch;  // the worker puts here
    int64_t dispatch_bytes = 0;
    std::unique_ptr<transport::MemoryRegistration> staging;   // results are put from here
    uint64_t seq = 0;
    int32_t rows = 0;                // rows of the current Run decoded so far
    std::vector<float> x;            // [max_rows, d]
  };
  struct Job {
    uint64_t client;
    DispatchHeader header;
  };

  ExpertRank(const engine::ModelWeights& weights, engine::Backend& backend, transport::Transport& transport,
             std::vector<std::vector<int32_t>> experts);
  void OnDispatch(std::string_view payload);
  void Loop();
  // Runs one wave; its results are in the client's staging area at header.result_offset.
  absl::Status Compute(Client& c, const DispatchHeader& h, std::vector<float>& xs, std::vector<float>& out);
  void Answer(Client& c, const DispatchHeader& h, const absl::Status& status);

  const engine::ModelWeights& weights_;
  engine::Backend& backend_;
  transport::Transport& transport_;
  const std::vector<std::vector<int32_t>> experts_;           // [layer] → held ids
  std::vector<std::vector<engine::ExpertWeights>> held_;      // [layer] → their weights, same order
  std::vector<std::vector<int32_t>> local_;                   // [layer][expert] → index in held_, or -1
  const int64_t d_, k_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Client>> clients_ ABSL_GUARDED_BY(mu_);
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t next_client_ ABSL_GUARDED_BY(mu_) = 1;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  ExpertRankStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace strata::expert_pool
