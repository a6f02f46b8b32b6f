#include "bench/kvstore_bench.h"

#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/kv_transfer_bench.h"
#include "bench/report.h"
#include "common/status.h"
#include "engine/kv/kv_layout.h"
#include "grpcpp/grpcpp.h"
#include "kvstore/block_store.h"
#include "kvstore/kvstore_client.h"
#include "kvstore/kvstore_service.h"
#include "kvstore/slot.h"
#include "kvstore/ssd_tier.h"
#include "proto/grpc_options.h"
#include "transport/transport.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
using engine::BlockKey;
using engine::KvRecordKind;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A sealed block record (its bytes a function of `i`) at `at`.
void FillRecord(uint8_t* at, int64_t bytes, uint64_t fingerprint, uint64_t i) {
  for (int64_t b = engine::kKvHeaderBytes; b < bytes; b += 8) {
    const uint64_t v = (i + 1) * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(b);
    std::memcpy(at + b, &v, static_cast<size_t>(std::min<int64_t>(8, bytes - b)));
  }
  engine::SealKvRecord(at, bytes, KvRecordKind::kBlock, fingerprint, engine::kBlockTokens);
}

// dd's rate for reading `path` with direct I/O, from its "N bytes ... copied, T s" line.
absl::StatusOr<double> DdRead(const std::string& path) {
  const std::string command = absl::StrCat("dd if='", path, "' of=/dev/null bs=1M iflag=direct 2>&1");
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return absl::FailedPreconditionError("cannot run dd");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  ::pclose(p);
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    double bytes = 0, seconds = 0;
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i + 1] == "bytes" && bytes == 0) absl::SimpleAtod(words[i], &bytes);
      if ((words[i + 1] == "s," || words[i + 1] == "s") && absl::SimpleAtod(words[i], &seconds)) break;
    }
    if (bytes > 0 && seconds > 0) return bytes / seconds;
  }
  return absl::InternalError(absl::StrCat("cannot read dd's rate from: ", out));
}

absl::Status SsdBench(const KvStoreBenchOptions& o, const engine::KvLayout& layout) {
  const std::string dir = absl::StrCat(o.dir, "/strata-kvstore-bench");
  std::filesystem::remove_all(dir);
  const int64_t slot = kvstore::SlotBytes(layout.block_bytes());
  const int64_t slots = (o.ssd_mib << 20) / slot;
  STRATA_ASSIGN_OR_RETURN(auto ssd, kvstore::SsdTier::Open({.dir = dir,
                                                            .block_slots = slots,
                                                            .checkpoint_slots = 1,
                                                            .block_record_bytes = layout.block_bytes(),
                                                            .checkpoint_record_bytes = layout.state_bytes(),
                                                            .fingerprint = layout.fingerprint()}));
  // One batch of slots in memory, 4 KiB-aligned (direct I/O), reused for every batch.
  const int64_t batch = o.batch;
  void* m = ::mmap(nullptr, static_cast<size_t>(batch * slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return absl::ResourceExhaustedError("mmap");
  uint8_t* buffer = static_cast<uint8_t*>(m);
  auto items = [&](int64_t first, int64_t n) {
    std::vector<kvstore::SsdTier::Item> out;
    for (int64_t i = 0; i < n; ++i) out.push_back({BlockKey{static_cast<uint64_t>(first + i), 7}, KvRecordKind::kBlock, buffer + i * slot});
    return out;
  };
  const auto write_start = Clock::now();
  for (int64_t first = 0; first < slots; first += batch) {
    const int64_t n = std::min(batch, slots - first);
    for (int64_t i = 0; i < n; ++i) {
      FillRecord(buffer + i * slot, layout.block_bytes(), layout.fingerprint(), static_cast<uint64_t>(first + i));
      kvstore::WriteTail(buffer + i * slot, slot, BlockKey{static_cast<uint64_t>(first + i), 7}, KvRecordKind::kBlock,
                         layout.block_bytes(), layout.fingerprint(), 0);
    }
    for (const absl::Status& s : ssd->Write(items(first, n))) STRATA_RETURN_IF_ERROR(s);
  }
  const double write_s = Since(write_start);
  const auto read_start = Clock::now();
  for (int64_t first = 0; first < slots; first += batch) {
    for (const absl::Status& s : ssd->Read(items(first, std::min(batch, slots - first)))) STRATA_RETURN_IF_ERROR(s);
  }
  const double read_s = Since(read_start);
  ::munmap(m, static_cast<size_t>(batch * slot));
  const double bytes = static_cast<double>(slots * slot);
  STRATA_ASSIGN_OR_RETURN(double dd, DdRead(dir + "/blocks.slots"));
  std::printf("SSD tier in %s: %lld slots of %lld bytes; write %.2f GB/s; read (batches of %lld, verified, %s) %.2f GB/s; "
              "dd iflag=direct %.2f GB/s\n",
              dir.c_str(), static_cast<long long>(slots), static_cast<long long>(slot), bytes / write_s / 1e9,
              static_cast<long long>(batch), ssd->stats().io_uring ? "io_uring" : "pread", bytes / read_s / 1e9, dd / 1e9);
  Report({"kvstore_ssd_read", bytes / read_s / 1e9, "GB/s", 0.8 * dd / 1e9, true}, o.results_file);
  std::filesystem::remove_all(dir);
  return absl::OkStatus();
}

absl::Status FetchBench(const KvStoreBenchOptions& o, const engine::KvLayout& layout) {
  const int64_t blocks = o.fetch_blocks;
  STRATA_ASSIGN_OR_RETURN(auto store, kvstore::BlockStore::Open(
                                          layout, {.ram_bytes = (blocks + 64) * kvstore::SlotBytes(layout.block_bytes()) * 4 / 3 +
                                                                16 * kvstore::SlotBytes(layout.state_bytes()) * 4}));
  STRATA_ASSIGN_OR_RETURN(auto store_transport, transport::MakeUcxTransport({.transports = o.transports, .host = "127.0.0.1"}));
  STRATA_ASSIGN_OR_RETURN(auto worker_transport, transport::MakeUcxTransport({.transports = o.transports, .host = "127.0.0.1"}));
  STRATA_ASSIGN_OR_RETURN(auto service, kvstore::KvStoreService::Create(*store, *store_transport, layout));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  proto::ConfigureInternalServer(builder);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return absl::UnavailableError("kvstore bench: no gRPC server");
  engine::KvPool pool(layout, blocks + 1);
  STRATA_ASSIGN_OR_RETURN(auto client, kvstore::KvStoreClient::Create(*worker_transport, pool,
                                                                      {.addresses = {absl::StrCat("127.0.0.1:", port)}}));
  // The chain, written back once (and its checkpoint), then fetched whole again and again.
  std::vector<BlockKey> keys;
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < blocks; ++i) {
    keys.push_back(BlockKey{static_cast<uint64_t>(i), 11});
    ids.push_back(*pool.Allocate());
    FillRecord(pool.block(ids.back()), layout.block_bytes(), layout.fingerprint(), static_cast<uint64_t>(i));
  }
  std::vector<uint8_t> checkpoint(static_cast<size_t>(layout.state_bytes()), 1);
  engine::SealKvRecord(checkpoint.data(), layout.state_bytes(), KvRecordKind::kState, layout.fingerprint(),
                       static_cast<uint64_t>(blocks * engine::kBlockTokens));
  for (int32_t b : ids) pool.Ref(b);
  client->WriteBack(keys, ids, {{blocks * engine::kBlockTokens, checkpoint}});
  for (int i = 0; i < 6000 && store->Find(keys).checkpoint_blocks < blocks; ++i) absl::SleepFor(absl::Milliseconds(10));
  if (store->Find(keys).checkpoint_blocks < blocks) return absl::InternalError("kvstore bench: the write-back did not land");
  auto fetch = [&]() -> absl::StatusOr<double> {
    absl::Notification done;
    absl::StatusOr<int64_t> got;
    const auto start = Clock::now();
    client->Fetch(keys, blocks, ids, checkpoint.data(), [&](absl::StatusOr<int64_t> r) {
      got = r;
      done.Notify();
    });
    done.WaitForNotification();
    if (!got.ok()) return got.status();
    if (*got != blocks) return absl::InternalError(absl::StrCat("fetched ", *got, " of ", blocks, " blocks"));
    return Since(start);
  };
  STRATA_RETURN_IF_ERROR(fetch().status());  // warm-up: endpoints, first touches
  double best = 1e300;
  for (int i = 0; i < o.fetch_rounds; ++i) {
    STRATA_ASSIGN_OR_RETURN(double s, fetch());
    best = std::min(best, s);
  }
  const double bytes = static_cast<double>(blocks * layout.block_bytes() + layout.state_bytes());
  server->Shutdown(std::chrono::system_clock::now());
  const int64_t iterations = std::max<int64_t>(1000, (int64_t{1} << 30) / layout.block_bytes());
  STRATA_ASSIGN_OR_RETURN(double perftest,
                          RunUcxPerftest(o.perftest, o.transports, "ucp_am_bw", layout.block_bytes(), iterations));
  std::printf("kvstore fetch of %lld blocks (%.1f MB, UCX_TLS=%s): best of %d %.3f s = %.2f GB/s; ucx_perftest "
              "ucp_am_bw -s %lld: %.2f GB/s\n",
              static_cast<long long>(blocks), bytes / 1e6, o.transports.c_str(), o.fetch_rounds, best, bytes / best / 1e9,
              static_cast<long long>(layout.block_bytes()), perftest / 1e9);
  Report({absl::StrCat("kvstore_fetch_", o.transports), bytes / best / 1e9, "GB/s", 0.8 * perftest / 1e9, true},
         o.results_file);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunKvStoreBench(const KvStoreBenchOptions& o) {
  STRATA_ASSIGN_OR_RETURN(engine::ModelConfig model, engine::PresetConfig(o.preset));
  const engine::KvLayout layout(model);
  if (o.ssd_mib > 0) STRATA_RETURN_IF_ERROR(SsdBench(o, layout));
  if (o.fetch_blocks > 0) STRATA_RETURN_IF_ERROR(FetchBench(o, layout));
  return absl::OkStatus();
}

}  // namespace strata::bench
