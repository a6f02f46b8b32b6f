#include "prefill/push_sink.h"

#include <cstring>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace strata::prefill {
namespace internal {

// Counts one sink's transfers in flight; completions may outlive the sink, so it is shared.
class PutTracker : public std::enable_shared_from_this<PutTracker> {
 public:
  transport::Completion Add() {
    absl::MutexLock lock(&mu_);
    ++pending_;
    return [self = shared_from_this()](absl::Status s) { self->Done(std::move(s)); };
  }
  absl::Status Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat(
          pending_, " KV transfers did not complete within ", absl::FormatDuration(timeout)));
    }
    return first_error_;
  }
  void Fail(absl::Status s) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = std::move(s);
  }
  int64_t pending() {
    absl::MutexLock lock(&mu_);
    return pending_;
  }

 private:
  void Done(absl::Status s) {
    absl::MutexLock lock(&mu_);
    if (!s.ok() && first_error_.ok()) first_error_ = std::move(s);
    --pending_;
  }
  absl::Mutex mu_;
  int64_t pending_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace internal

PushSink::PushSink(std::shared_ptr<transport::Endpoint> endpoint, const KvTarget& target,
                   uint8_t* staging, int64_t state_bytes)
    : endpoint_(std::move(endpoint)),
      target_(target),
      staging_(staging),
      state_bytes_(state_bytes),
      tracker_(std::make_shared<internal::PutTracker>()) {}

void PushSink::PutPages(absl::Span<const engine::KvPage> pages) {
  if (pages.empty()) return;
  if (endpoint_ == nullptr) return Fail(absl::UnavailableError("no connection to the decode worker"));
  std::vector<transport::PutSpan> spans;
  spans.reserve(pages.size());
  for (const engine::KvPage& p : pages) {
    if (p.block < 0 || p.block >= static_cast<int64_t>(target_.blocks.size())) {
      return Fail(absl::OutOfRangeError(absl::StrCat("KV block ", p.block, " is past the ",
                                                     target_.blocks.size(), " target blocks")));
    }
    const uint64_t remote =
        static_cast<uint64_t>(target_.blocks[static_cast<size_t>(p.block)]) * target_.block_bytes +
        static_cast<uint64_t>(p.offset);
    spans.push_back({p.local, static_cast<size_t>(p.bytes), remote});
    bytes_ += static_cast<uint64_t>(p.bytes);
  }
  endpoint_->PutMany(spans, target_.pool, tracker_->Add());
}

void PushSink::PutState(absl::Span<const uint8_t> state, engine::KvStateKind kind) {
  const bool checkpoint = kind == engine::KvStateKind::kCheckpoint;
  const transport::RemoteRegion& to = checkpoint ? target_.checkpoint : target_.state;
  if (to.length == 0) return;  // not wanted
  if (endpoint_ == nullptr) return Fail(absl::UnavailableError("no connection to the decode worker"));
  uint8_t* staged = staging_ + (checkpoint ? state_bytes_ : 0);
  std::memcpy(staged, state.data(), static_cast<size_t>(state_bytes_));
  endpoint_->Put(staged, static_cast<size_t>(state_bytes_), to, 0, tracker_->Add());
  bytes_ += static_cast<uint64_t>(state_bytes_);
}

absl::Status PushSink::Wait(absl::Duration timeout) { return tracker_->Wait(timeout); }

int64_t PushSink::Pending() const { return tracker_->pending(); }

void PushSink::Fail(absl::Status status) { tracker_->Fail(std::move(status)); }

std::function<int64_t()> PushSink::PendingProbe() const {
  return [t = tracker_] { return t->pending(); };
}

}  // namespace strata::prefill
