// Blocking helpers over the asynchronous Endpoint operations.
#include "transport/transport.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
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

// The whole registration, unenforced: transports that cannot refuse a peer's puts.
class UnenforcedGrant final : public Grant {
 public:
  explicit UnenforcedGrant(RemoteRegion region) : region_(std::move(region)) {}
  RemoteRegion Describe() const override { return region_; }
  bool enforced() const override { return false; }

 private:
  const RemoteRegion region_;
};

// Heap memory and its registration, released in that order.
class OwnedRegistration final : public MemoryRegistration {
 public:
  OwnedRegistration(void* memory, std::unique_ptr<MemoryRegistration> registration)
      : memory_(memory), registration_(std::move(registration)) {}
  ~OwnedRegistration() override {
    registration_.reset();
    std::free(memory_);
  }
  RemoteRegion Describe() const override { return registration_->Describe(); }

 private:
  void* memory_;
  std::unique_ptr<MemoryRegistration> registration_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryRegistration>> Transport::Allocate(size_t len) {
  if (len == 0) return absl::InvalidArgumentError("allocate: empty region");
  void* memory = std::aligned_alloc(64, (len + 63) / 64 * 64);
  if (memory == nullptr)
    return absl::ResourceExhaustedError(absl::StrFormat("allocate %d bytes", len));
  std::memset(memory, 0, len);
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> registration = Register(memory, len);
  if (!registration.ok()) {
    std::free(memory);
    return registration.status();
  }
  return std::make_unique<OwnedRegistration>(memory, *std::move(registration));
}

void Endpoint::PutMany(absl::Span<const PutSpan> spans, const RemoteRegion& remote,
                       Completion done) {
  for (const PutSpan& span : spans) {
    if (span.remote_offset > remote.length || span.len > remote.length - span.remote_offset) {
      return done(absl::OutOfRangeError(absl::StrFormat(
          "put of %d bytes at offset %d leaves the remote region of %d bytes", span.len,
          span.remote_offset, remote.length)));
    }
  }
  if (spans.empty()) return done(absl::OkStatus());
  // One countdown for the spans; the last completion reports the first error.
  struct Pending {
    absl::Mutex mu;
    size_t left;
    absl::Status first_error;
    Completion done;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = spans.size();
  pending->done = std::move(done);
  for (const PutSpan& span : spans) {
    Put(span.local, span.len, remote, span.remote_offset, [pending](absl::Status status) {
      absl::Status result;
      {
        absl::MutexLock lock(&pending->mu);
        if (!status.ok() && pending->first_error.ok()) pending->first_error = std::move(status);
        if (--pending->left > 0) return;
        result = pending->first_error;
      }
      pending->done(std::move(result));
    });
  }
}

absl::Status PutSync(Endpoint& ep, const void* local, size_t len, const RemoteRegion& remote,
                     uint64_t remote_offset) {
  return Wait([&](Completion done) { ep.Put(local, len, remote, remote_offset, std::move(done)); });
}

absl::Status GetSync(Endpoint& ep, void* local, size_t len, const RemoteRegion& remote,
                     uint64_t remote_offset) {
  return Wait([&](Completion done) { ep.Get(local, len, remote, remote_offset, std::move(done)); });
}

absl::Status PutManySync(Endpoint& ep, absl::Span<const PutSpan> spans, const RemoteRegion& remote) {
  return Wait([&](Completion done) { ep.PutMany(spans, remote, std::move(done)); });
}

absl::Status FlushSync(Endpoint& ep) {
  return Wait([&](Completion done) { ep.Flush(std::move(done)); });
}

absl::StatusOr<std::unique_ptr<Grant>> Transport::GrantAccess(const MemoryRegistration& registration,
                                                              absl::Span<const ByteRange> ranges) {
  const RemoteRegion region = registration.Describe();
  if (absl::Status s = internal::CheckGrantRanges(region, ranges); !s.ok()) return s;
  return std::make_unique<UnenforcedGrant>(region);
}

namespace internal {

absl::Status CheckGrantRanges(const RemoteRegion& region, absl::Span<const ByteRange> ranges) {
  if (ranges.empty()) return absl::InvalidArgumentError("grant: no ranges");
  for (const ByteRange& r : ranges) {
    if (r.offset > region.length || r.length > region.length - r.offset) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "grant: range [%d, +%d) leaves the registration of %d bytes", r.offset, r.length, region.length));
    }
  }
  return absl::OkStatus();
}

bool InsideOneRange(absl::Span<const ByteRange> ranges, uint64_t address, uint64_t len) {
  for (const ByteRange& r : ranges) {
    if (address >= r.offset && address - r.offset <= r.length && len <= r.length - (address - r.offset)) return true;
  }
  return false;
}

}  // namespace internal

}  // namespace strata::transport
