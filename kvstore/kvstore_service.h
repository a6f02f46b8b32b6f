// strata.v1.KvStore: the kvstore's control plane over gRPC, its data over the transport. A fetch
// pins the prefix in the BlockStore and puts the records straight from the RAM tier's registered
// slots into the requester's blocks (which it lent for the call); a write reserves RAM slots and
// lends exactly those to the writer (transport::Grant), whose puts land there; at commit — or
// when the write lease lapses — the loan is revoked before the store looks at the bytes, so a late
// put of a dead or slow writer never lands in a slot that is verified or reused.
//
// The logic is in the Do* methods (plain calls, tested without gRPC); the reactors only translate.
// Fetches and commits (SSD reads and writes, waiting for puts) run on the service's own threads,
// never on gRPC's.
//
// Threading: thread-safe.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/thread_pool.h"
#include "engine/kv/kv_layout.h"
#include "kvstore/block_store.h"
#include "strata/v1/kvstore.grpc.pb.h"
#include "transport/transport.h"

namespace strata::kvstore {

struct KvStoreServiceOptions {
  int threads = 4;                                   // fetches and commits in progress at once
  absl::Duration put_timeout = absl::Seconds(60);    // a fetch's puts, all of them
  absl::Duration lease_check = absl::Milliseconds(500);
};

class KvStoreService final : public strata::v1::KvStore::CallbackService {
 public:
  // Registers the store's RAM tier with `transport`.
  static absl::StatusOr<std::unique_ptr<KvStoreService>> Create(BlockStore& store, transport::Transport& transport,
                                                               const engine::KvLayout& layout,
                                                               const KvStoreServiceOptions& options = {});
  ~KvStoreService() override;

  absl::StatusOr<strata::v1::KvStoreLookupReply> DoLookup(const strata::v1::KvStoreLookupRequest& r);
  absl::StatusOr<strata::v1::KvStoreFetchReply> DoFetch(const strata::v1::KvStoreFetchRequest& r);
  absl::StatusOr<strata::v1::KvStoreReserveReply> DoReserve(const strata::v1::KvStoreReserveRequest& r);
  absl::StatusOr<strata::v1::KvStoreCommitReply> DoCommit(const strata::v1::KvStoreCommitRequest& r);
  void DoAbort(uint64_t reservation);

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* c, const strata::v1::KvStoreLookupRequest* r,
                                   strata::v1::KvStoreLookupReply* out) override;
  grpc::ServerUnaryReactor* Fetch(grpc::CallbackServerContext* c, const strata::v1::KvStoreFetchRequest* r,
                                  strata::v1::KvStoreFetchReply* out) override;
  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* c, const strata::v1::KvStoreReserveRequest* r,
                                    strata::v1::KvStoreReserveReply* out) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* c, const strata::v1::KvStoreCommitRequest* r,
                                   strata::v1::KvStoreCommitReply* out) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* c, const strata::v1::KvStoreAbortRequest* r,
                                  strata::v1::KvStoreAbortReply* out) override;

  struct Stats {
    int64_t fetches = 0, fetched_blocks = 0;
    uint64_t fetched_bytes = 0;
    double fetch_seconds = 0;
  };
  Stats stats() const;

 private:
  KvStoreService(BlockStore& store, transport::Transport& transport, const engine::KvLayout& layout,
                 const KvStoreServiceOptions& options);
  absl::StatusOr<std::shared_ptr<transport::Endpoint>> EndpointFor(const std::string& address);
  void DropEndpoint(const std::string& address);
  void WatchLeases();

  BlockStore& store_;
  transport::Transport& transport_;
  const engine::KvLayout layout_;
  const KvStoreServiceOptions options_;
  std::unique_ptr<transport::MemoryRegistration> blocks_registration_, checkpoints_registration_;

  mutable absl::Mutex mu_;
  // The loans of each reservation's slots, revoked at commit, abort or expiry.
  struct Loan {
    std::unique_ptr<transport::Grant> blocks, checkpoints;
  };
  absl::flat_hash_map<uint64_t, Loan> loans_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<transport::Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread lease_thread_;
  ThreadPool pool_;  // last: its queued work finishes before the rest goes
};

}  // namespace strata::kvstore
