// FaultyTransport: wraps another Transport and makes its operations misbehave, deterministically
// for a given seed: drops some (not performed; the completion reports Unavailable), fails all after
// the first N, and delays each before issuing it. Every operation passes through one issuing
// thread in issue order, so the fate of the k-th operation depends only on k and the seed, and
// delayed operations keep their order.
#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "transport/task_thread.h"
#include "transport/transport.h"

namespace strata::transport {
namespace {

constexpr size_t kQueueCapacity = 4096;

enum class Fate { kPass, kDrop, kFail };

class FaultCore {
 public:
  explicit FaultCore(const FaultOptions& options)
      : options_(options), rng_(options.seed), thread_(kQueueCapacity) {}

  // Decides what happens to the next operation, then (after the delay, on the issuing thread)
  // either calls `issue` with `done` or completes `done` with the fault.
  void Run(const char* op, std::function<void(Completion)> issue, Completion done) {
    int64_t index = 0;
    const Fate fate = Decide(&index);
    Completion fail = done;
    const bool posted = thread_.Post(
        {.run =
             [this, op, fate, index, issue = std::move(issue), done]() mutable {
               switch (fate) {
                 case Fate::kPass:
                   issue(std::move(done));
                   return;
                 case Fate::kDrop:
                   done(absl::UnavailableError(absl::StrCat(op, " dropped by FaultyTransport")));
                   return;
                 case Fate::kFail:
                   done(absl::UnavailableError(
                       absl::StrCat(op, " failed by FaultyTransport: operation ", index + 1,
                                    " after fail_after=", options_.fail_after)));
                   return;
               }
             },
         .fail = std::move(fail),
         .not_before = absl::Now() + options_.delay});
    if (!posted)
      done(absl::CancelledError(absl::StrCat(op, ": the faulty transport is shut down")));
  }

  void Shutdown() {
    thread_.Stop(absl::CancelledError("faulty transport destroyed with the operation in flight"));
  }

 private:
  Fate Decide(int64_t* index) {
    absl::MutexLock lock(&mu_);
    *index = ops_++;
    // Draw for every operation, so one operation's fate does not shift the others'.
    const double draw = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    if (options_.fail_after >= 0 && *index >= options_.fail_after) return Fate::kFail;
    if (draw < options_.drop_probability) return Fate::kDrop;
    return Fate::kPass;
  }

  const FaultOptions options_;
  absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int64_t ops_ ABSL_GUARDED_BY(mu_) = 0;
  internal::TaskThread thread_;
};

class FaultyEndpoint final : public Endpoint {
 public:
  FaultyEndpoint(std::shared_ptr<FaultCore> core, std::shared_ptr<Endpoint> inner)
      : core_(std::move(core)), inner_(std::move(inner)) {}

  void Put(const void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    core_->Run(
        "put",
        [inner = inner_, local, len, remote, remote_offset](Completion d) {
          inner->Put(local, len, remote, remote_offset, std::move(d));
        },
        std::move(done));
  }

  void Get(void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    core_->Run(
        "get",
        [inner = inner_, local, len, remote, remote_offset](Completion d) {
          inner->Get(local, len, remote, remote_offset, std::move(d));
        },
        std::move(done));
  }

  void Send(uint16_t id, std::string_view payload, Completion done) override {
    core_->Run(
        "send",
        [inner = inner_, id, payload = std::string(payload)](Completion d) {
          inner->Send(id, payload, std::move(d));
        },
        std::move(done));
  }

  void Flush(Completion done) override {
    core_->Run(
        "flush", [inner = inner_](Completion d) { inner->Flush(std::move(d)); }, std::move(done));
  }

  const std::string& peer() const override { return inner_->peer(); }

 private:
  const std::shared_ptr<FaultCore> core_;
  const std::shared_ptr<Endpoint> inner_;
};

class FaultyTransport final : public Transport {
 public:
  FaultyTransport(std::unique_ptr<Transport> inner, const FaultOptions& options)
      : inner_(std::move(inner)), core_(std::make_shared<FaultCore>(options)) {}

  // Fails what waits on the issuing thread first, then lets the inner transport fail what it has.
  ~FaultyTransport() override { core_->Shutdown(); }

  std::string name() const override { return absl::StrCat("faulty(", inner_->name(), ")"); }
  std::string address() const override { return inner_->address(); }

  absl::StatusOr<std::unique_ptr<Grant>> GrantAccess(const MemoryRegistration& registration,
                                                     absl::Span<const ByteRange> ranges) override {
    return inner_->GrantAccess(registration, ranges);
  }
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Register(void* base, size_t len) override {
    return inner_->Register(base, len);
  }
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Allocate(size_t len) override {
    return inner_->Allocate(len);
  }

  absl::StatusOr<std::shared_ptr<Endpoint>> Connect(const std::string& peer_address) override {
    absl::StatusOr<std::shared_ptr<Endpoint>> inner = inner_->Connect(peer_address);
    if (!inner.ok()) return inner.status();
    return std::make_shared<FaultyEndpoint>(core_, *std::move(inner));
  }

  void SetMessageHandler(uint16_t id, MessageHandler handler) override {
    inner_->SetMessageHandler(id, std::move(handler));
  }

 private:
  const std::unique_ptr<Transport> inner_;
  const std::shared_ptr<FaultCore> core_;
};

}  // namespace

std::unique_ptr<Transport> MakeFaultyTransport(std::unique_ptr<Transport> inner,
                                               const FaultOptions& options) {
  return std::make_unique<FaultyTransport>(std::move(inner), options);
}

}  // namespace strata::transport
