#include "kvstore/kvstore_client.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_options.h"
#include "proto/grpc_status.h"
#include "spdlog/spdlog.h"

namespace strata::kvstore {
namespace {

using engine::BlockKey;

void SetRegion(const transport::RemoteRegion& from, v1::RemoteRegion* to) {
  to->set_address(from.address);
  to->set_length(from.length);
  to->set_key(from.key);
}
transport::RemoteRegion Region(const v1::RemoteRegion& r) { return {r.address(), r.length(), r.key()}; }

}  // namespace

KvStoreClient::KvStoreClient(transport::Transport& transport, engine::KvPool& pool, const KvStoreClientOptions& options)
    : transport_(transport),
      pool_(pool),
      options_(options),
      staging_(static_cast<size_t>((options.fetch_threads + options.checkpoint_staging) * pool.layout().state_bytes())),
      fetchers_(static_cast<size_t>(std::max(1, options.fetch_threads)), 1024) {
  for (const std::string& a : options.addresses) stubs_.push_back(v1::KvStore::NewStub(proto::InternalChannel(a)));
  for (int i = options.fetch_threads - 1; i >= 0; --i) free_fetch_slots_.push_back(i);
}

absl::StatusOr<std::unique_ptr<KvStoreClient>> KvStoreClient::Create(transport::Transport& transport, engine::KvPool& pool,
                                                                    const KvStoreClientOptions& options) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("kvstore client: no kvstore address");
  if (!pool.host_memory()) return absl::FailedPreconditionError("kvstore client: the KV pool is not in host memory");
  std::unique_ptr<KvStoreClient> c(new KvStoreClient(transport, pool, options));
  STRATA_ASSIGN_OR_RETURN(c->pool_registration_,
                          transport.Register(pool.memory(), static_cast<size_t>(pool.memory_bytes())));
  STRATA_ASSIGN_OR_RETURN(c->staging_registration_, transport.Register(c->staging_.data(), c->staging_.size()));
  c->writer_ = std::thread([p = c.get()] { p->WriterLoop(); });
  return c;
}

KvStoreClient::~KvStoreClient() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (writer_.joinable()) writer_.join();
}

v1::KvStore::Stub& KvStoreClient::StubFor(const BlockKey& first) {
  return *stubs_[static_cast<size_t>((first.lo ^ first.hi) % stubs_.size())];
}

absl::StatusOr<std::shared_ptr<transport::Endpoint>> KvStoreClient::EndpointFor(const std::string& address) {
  {
    absl::MutexLock lock(&mu_);
    auto it = endpoints_.find(address);
    if (it != endpoints_.end()) return it->second;
  }
  STRATA_ASSIGN_OR_RETURN(std::shared_ptr<transport::Endpoint> ep, transport_.Connect(address));
  absl::MutexLock lock(&mu_);
  endpoints_[address] = ep;
  return ep;
}

void KvStoreClient::Fetch(absl::Span<const BlockKey> keys, int64_t max_blocks, absl::Span<const int32_t> blocks,
                          uint8_t* checkpoint, std::function<void(absl::StatusOr<int64_t>)> done) {
  std::vector<BlockKey> k(keys.begin(), keys.end());
  std::vector<int32_t> b(blocks.begin(), blocks.end());
  auto task = [this, k = std::move(k), max_blocks, b = std::move(b), checkpoint, done]() {
    absl::StatusOr<int64_t> got = FetchNow(k, max_blocks, b, checkpoint);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.fetches;
      if (got.ok()) {
        stats_.fetched_blocks += *got;
      } else {
        ++stats_.fetch_failures;
      }
    }
    done(std::move(got));
  };
  if (!fetchers_.TrySchedule(task)) done(absl::ResourceExhaustedError("kvstore client: too many fetches queued"));
}

absl::StatusOr<int64_t> KvStoreClient::FetchNow(const std::vector<BlockKey>& keys, int64_t max_blocks,
                                                const std::vector<int32_t>& blocks, uint8_t* checkpoint) {
  if (keys.empty() || max_blocks <= 0) return 0;
  const engine::KvLayout& layout = pool_.layout();
  const uint64_t block_bytes = static_cast<uint64_t>(layout.block_bytes());
  const uint64_t state_bytes = static_cast<uint64_t>(layout.state_bytes());
  int slot;
  {
    absl::MutexLock lock(&mu_);
    auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !free_fetch_slots_.empty(); };
    mu_.Await(absl::Condition(&free));  // a slot per fetch thread: never empty for long
    slot = free_fetch_slots_.back();
    free_fetch_slots_.pop_back();
  }
  auto give_back = [&] {
    absl::MutexLock lock(&mu_);
    free_fetch_slots_.push_back(slot);
  };
  // Lend the store exactly the destination blocks and one landing slot for the checkpoint.
  std::vector<transport::ByteRange> ranges;
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(blocks.size()));
  for (int64_t i = 0; i < n; ++i) ranges.push_back({static_cast<uint64_t>(blocks[static_cast<size_t>(i)]) * block_bytes, block_bytes});
  const transport::ByteRange landing{static_cast<uint64_t>(slot) * state_bytes, state_bytes};
  absl::StatusOr<std::unique_ptr<transport::Grant>> pool_grant = transport_.GrantAccess(*pool_registration_, ranges);
  absl::StatusOr<std::unique_ptr<transport::Grant>> state_grant =
      transport_.GrantAccess(*staging_registration_, absl::MakeConstSpan(&landing, 1));
  if (!pool_grant.ok() || !state_grant.ok()) {
    give_back();
    return !pool_grant.ok() ? pool_grant.status() : state_grant.status();
  }
  v1::KvStoreFetchRequest request;
  for (const BlockKey& k : keys) request.add_keys(k.Bytes());
  request.set_max_blocks(n);
  request.set_transport_address(transport_.address());
  request.set_layout_fingerprint(layout.fingerprint());
  SetRegion((*pool_grant)->Describe(), request.mutable_pool());
  request.set_block_bytes(block_bytes);
  for (int64_t i = 0; i < n; ++i) request.add_block_ids(blocks[static_cast<size_t>(i)]);
  transport::RemoteRegion cp = (*state_grant)->Describe();
  cp.address += landing.offset;
  cp.length = state_bytes;
  SetRegion(cp, request.mutable_checkpoint());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options_.timeout));
  v1::KvStoreFetchReply reply;
  const grpc::Status s = StubFor(keys.front()).Fetch(&context, request, &reply);
  // Revoked before anything reads the bytes: a late put of this fetch lands nowhere.
  pool_grant->reset();
  state_grant->reset();
  absl::StatusOr<int64_t> out = reply.blocks();
  if (!s.ok()) {
    out = Annotate(proto::FromGrpc(s), "kvstore fetch");
  } else if (reply.blocks() > n) {
    out = absl::InternalError("kvstore fetch: the store filled more blocks than it was lent");
  } else if (reply.blocks() > 0) {
    std::memcpy(checkpoint, staging_.data() + landing.offset, state_bytes);
  }
  give_back();
  return out;
}

void KvStoreClient::WriteBack(std::vector<BlockKey> keys, std::vector<int32_t> blocks,
                              std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints) {
  const int64_t n = static_cast<int64_t>(blocks.size());
  {
    absl::MutexLock lock(&mu_);
    if (!stop_ && pending_blocks_ + n <= options_.max_pending_blocks) {
      pending_blocks_ += n;
      writes_.push_back({std::move(keys), std::move(blocks), std::move(checkpoints)});
      return;
    }
    ++stats_.writes_skipped;
  }
  for (int32_t b : blocks) pool_.Free(b);  // behind on writing: these stay unstored
}

void KvStoreClient::WriterLoop() {
  for (;;) {
    Write w;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !writes_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (writes_.empty()) return;
      w = std::move(writes_.front());
      writes_.pop_front();
    }
    const absl::Status s = WriteNow(w);
    for (int32_t b : w.blocks) pool_.Free(b);
    absl::MutexLock lock(&mu_);
    pending_blocks_ -= static_cast<int64_t>(w.blocks.size());
    ++stats_.writes;
    if (!s.ok()) {
      if (++stats_.write_failures <= 3) spdlog::warn("kvstore write-back: {}", s.ToString());
    }
  }
}

absl::Status KvStoreClient::WriteNow(const Write& w) {
  if (w.keys.empty()) return absl::OkStatus();
  const engine::KvLayout& layout = pool_.layout();
  v1::KvStoreReserveRequest request;
  request.set_layout_fingerprint(layout.fingerprint());
  for (size_t i = 0; i < w.keys.size() && i < w.blocks.size(); ++i) {
    v1::KvStoreItem* item = request.add_items();
    item->set_key(w.keys[i].Bytes());
    item->set_tokens(engine::kBlockTokens);
  }
  for (const auto& [position, state] : w.checkpoints) {
    const size_t block = static_cast<size_t>(position / engine::kBlockTokens);
    if (block < 1 || block > w.keys.size()) continue;
    v1::KvStoreItem* item = request.add_items();
    item->set_key(w.keys[block - 1].Bytes());
    item->set_checkpoint(true);
    item->set_tokens(position);
  }
  const BlockKey first = w.keys.front();
  v1::KvStoreReserveReply reserved;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options_.timeout));
    const grpc::Status s = StubFor(first).Reserve(&context, request, &reserved);
    if (!s.ok()) return Annotate(proto::FromGrpc(s), "kvstore reserve");
  }
  auto abort = [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::KvStoreAbortRequest a;
    a.set_reservation(reserved.reservation());
    v1::KvStoreAbortReply ignored;
    StubFor(first).Abort(&context, a, &ignored);
  };
  bool any = false;
  for (int64_t o : reserved.offsets()) any = any || o >= 0;
  if (!any) {  // the store has all of it
    abort();
    return absl::OkStatus();
  }
  absl::StatusOr<std::shared_ptr<transport::Endpoint>> ep = EndpointFor(reserved.transport_address());
  if (!ep.ok()) {
    abort();
    return Annotate(ep.status(), "kvstore write-back: connecting");
  }
  // Blocks straight from the pool; checkpoints through the registered staging slots, a round at
  // a time.
  std::vector<transport::PutSpan> spans;
  const size_t nblocks = std::min(w.keys.size(), w.blocks.size());
  for (size_t i = 0; i < nblocks; ++i) {
    const int64_t o = reserved.offsets(static_cast<int>(i));
    if (o < 0) continue;
    spans.push_back({pool_.block(w.blocks[i]), static_cast<size_t>(layout.block_bytes()), static_cast<uint64_t>(o)});
  }
  absl::Status status = spans.empty() ? absl::OkStatus() : transport::PutManySync(**ep, spans, Region(reserved.blocks()));
  uint8_t* staging = staging_.data() + static_cast<size_t>(options_.fetch_threads) * static_cast<size_t>(layout.state_bytes());
  size_t item = nblocks;
  std::vector<transport::PutSpan> round;
  for (const auto& [position, state] : w.checkpoints) {
    const size_t block = static_cast<size_t>(position / engine::kBlockTokens);
    if (block < 1 || block > w.keys.size()) continue;
    const int64_t o = reserved.offsets(static_cast<int>(item++));
    if (o < 0 || !status.ok()) continue;
    uint8_t* slot = staging + round.size() * static_cast<size_t>(layout.state_bytes());
    std::memcpy(slot, state.data(), state.size());
    round.push_back({slot, state.size(), static_cast<uint64_t>(o)});
    if (static_cast<int>(round.size()) == options_.checkpoint_staging) {
      status = transport::PutManySync(**ep, round, Region(reserved.checkpoints()));
      round.clear();
    }
  }
  if (status.ok() && !round.empty()) status = transport::PutManySync(**ep, round, Region(reserved.checkpoints()));
  if (!status.ok()) {
    {
      absl::MutexLock lock(&mu_);
      endpoints_.erase(reserved.transport_address());
    }
    abort();
    return Annotate(status, "kvstore write-back: putting the records");
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options_.timeout));
  v1::KvStoreCommitRequest commit;
  commit.set_reservation(reserved.reservation());
  v1::KvStoreCommitReply committed;
  const grpc::Status s = StubFor(first).Commit(&context, commit, &committed);
  if (!s.ok()) return Annotate(proto::FromGrpc(s), "kvstore commit");
  absl::MutexLock lock(&mu_);
  stats_.written_records += committed.stored();
  return absl::OkStatus();
}

KvStoreClientStats KvStoreClient::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace strata::kvstore
