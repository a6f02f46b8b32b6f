// Blocking helpers over the asynchronous Endpoint operations.
#include "transport/transport.h"

#include "absl/synchronization/notification.h"

namespace strata::transport {
namespace {

// Runs `issue` with a completion that records its status, and waits for it. The completion runs
// on the progress thread, so this must not be called there (it would wait for itself).
template <typename Issue>
absl::Status Wait(Issue issue) {
  absl::Notification done;
  absl::Status result;
  issue([&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

}  // namespace

absl::Status PutSync(Endpoint& ep, const void* local, size_t len, const RemoteRegion& remote,
                     uint64_t remote_offset) {
  return Wait([&](Completion done) { ep.Put(local, len, remote, remote_offset, std::move(done)); });
}

absl::Status GetSync(Endpoint& ep, void* local, size_t len, const RemoteRegion& remote,
                     uint64_t remote_offset) {
  return Wait([&](Completion done) { ep.Get(local, len, remote, remote_offset, std::move(done)); });
}

absl::Status FlushSync(Endpoint& ep) {
  return Wait([&](Completion done) { ep.Flush(std::move(done)); });
}

}  // namespace strata::transport
