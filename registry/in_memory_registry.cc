// InMemoryRegistry: the Registry for unit tests and single-process runs. Leases expire by the
// injected Clock's time, so tests drive expiry with SimulatedClock::Advance instead of sleeping.
#include <algorithm>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "registry/internal.h"
#include "registry/registry.h"

namespace strata::registry {
namespace {

class InMemoryRegistry final : public Registry {
 public:
  explicit InMemoryRegistry(Clock& clock) : clock_(clock) {}

  absl::Status Put(const ServiceRecord& record, absl::Duration lease) override {
    if (absl::Status status = ValidatePut(record, lease); !status.ok()) return status;
    const absl::Time expiry = clock_.Now() + lease;
    absl::MutexLock lock(&mu_);
    entries_[{record.role, record.id}] = Entry{record, expiry};
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& role, const std::string& id) override {
    if (absl::Status status = ValidateRole(role); !status.ok()) return status;
    absl::MutexLock lock(&mu_);
    entries_.erase({role, id});
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<ServiceRecord>> List(const std::string& role) override {
    if (absl::Status status = ValidateRole(role); !status.ok()) return status;
    const absl::Time now = clock_.Now();
    absl::MutexLock lock(&mu_);
    std::vector<ServiceRecord> live;
    // Keys sort by (role, id), so one role's records are one range, already sorted by id.
    for (auto it = entries_.lower_bound({role, ""});
         it != entries_.end() && it->first.first == role;) {
      if (it->second.expiry <= now) {
        it = entries_.erase(it);  // lapsed, as Redis would have dropped it
      } else {
        live.push_back(it->second.record);
        ++it;
      }
    }
    return live;
  }

 private:
  struct Entry {
    ServiceRecord record;
    absl::Time expiry;
  };

  Clock& clock_;
  absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Registry> MakeInMemoryRegistry(Clock& clock) {
  return std::make_unique<InMemoryRegistry>(clock);
}

}  // namespace strata::registry
