#include "kvstore/kvstore_service.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_status.h"
#include "proto/unary.h"
#include "spdlog/spdlog.h"

namespace strata::kvstore {
namespace {

using engine::BlockKey;
using engine::KvRecordKind;

absl::StatusOr<std::vector<BlockKey>> Keys(const google::protobuf::RepeatedPtrField<std::string>& bytes) {
  std::vector<BlockKey> keys;
  keys.reserve(static_cast<size_t>(bytes.size()));
  for (const std::string& b : bytes) {
    STRATA_ASSIGN_OR_RETURN(BlockKey k, BlockKey::FromBytes(b));
    keys.push_back(k);
  }
  return keys;
}

transport::RemoteRegion Region(const v1::RemoteRegion& r) { return {r.address(), r.length(), r.key()}; }

void SetRegion(const transport::RemoteRegion& from, v1::RemoteRegion* to) {
  to->set_address(from.address);
  to->set_length(from.length);
  to->set_key(from.key);
}

// Waits for a fixed number of completions; the first error wins.
class Settle {
 public:
  explicit Settle(int n) : left_(n) {}
  transport::Completion Done() {
    return [this](absl::Status s) {
      absl::MutexLock lock(&mu_);
      if (!s.ok() && status_.ok()) status_ = std::move(s);
      --left_;
    };
  }
  // False on timeout (the completions are still owed).
  bool Wait(absl::Duration timeout, absl::Status* status) {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return left_ == 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) return false;
    *status = status_;
    return true;
  }

 private:
  absl::Mutex mu_;
  int left_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

KvStoreService::KvStoreService(BlockStore& store, transport::Transport& transport, const engine::KvLayout& layout,
                               const KvStoreServiceOptions& options)
    : store_(store),
      transport_(transport),
      layout_(layout),
      options_(options),
      pool_(static_cast<size_t>(std::max(1, options.threads)), 1024) {}

absl::StatusOr<std::unique_ptr<KvStoreService>> KvStoreService::Create(BlockStore& store, transport::Transport& transport,
                                                                      const engine::KvLayout& layout,
                                                                      const KvStoreServiceOptions& options) {
  std::unique_ptr<KvStoreService> s(new KvStoreService(store, transport, layout, options));
  STRATA_ASSIGN_OR_RETURN(s->blocks_registration_,
                          transport.Register(store.arena(KvRecordKind::kBlock),
                                             static_cast<size_t>(store.arena_bytes(KvRecordKind::kBlock))));
  STRATA_ASSIGN_OR_RETURN(s->checkpoints_registration_,
                          transport.Register(store.arena(KvRecordKind::kState),
                                             static_cast<size_t>(store.arena_bytes(KvRecordKind::kState))));
  s->lease_thread_ = std::thread([p = s.get()] { p->WatchLeases(); });
  return s;
}

KvStoreService::~KvStoreService() {
  stop_.Notify();
  if (lease_thread_.joinable()) lease_thread_.join();
}

void KvStoreService::WatchLeases() {
  while (!stop_.WaitForNotificationWithTimeout(options_.lease_check)) {
    for (uint64_t id : store_.ExpireLeases()) {
      // The writer is gone or too slow: its access goes first, then the slots.
      {
        absl::MutexLock lock(&mu_);
        loans_.erase(id);
      }
      store_.Abort(id);
      spdlog::warn("kvstore: write {} was not committed within its lease; its slots are freed", id);
    }
  }
}

absl::StatusOr<std::shared_ptr<transport::Endpoint>> KvStoreService::EndpointFor(const std::string& address) {
  {
    absl::MutexLock lock(&mu_);
    auto it = endpoints_.find(address);
    if (it != endpoints_.end()) return it->second;
  }
  STRATA_ASSIGN_OR_RETURN(std::shared_ptr<transport::Endpoint> ep, transport_.Connect(address));
  absl::MutexLock lock(&mu_);
  if (endpoints_.size() >= 256) endpoints_.clear();  // bounded: peers come and go
  endpoints_[address] = ep;
  return ep;
}

void KvStoreService::DropEndpoint(const std::string& address) {
  std::shared_ptr<transport::Endpoint> ep;
  absl::MutexLock lock(&mu_);
  auto it = endpoints_.find(address);
  if (it == endpoints_.end()) return;
  ep = std::move(it->second);
  endpoints_.erase(it);
}

absl::StatusOr<v1::KvStoreLookupReply> KvStoreService::DoLookup(const v1::KvStoreLookupRequest& r) {
  STRATA_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, Keys(r.keys()));
  const BlockStore::Found f = store_.Find(keys);
  v1::KvStoreLookupReply out;
  out.set_blocks(f.blocks);
  out.set_checkpoint_blocks(f.checkpoint_blocks);
  return out;
}

absl::StatusOr<v1::KvStoreFetchReply> KvStoreService::DoFetch(const v1::KvStoreFetchRequest& r) {
  const auto begin = std::chrono::steady_clock::now();
  STRATA_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, Keys(r.keys()));
  if (r.layout_fingerprint() != layout_.fingerprint()) {
    return absl::InvalidArgumentError("kvstore fetch: the requester's KV layout is not this store's (another model?)");
  }
  if (r.block_bytes() != static_cast<uint64_t>(layout_.block_bytes()) ||
      (r.checkpoint().length() != static_cast<uint64_t>(layout_.state_bytes()))) {
    return absl::InvalidArgumentError("kvstore fetch: block or checkpoint size does not match the layout");
  }
  const int64_t max_blocks = std::min<int64_t>(r.max_blocks(), r.block_ids_size());
  STRATA_ASSIGN_OR_RETURN(BlockStore::Pin pin, store_.Acquire(keys, max_blocks));
  v1::KvStoreFetchReply out;
  if (pin.blocks.empty()) return out;
  absl::Status status;
  uint64_t bytes = 0;
  {
    absl::StatusOr<std::shared_ptr<transport::Endpoint>> ep = EndpointFor(r.transport_address());
    if (!ep.ok()) {
      store_.Release(pin.id);
      return Annotate(ep.status(), "kvstore fetch: connecting to the requester");
    }
    std::vector<transport::PutSpan> spans;
    for (size_t b = 0; b < pin.blocks.size(); ++b) {
      spans.push_back({store_.arena(KvRecordKind::kBlock) + pin.blocks[b], static_cast<size_t>(layout_.block_bytes()),
                       static_cast<uint64_t>(r.block_ids(static_cast<int>(b))) * r.block_bytes()});
      bytes += static_cast<uint64_t>(layout_.block_bytes());
    }
    bytes += static_cast<uint64_t>(layout_.state_bytes());
    Settle settle(2);
    (*ep)->PutMany(spans, Region(r.pool()), settle.Done());
    (*ep)->Put(store_.arena(KvRecordKind::kState) + pin.checkpoint, static_cast<size_t>(layout_.state_bytes()),
               Region(r.checkpoint()), 0, settle.Done());
    if (!settle.Wait(options_.put_timeout, &status)) {
      // Destroying the endpoint fails what is stuck in it; the pinned slots stay pinned until
      // every put has let go of them.
      DropEndpoint(r.transport_address());
      ep->reset();
      while (!settle.Wait(absl::Seconds(5), &status)) {
        spdlog::warn("kvstore fetch: puts to {} still unsettled", r.transport_address());
      }
      status = absl::DeadlineExceededError(absl::StrCat("kvstore fetch: puts did not complete within ",
                                                        absl::FormatDuration(options_.put_timeout)));
    }
  }
  store_.Release(pin.id);
  if (!status.ok()) {
    DropEndpoint(r.transport_address());
    return Annotate(status, "kvstore fetch: putting the blocks");
  }
  out.set_blocks(static_cast<int64_t>(pin.blocks.size()));
  out.set_bytes(bytes);
  absl::MutexLock lock(&mu_);
  ++stats_.fetches;
  stats_.fetched_blocks += out.blocks();
  stats_.fetched_bytes += bytes;
  stats_.fetch_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return out;
}

absl::StatusOr<v1::KvStoreReserveReply> KvStoreService::DoReserve(const v1::KvStoreReserveRequest& r) {
  if (r.layout_fingerprint() != layout_.fingerprint()) {
    return absl::InvalidArgumentError("kvstore reserve: the writer's KV layout is not this store's (another model?)");
  }
  std::vector<BlockStore::Item> items;
  for (const v1::KvStoreItem& i : r.items()) {
    STRATA_ASSIGN_OR_RETURN(BlockKey k, BlockKey::FromBytes(i.key()));
    items.push_back({k, i.checkpoint() ? KvRecordKind::kState : KvRecordKind::kBlock, i.tokens()});
  }
  STRATA_ASSIGN_OR_RETURN(BlockStore::Reservation res, store_.Reserve(items));
  std::vector<transport::ByteRange> block_ranges, checkpoint_ranges;
  for (size_t i = 0; i < items.size(); ++i) {
    if (res.offsets[i] < 0) continue;
    const KvRecordKind kind = items[i].kind;
    (kind == KvRecordKind::kBlock ? block_ranges : checkpoint_ranges)
        .push_back({static_cast<uint64_t>(res.offsets[i]), static_cast<uint64_t>(store_.record_bytes(kind))});
  }
  Loan loan;
  v1::KvStoreReserveReply out;
  if (!block_ranges.empty()) {
    absl::StatusOr<std::unique_ptr<transport::Grant>> g = transport_.GrantAccess(*blocks_registration_, block_ranges);
    if (!g.ok()) {
      store_.Abort(res.id);
      return g.status();
    }
    loan.blocks = *std::move(g);
    SetRegion(loan.blocks->Describe(), out.mutable_blocks());
  }
  if (!checkpoint_ranges.empty()) {
    absl::StatusOr<std::unique_ptr<transport::Grant>> g =
        transport_.GrantAccess(*checkpoints_registration_, checkpoint_ranges);
    if (!g.ok()) {
      store_.Abort(res.id);
      return g.status();
    }
    loan.checkpoints = *std::move(g);
    SetRegion(loan.checkpoints->Describe(), out.mutable_checkpoints());
  }
  out.set_reservation(res.id);
  out.set_transport_address(transport_.address());
  for (int64_t o : res.offsets) out.add_offsets(o);
  out.set_lease_ms(absl::ToInt64Milliseconds(store_.write_lease()));
  absl::MutexLock lock(&mu_);
  loans_[res.id] = std::move(loan);
  return out;
}

absl::StatusOr<v1::KvStoreCommitReply> KvStoreService::DoCommit(const v1::KvStoreCommitRequest& r) {
  {
    // Revoked before the bytes are looked at: nothing lands in them from here on.
    absl::MutexLock lock(&mu_);
    loans_.erase(r.reservation());
  }
  STRATA_ASSIGN_OR_RETURN(int64_t stored, store_.Commit(r.reservation()));
  v1::KvStoreCommitReply out;
  out.set_stored(stored);
  return out;
}

void KvStoreService::DoAbort(uint64_t reservation) {
  {
    absl::MutexLock lock(&mu_);
    loans_.erase(reservation);
  }
  store_.Abort(reservation);
}

KvStoreService::Stats KvStoreService::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

grpc::ServerUnaryReactor* KvStoreService::Lookup(grpc::CallbackServerContext* c, const v1::KvStoreLookupRequest* r,
                                                 v1::KvStoreLookupReply* out) {
  return proto::Answer(c, DoLookup(*r), out);
}

grpc::ServerUnaryReactor* KvStoreService::Reserve(grpc::CallbackServerContext* c, const v1::KvStoreReserveRequest* r,
                                                  v1::KvStoreReserveReply* out) {
  return proto::Answer(c, DoReserve(*r), out);
}

grpc::ServerUnaryReactor* KvStoreService::Abort(grpc::CallbackServerContext* c, const v1::KvStoreAbortRequest* r,
                                                v1::KvStoreAbortReply* out) {
  DoAbort(r->reservation());
  return proto::Answer(c, absl::StatusOr<v1::KvStoreAbortReply>(v1::KvStoreAbortReply()), out);
}

// Fetches and commits wait for I/O: they run on the service's threads; a full queue is an
// overloaded store (the caller computes instead, or skips the write-back).
template <typename Reply, typename Work>
grpc::ServerUnaryReactor* Offload(ThreadPool& pool, grpc::CallbackServerContext* c, Reply* out, Work work,
                                  std::function<void()> refused) {
  auto* reactor = c->DefaultReactor();
  if (!pool.TrySchedule([reactor, out, work] {
        absl::StatusOr<Reply> reply = work();
        if (reply.ok()) *out = *std::move(reply);
        reactor->Finish(reply.ok() ? grpc::Status::OK : proto::ToGrpc(reply.status()));
      })) {
    if (refused) refused();
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "kvstore: too many fetches and commits in progress"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* KvStoreService::Fetch(grpc::CallbackServerContext* c, const v1::KvStoreFetchRequest* r,
                                                v1::KvStoreFetchReply* out) {
  return Offload(pool_, c, out, [this, r] { return DoFetch(*r); }, nullptr);
}

grpc::ServerUnaryReactor* KvStoreService::Commit(grpc::CallbackServerContext* c, const v1::KvStoreCommitRequest* r,
                                                 v1::KvStoreCommitReply* out) {
  return Offload(pool_, c, out, [this, r] { return DoCommit(*r); }, [this, r] { DoAbort(r->reservation()); });
}

}  // namespace strata::kvstore
