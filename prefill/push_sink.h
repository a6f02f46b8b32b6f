// The KvSink that pushes a request's KV into a decode worker's pool over the transport: pages go
// as one PutMany per call into the blocks the decode worker lent for this request, state records
// into its landing slots. Where the KV goes is a KvTarget, which the decode worker describes in
// its PrefillRequest.
//
// Threading: one producer thread (the prefill loop); Pending() from any thread. Completions run
// on the transport's thread and may outlive the sink's use by a job that timed out, so the
// counts live in a shared tracker.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/kv_sink.h"
#include "transport/transport.h"

namespace strata::prefill {

// Where a request's KV goes: a decode worker's registered pool, one of its state slots and,
// optionally, a slot for the checkpoint at the prompt's last full block.
struct KvTarget {
  std::string transport_address;
  uint64_t layout_fingerprint = 0;
  transport::RemoteRegion pool;
  uint64_t block_bytes = 0;
  std::vector<int32_t> blocks;         // remote block ids in token order
  transport::RemoteRegion state;       // exactly one state record
  transport::RemoteRegion checkpoint;  // length 0: not wanted
};

namespace internal {
class PutTracker;
}

class PushSink final : public engine::KvSink {
 public:
  // `staging`: two state records' worth of memory registered with the endpoint's transport
  // (state records go out from there), owned by the caller for as long as Pending() > 0.
  PushSink(std::shared_ptr<transport::Endpoint> endpoint, const KvTarget& target, uint8_t* staging,
           int64_t state_bytes);

  void PutPages(absl::Span<const engine::KvPage> pages) override;
  void PutState(absl::Span<const uint8_t> state, engine::KvStateKind kind) override;
  absl::Status Wait(absl::Duration timeout) override;
  int64_t Pending() const override;
  uint64_t bytes() const override { return bytes_; }

  // Fails the sink (a failed step): Wait returns `status` from now on.
  void Fail(absl::Status status);
  // Lets go of the endpoint (another job's push on it timed out; destroying it fails what is
  // stuck in it); Attach gives it a fresh one.
  void Detach() { endpoint_.reset(); }
  void Attach(std::shared_ptr<transport::Endpoint> endpoint) { endpoint_ = std::move(endpoint); }
  bool attached() const { return endpoint_ != nullptr; }
  // A counter of this sink's unsettled puts that outlives the sink (for blocks kept until then).
  std::function<int64_t()> PendingProbe() const;

 private:
  std::shared_ptr<transport::Endpoint> endpoint_;
  const KvTarget& target_;
  uint8_t* const staging_;
  const int64_t state_bytes_;
  std::shared_ptr<internal::PutTracker> tracker_;
  uint64_t bytes_ = 0;
};

}  // namespace strata::prefill
