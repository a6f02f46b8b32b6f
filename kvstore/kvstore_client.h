// A worker's side of the kvstore: the engine::KvSource that fetches prefix blocks from it into
// the worker's pool, and write-back, which stores a finished prompt's new full blocks and
// checkpoints there (two-phase: reserve, put, commit) — both off the worker's scheduling thread.
// Several kvstores share the keys by the chain's first key (a document's blocks stay together).
//
// Threading: thread-safe. Fetch callbacks run on the client's threads.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/thread_pool.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_source.h"
#include "strata/v1/kvstore.grpc.pb.h"
#include "transport/transport.h"

namespace strata::kvstore {

struct KvStoreClientOptions {
  std::vector<std::string> addresses;  // gRPC host:port of every kvstore
  int fetch_threads = 2;               // fetches in flight at once
  absl::Duration timeout = absl::Seconds(120);
  int64_t max_pending_blocks = 8192;   // write-back waits for at most this many blocks; more are skipped
  int checkpoint_staging = 32;         // checkpoints put per round of a write-back
};

struct KvStoreClientStats {
  int64_t fetches = 0, fetched_blocks = 0, fetch_failures = 0;
  int64_t writes = 0, written_records = 0, write_failures = 0, writes_skipped = 0;
};

class KvStoreClient final : public engine::KvSource {
 public:
  // Registers `pool` (and staging memory) with `transport`.
  static absl::StatusOr<std::unique_ptr<KvStoreClient>> Create(transport::Transport& transport, engine::KvPool& pool,
                                                              const KvStoreClientOptions& options);
  ~KvStoreClient() override;  // finishes the fetches and writes queued

  void Fetch(absl::Span<const engine::BlockKey> keys, int64_t max_blocks, absl::Span<const int32_t> blocks,
             uint8_t* checkpoint, std::function<void(absl::StatusOr<int64_t>)> done) override;

  void WriteBack(std::vector<engine::BlockKey> keys, std::vector<int32_t> blocks,
                 std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints) override;

  KvStoreClientStats stats() const;

 private:
  struct Write {
    std::vector<engine::BlockKey> keys;
    std::vector<int32_t> blocks;
    std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints;
  };
  KvStoreClient(transport::Transport& transport, engine::KvPool& pool, const KvStoreClientOptions& options);
  strata::v1::KvStore::Stub& StubFor(const engine::BlockKey& first);
  absl::StatusOr<int64_t> FetchNow(const std::vector<engine::BlockKey>& keys, int64_t max_blocks,
                                   const std::vector<int32_t>& blocks, uint8_t* checkpoint);
  absl::Status WriteNow(const Write& w);
  absl::StatusOr<std::shared_ptr<transport::Endpoint>> EndpointFor(const std::string& address);
  void WriterLoop();

  transport::Transport& transport_;
  engine::KvPool& pool_;
  const KvStoreClientOptions options_;
  std::vector<std::unique_ptr<strata::v1::KvStore::Stub>> stubs_;
  std::unique_ptr<transport::MemoryRegistration> pool_registration_;
  std::vector<uint8_t> staging_;  // fetch_threads checkpoints to land, then checkpoint_staging to send
  std::unique_ptr<transport::MemoryRegistration> staging_registration_;

  mutable absl::Mutex mu_;
  std::vector<int> free_fetch_slots_ ABSL_GUARDED_BY(mu_);
  std::deque<Write> writes_ ABSL_GUARDED_BY(mu_);
  int64_t pending_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  KvStoreClientStats stats_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<transport::Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);

  std::thread writer_;
  ThreadPool fetchers_;  // last: drained first
};

}  // namespace strata::kvstore
