// InProcTransport: peers in one process, found by name in an InProcFabric. Puts and gets are
// memcpy into/out of the peer's registered regions, checked against the registration; messages are
// handed to the peer's progress thread. Every operation of a transport runs, in issue order, on
// that transport's own progress thread, and its completion is called there, as with UCX.
//
// Ordering: a transport's operations are performed one after another on its thread, so a Send is
// handed to the peer only after every earlier Put has been copied.
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"
#include "transport/task_thread.h"
#include "transport/transport.h"

namespace strata::transport {
namespace {

constexpr size_t kQueueCapacity = 4096;

// Whether [offset, offset + len) fits in [0, size), without overflow.
bool Fits(uint64_t offset, uint64_t len, uint64_t size) {
  return offset <= size && len <= size - offset;
}

// The state a transport shares with its endpoints and registrations (they may outlive it).
class Core {
 public:
  explicit Core(std::string name) : name_(std::move(name)), thread_(kQueueCapacity) {}

  const std::string& name() const { return name_; }

  // Runs `run` on the progress thread, or fails `done` there if the transport stops first. After
  // the transport stopped, `done` is called on the caller's thread.
  void Submit(std::function<void()> run, Completion done) {
    Completion fail = done;
    if (!thread_.Post({.run = std::move(run), .fail = std::move(fail)})) {
      done(absl::CancelledError(absl::StrCat("in-process transport ", name_, " is shut down")));
    }
  }

  // Hands a message to this transport's handler, on its progress thread.
  void Deliver(uint16_t id, std::string payload) {
    thread_.Post({.run =
                      [this, id, payload = std::move(payload)] {
                        std::shared_ptr<Transport::MessageHandler> handler;
                        {
                          absl::MutexLock lock(&handlers_mu_);
                          auto it = handlers_.find(id);
                          if (it != handlers_.end()) handler = it->second;
                        }
                        if (handler == nullptr) {
                          spdlog::warn("transport {}: no handler for message id {}; dropped", name_,
                                       id);
                          return;
                        }
                        (*handler)(payload);
                      },
                  .fail = [](absl::Status) {}});
  }

  void SetHandler(uint16_t id, Transport::MessageHandler handler) {
    absl::MutexLock lock(&handlers_mu_);
    handlers_[id] = std::make_shared<Transport::MessageHandler>(std::move(handler));
  }

  std::string AddRegion(char* base, size_t len, std::vector<ByteRange> granted = {}) {
    absl::WriterMutexLock lock(&regions_mu_);
    std::string key =
        absl::StrFormat("%s/%d/%016x", name_, next_region_++, absl::Uniform<uint64_t>(bitgen_));
    regions_[key] = Region{base, len, std::move(granted)};
    return key;
  }

  // The region a registration's key names here, if any.
  bool Find(const std::string& key, char** base, size_t* len) {
    absl::ReaderMutexLock lock(&regions_mu_);
    auto it = regions_.find(key);
    if (it == regions_.end() || !it->second.granted.empty()) return false;
    *base = it->second.base;
    *len = it->second.len;
    return true;
  }

  void RemoveRegion(const std::string& key) {
    absl::WriterMutexLock lock(&regions_mu_);  // waits for copies in flight on the region
    regions_.erase(key);
  }

  // Copies between `local` and the registered memory `remote` describes (into it when `write`).
  absl::Status Copy(bool write, void* local, size_t len, const RemoteRegion& remote,
                    uint64_t offset) {
    const char* op = write ? "put" : "get";
    if (!Fits(offset, len, remote.length)) {
      return absl::OutOfRangeError(
          absl::StrFormat("%s of %d bytes at offset %d leaves the remote region of %d bytes", op,
                          len, offset, remote.length));
    }
    absl::ReaderMutexLock lock(&regions_mu_);
    auto it = regions_.find(remote.key);
    if (it == regions_.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: the remote region is not registered at %s (unregistered, or "
                          "described by another transport)",
                          op, name_));
    }
    const Region& region = it->second;
    const uint64_t base = reinterpret_cast<uintptr_t>(region.base);
    if (remote.address < base || !Fits(remote.address - base + offset, len, region.len)) {
      return absl::OutOfRangeError(
          absl::StrFormat("%s of %d bytes at 0x%x leaves the region of %d bytes registered at %s",
                          op, len, remote.address + offset, region.len, name_));
    }
    if (!region.granted.empty() &&
        !internal::InsideOneRange(region.granted, remote.address - base + offset, len)) {
      return absl::PermissionDeniedError(absl::StrFormat(
          "%s of %d bytes at 0x%x leaves the ranges granted at %s", op, len, remote.address + offset, name_));
    }
    char* target = region.base + (remote.address - base + offset);
    if (len > 0) {
      if (write) {
        std::memcpy(target, local, len);
      } else {
        std::memcpy(local, target, len);
      }
    }
    return absl::OkStatus();
  }

  void Shutdown() {
    thread_.Stop(absl::CancelledError(absl::StrCat("in-process transport ", name_,
                                                   " was destroyed with the operation in flight")));
  }

 private:
  struct Region {
    char* base;
    size_t len;
    std::vector<ByteRange> granted;  // a grant's ranges (relative to base); empty: a registration
  };

  const std::string name_;
  internal::TaskThread thread_;

  absl::Mutex handlers_mu_;
  absl::flat_hash_map<uint16_t, std::shared_ptr<Transport::MessageHandler>> handlers_
      ABSL_GUARDED_BY(handlers_mu_);

  absl::Mutex regions_mu_;
  absl::flat_hash_map<std::string, Region> regions_ ABSL_GUARDED_BY(regions_mu_);
  int64_t next_region_ ABSL_GUARDED_BY(regions_mu_) = 0;
  absl::BitGen bitgen_ ABSL_GUARDED_BY(regions_mu_);
};

class InProcRegistration final : public MemoryRegistration {
 public:
  InProcRegistration(std::shared_ptr<Core> core, void* base, size_t len)
      : core_(std::move(core)),
        region_{.address = reinterpret_cast<uintptr_t>(base),
                .length = len,
                .key = core_->AddRegion(static_cast<char*>(base), len)} {}
  ~InProcRegistration() override { core_->RemoveRegion(region_.key); }

  RemoteRegion Describe() const override { return region_; }

 private:
  std::shared_ptr<Core> core_;
  const RemoteRegion region_;
};

// A grant is a region entry of its own (same memory, its own key, its ranges); removing it waits
// for copies in flight under it, so nothing lands after the destructor returns.
class InProcGrant final : public Grant {
 public:
  InProcGrant(std::shared_ptr<Core> core, RemoteRegion region) : core_(std::move(core)), region_(std::move(region)) {}
  ~InProcGrant() override { core_->RemoveRegion(region_.key); }
  RemoteRegion Describe() const override { return region_; }
  bool enforced() const override { return true; }

 private:
  std::shared_ptr<Core> core_;
  const RemoteRegion region_;
};

class InProcEndpoint final : public Endpoint {
 public:
  InProcEndpoint(std::shared_ptr<Core> local, std::weak_ptr<Core> peer, std::string peer_name)
      : local_(std::move(local)), peer_(std::move(peer)), peer_name_(std::move(peer_name)) {}

  void Put(const void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    Copy(/*write=*/true, const_cast<void*>(local), len, remote, remote_offset, std::move(done));
  }

  void Get(void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    Copy(/*write=*/false, local, len, remote, remote_offset, std::move(done));
  }

  void Send(uint16_t id, std::string_view payload, Completion done) override {
    local_->Submit(
        [this_peer = peer_, peer_name = peer_name_, id, payload = std::string(payload),
         done]() mutable {
          std::shared_ptr<Core> peer = this_peer.lock();
          if (peer == nullptr) return done(PeerGone(peer_name, "send"));
          peer->Deliver(id, std::move(payload));
          done(absl::OkStatus());
        },
        done);
  }

  void Flush(Completion done) override {
    // Operations before this one were performed on the progress thread before it runs.
    local_->Submit([done] { done(absl::OkStatus()); }, done);
  }

  const std::string& peer() const override { return peer_name_; }

 private:
  static absl::Status PeerGone(const std::string& peer, const char* op) {
    return absl::UnavailableError(
        absl::StrCat(op, " to in-process transport ", peer, ": the peer is gone"));
  }

  void Copy(bool write, void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
            Completion done) {
    local_->Submit(
        [this_peer = peer_, peer_name = peer_name_, write, local, len, remote, remote_offset,
         done] {
          std::shared_ptr<Core> peer = this_peer.lock();
          if (peer == nullptr) return done(PeerGone(peer_name, write ? "put" : "get"));
          done(peer->Copy(write, local, len, remote, remote_offset));
        },
        done);
  }

  const std::shared_ptr<Core> local_;
  const std::weak_ptr<Core> peer_;
  const std::string peer_name_;
};

}  // namespace

class InProcFabric {
 public:
  std::shared_ptr<Core> Add() {
    absl::MutexLock lock(&mu_);
    auto core = std::make_shared<Core>(absl::StrCat("inproc-", next_++));
    cores_[core->name()] = core;
    return core;
  }

  void Remove(const std::string& name) {
    absl::MutexLock lock(&mu_);
    cores_.erase(name);
  }

  std::weak_ptr<Core> Find(const std::string& name) {
    absl::MutexLock lock(&mu_);
    auto it = cores_.find(name);
    return it == cores_.end() ? std::weak_ptr<Core>() : it->second;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::weak_ptr<Core>> cores_ ABSL_GUARDED_BY(mu_);
  int64_t next_ ABSL_GUARDED_BY(mu_) = 1;
};

namespace {

class InProcTransport final : public Transport {
 public:
  explicit InProcTransport(std::shared_ptr<InProcFabric> fabric)
      : fabric_(std::move(fabric)), core_(fabric_->Add()) {}

  ~InProcTransport() override {
    fabric_->Remove(core_->name());
    core_->Shutdown();
  }

  std::string name() const override { return "inproc"; }
  std::string address() const override { return core_->name(); }

  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Register(void* base, size_t len) override {
    if (base == nullptr || len == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("register: empty region (%p, %d bytes)", base, len));
    }
    return std::make_unique<InProcRegistration>(core_, base, len);
  }

  absl::StatusOr<std::unique_ptr<Grant>> GrantAccess(const MemoryRegistration& registration,
                                                     absl::Span<const ByteRange> ranges) override {
    RemoteRegion region = registration.Describe();
    if (absl::Status s = internal::CheckGrantRanges(region, ranges); !s.ok()) return s;
    char* base = nullptr;
    size_t len = 0;
    if (!core_->Find(region.key, &base, &len)) {
      return absl::InvalidArgumentError("grant: the registration is not this transport's");
    }
    region.key = core_->AddRegion(base, len, std::vector<ByteRange>(ranges.begin(), ranges.end()));
    return std::make_unique<InProcGrant>(core_, std::move(region));
  }

  absl::StatusOr<std::shared_ptr<Endpoint>> Connect(const std::string& peer_address) override {
    std::weak_ptr<Core> peer = fabric_->Find(peer_address);
    if (peer.expired()) {
      return absl::NotFoundError(absl::StrCat("connect: no in-process transport at address \"",
                                              absl::CHexEscape(peer_address), "\" in this fabric"));
    }
    return std::make_shared<InProcEndpoint>(core_, std::move(peer), peer_address);
  }

  void SetMessageHandler(uint16_t id, MessageHandler handler) override {
    core_->SetHandler(id, std::move(handler));
  }

 private:
  const std::shared_ptr<InProcFabric> fabric_;
  const std::shared_ptr<Core> core_;
};

}  // namespace

std::shared_ptr<InProcFabric> MakeInProcFabric() { return std::make_shared<InProcFabric>(); }

std::unique_ptr<Transport> MakeInProcTransport(std::shared_ptr<InProcFabric> fabric) {
  return std::make_unique<InProcTransport>(std::move(fabric));
}

}  // namespace strata::transport
