// The kvstore over real gRPC with the in-process transport: a worker's client writes a chain of
// blocks and checkpoints back (reserve, put, commit), fetches it into another pool, and gets the
// exact bytes; a fetch only fills the blocks the client lent; a writer that never commits leaves
// nothing behind once its lease lapses, and its late puts land nowhere.
#include "kvstore/kvstore_service.h"

#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvstore/block_store.h"
#include "kvstore/kvstore_client.h"
#include "proto/grpc_options.h"
#include "transport/transport.h"

namespace strata::kvstore {
namespace {

using engine::BlockKey;
using engine::KvRecordKind;

class KvStoreServiceTest : public ::testing::Test {
 protected:
  KvStoreServiceTest() : layout_(*engine::PresetConfig("tiny")) {}

  void SetUp() override {
    fabric_ = transport::MakeInProcFabric();
    store_transport_ = transport::MakeInProcTransport(fabric_);
    worker_transport_ = transport::MakeInProcTransport(fabric_);
    auto store = BlockStore::Open(layout_, {.ram_bytes = int64_t{48} << 20, .write_lease = absl::Milliseconds(300)});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto service = KvStoreService::Create(*store_, *store_transport_, layout_, {.lease_check = absl::Milliseconds(50)});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    proto::ConfigureInternalServer(builder);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now());
    service_.reset();
  }

  // A sealed block of (doc, b) in `pool`; a checkpoint record after block b.
  void FillBlock(engine::KvPool& pool, int32_t id, int b) const {
    uint8_t* p = pool.block(id);
    for (int64_t i = engine::kKvHeaderBytes; i < layout_.block_bytes(); ++i) p[i] = static_cast<uint8_t>(i * 7 + b);
    engine::SealKvRecord(p, layout_.block_bytes(), KvRecordKind::kBlock, layout_.fingerprint(), engine::kBlockTokens);
  }
  std::vector<uint8_t> Checkpoint(int b) const {
    std::vector<uint8_t> s(static_cast<size_t>(layout_.state_bytes()), static_cast<uint8_t>(b + 3));
    engine::SealKvRecord(s.data(), layout_.state_bytes(), KvRecordKind::kState, layout_.fingerprint(),
                         static_cast<uint64_t>((b + 1) * engine::kBlockTokens));
    return s;
  }
  static std::vector<BlockKey> Chain(int n) {
    std::vector<BlockKey> k;
    for (int i = 0; i < n; ++i) k.push_back(BlockKey{static_cast<uint64_t>(100 + i), 9});
    return k;
  }

  engine::KvLayout layout_;
  std::shared_ptr<transport::InProcFabric> fabric_;
  std::unique_ptr<transport::Transport> store_transport_, worker_transport_;
  std::unique_ptr<BlockStore> store_;
  std::unique_ptr<KvStoreService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(KvStoreServiceTest, WriteBackThenFetchIntoAnotherPoolGivesTheSameBytes) {
  engine::KvPool writer_pool(layout_, 16);
  auto writer = KvStoreClient::Create(*worker_transport_, writer_pool, {.addresses = {address_}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  std::vector<int32_t> blocks;
  for (int b = 0; b < 6; ++b) {
    blocks.push_back(*writer_pool.Allocate());
    FillBlock(writer_pool, blocks.back(), b);
  }
  std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints = {{2 * 128, Checkpoint(1)}, {6 * 128, Checkpoint(5)}};
  std::vector<int32_t> lent = blocks;
  for (int32_t b : lent) writer_pool.Ref(b);  // the client's, dropped once written
  (*writer)->WriteBack(Chain(6), lent, checkpoints);
  for (int i = 0; i < 500 && store_->Find(Chain(6)).checkpoint_blocks < 6; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(store_->Find(Chain(6)).checkpoint_blocks, 6);
  for (int i = 0; i < 200 && writer_pool.free_blocks() != 10; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(writer_pool.free_blocks(), 10) << "the client must drop its references once written";
  EXPECT_EQ((*writer)->stats().written_records, 8);

  // Another worker, another pool: fetch the chain (limited to 4 blocks: resumes at block 2).
  engine::KvPool reader_pool(layout_, 16);
  auto reader = KvStoreClient::Create(*worker_transport_, reader_pool, {.addresses = {address_}});
  ASSERT_TRUE(reader.ok());
  std::vector<int32_t> into;
  for (int b = 0; b < 6; ++b) into.push_back(*reader_pool.Allocate());
  auto fetch = [&](int64_t max_blocks) {
    std::vector<uint8_t> checkpoint(static_cast<size_t>(layout_.state_bytes()));
    absl::Notification done;
    absl::StatusOr<int64_t> got;
    (*reader)->Fetch(Chain(6), max_blocks, into, checkpoint.data(), [&](absl::StatusOr<int64_t> r) {
      got = r;
      done.Notify();
    });
    done.WaitForNotification();
    return std::make_pair(got, checkpoint);
  };
  auto [four, cp4] = fetch(4);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(*four, 2);
  EXPECT_EQ(cp4, Checkpoint(1));
  auto [all, cp6] = fetch(6);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, 6);
  EXPECT_EQ(cp6, Checkpoint(5));
  for (int b = 0; b < 6; ++b) {
    EXPECT_EQ(std::memcmp(reader_pool.block(into[static_cast<size_t>(b)]), writer_pool.block(blocks[static_cast<size_t>(b)]),
                          static_cast<size_t>(layout_.block_bytes())),
              0)
        << "block " << b;
  }
  // A chain nobody stored: nothing.
  std::vector<BlockKey> other = Chain(6);
  other[0] = BlockKey{1, 1};
  std::vector<uint8_t> checkpoint(static_cast<size_t>(layout_.state_bytes()));
  absl::Notification done;
  int64_t n = -1;
  (*reader)->Fetch(other, 6, into, checkpoint.data(), [&](absl::StatusOr<int64_t> r) {
    n = r.value_or(-2);
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(n, 0);
  EXPECT_EQ(service_->stats().fetches, 2);
}

TEST_F(KvStoreServiceTest, AWriterThatNeverCommitsLeavesNothingAndItsLatePutsLandNowhere) {
  v1::KvStoreReserveRequest request;
  request.set_layout_fingerprint(layout_.fingerprint());
  v1::KvStoreItem* item = request.add_items();
  item->set_key(Chain(1)[0].Bytes());
  item->set_tokens(engine::kBlockTokens);
  absl::StatusOr<v1::KvStoreReserveReply> reserved = service_->DoReserve(request);
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  ASSERT_EQ(reserved->offsets_size(), 1);
  const int64_t offset = reserved->offsets(0);
  ASSERT_GE(offset, 0);
  // Its lease (300 ms) lapses: the loan is revoked and the slot freed.
  for (int i = 0; i < 200 && store_->stats().write_lease_expiries == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(store_->stats().write_lease_expiries, 1);
  // A put under the revoked loan is refused; the store holds nothing for the key.
  engine::KvPool pool(layout_, 2);
  auto reg = worker_transport_->Register(pool.memory(), static_cast<size_t>(pool.memory_bytes()));
  ASSERT_TRUE(reg.ok());
  const int32_t b = *pool.Allocate();
  FillBlock(pool, b, 0);
  auto ep = worker_transport_->Connect(reserved->transport_address());
  ASSERT_TRUE(ep.ok());
  const transport::RemoteRegion region{reserved->blocks().address(), reserved->blocks().length(), reserved->blocks().key()};
  EXPECT_FALSE(transport::PutSync(**ep, pool.block(b), static_cast<size_t>(layout_.block_bytes()), region,
                                  static_cast<uint64_t>(offset))
                   .ok());
  EXPECT_EQ(store_->Find(Chain(1)).blocks, 0);
  v1::KvStoreCommitRequest commit;
  commit.set_reservation(reserved->reservation());
  EXPECT_EQ(service_->DoCommit(commit).status().code(), absl::StatusCode::kNotFound);
  // Bad input gets a clear error and the service goes on.
  v1::KvStoreLookupRequest bad;
  bad.add_keys("short");
  EXPECT_EQ(service_->DoLookup(bad).status().code(), absl::StatusCode::kInvalidArgument);
  request.set_layout_fingerprint(1);
  EXPECT_EQ(service_->DoReserve(request).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::kvstore
