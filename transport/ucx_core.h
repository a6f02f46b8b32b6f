// Internal to transport/: the UCX progress core behind UcxTransport (see ucx_transport.cc for the
// design: threading, ordering, failure and teardown). Split out so the core and the public
// wrappers are each one file of readable size.
#pragma once


#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <string_view>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "spdlog/spdlog.h"
#include "transport/task_thread.h"
#include "transport/transport.h"
#include "transport/ucx_wire.h"
#include "ucp/api/ucp.h"
#include "xxhash.h"


namespace strata::transport::internal_ucx {


using internal::FrameKind;
using internal::MessageHeader;
using internal::Task;
using internal::UcxError;

inline constexpr size_t kMaxInFlight = 8192;       // operations queued or in UCP, per transport
inline constexpr size_t kMaxMessage = 64 << 10;    // Send payloads, sent eagerly
inline constexpr unsigned kAmId = 0;               // the one UCX AM id (the caller's id is in the header)
inline constexpr size_t kMaxEarlyMessages = 1024;  // per stream, waiting for an earlier one
inline constexpr size_t kMaxRkeysPerEndpoint = 4096;
inline constexpr size_t kEarlyFlushBytes = 256 << 10;  // a PutMany this large is flushed at once
inline constexpr size_t kPutChunk = 64 << 10;          // bytes per kPutData message
inline constexpr int kSpinsBeforeSleep = 64;  // idle progress rounds before arming the worker
inline constexpr absl::Duration kCloseDeadline = absl::Seconds(10);
inline constexpr absl::Duration kConnectDeadline = absl::Seconds(30);

inline bool Fits(uint64_t offset, uint64_t len, uint64_t size) {
  return offset <= size && len <= size - offset;
}

// What a kPutData message carries of its region's key. As with UCX's rkeys, the key grants the
// whole registration (owners hand out sub-ranges of it, e.g. one state slot). With tcp every
// region's packed key is the same bytes, so there it only shows the sender was given a key of
// this transport; the receiver still writes nothing outside its registered memory.
inline uint64_t RegionKeyHash(const std::string& key) { return XXH64(key.data(), key.size(), 0); }

class UcxCore;
inline thread_local UcxCore* progress_core = nullptr;

// The progress thread's view of one connection. Only the progress thread touches it.
struct EpState {
  // A Send or Flush waiting for the ones before it (and, for a Send, for the puts before it).
  struct Ordered {
    bool is_flush = false;
    uint16_t id = 0;
    std::string payload;
    uint64_t put_epoch = 0;  // puts issued on the endpoint when it was called
    Completion done;
  };

  UcxCore* core = nullptr;
  uint64_t id = 0;
  ucp_ep_h ep = nullptr;
  std::shared_ptr<const std::string> name;             // "ucx peer <hash>", for errors and logs
  absl::Status error;                                  // once set, every operation fails with it
  absl::flat_hash_map<std::string, ucp_rkey_h> rkeys;  // framed key → unpacked rkey
  uint64_t puts_issued = 0;                            // count of puts issued (the put epoch)
  uint64_t puts_flushed = 0;  // every put up to this epoch is remotely complete
  uint64_t flush_target = 0;  // the highest epoch a flush in flight covers
  bool flush_wanted = false;  // puts await a flush the loop issues after this round
  std::deque<Ordered> ordered;
  // Puts done locally, completed once a flush shows them remotely complete.
  struct AwaitingPut {
    uint64_t epoch;
    Completion done;
  };
  std::vector<AwaitingPut> awaiting;
  // Puts as messages: the kPutFlush messages sent and not yet answered, in token order.
  struct AckRequest {
    uint64_t token;
    uint64_t epoch;   // the puts it covers
    Completion done;  // a Flush's, or empty
  };
  std::deque<AckRequest> ack_requests;
  uint64_t last_token = 0;
  uint32_t refusals_seen = 0;  // the peer's cumulative count of refused puts, as last answered
  uint64_t stream = 0;  // random; names this endpoint's message stream at the receiver
  uint64_t next_seq = 0;
  Completion connected;    // Connect's handshake, until the peer's reply arrives
  bool closing = false;    // ucp_ep_close_nbx in progress
  bool user_gone = false;  // the Endpoint object was destroyed
};

// One operation with (possibly) a UCP request in flight.
struct Op {
  UcxCore* core = nullptr;
  const char* verb = "";
  std::shared_ptr<const std::string> peer;
  Completion done;                         // may be empty (internal operations)
  std::function<void(ucs_status_t)> then;  // progress-thread continuation, before `done`
  MessageHeader header;
  internal::PutHeader put;  // a kPutData message's header
  std::string payload;
  bool finished = false;
};

class UcxCore {
 public:
  static absl::StatusOr<std::shared_ptr<UcxCore>> Create(const UcxOptions& options);
  ~UcxCore();

  UcxCore(const UcxCore&) = delete;
  UcxCore& operator=(const UcxCore&) = delete;

  const std::string& address() const { return address_; }
  bool OnProgressThread() const { return progress_core == this; }

  // Any thread. Runs `run(done)` on the progress thread; `done` is called exactly once. Blocks
  // while kMaxInFlight operations are in flight, unless called on the progress thread.
  void Submit(std::function<void(Completion)> run, Completion done);
  // Any thread. Runs `run` on the progress thread unless the transport stops first.
  void SubmitInternal(std::function<void()> run);
  // Any thread. Runs `fn` on the progress thread (inline when called there) and returns its result.
  absl::Status RunSync(const std::function<absl::Status()>& fn);
  // Not on the progress thread. Fails what is queued, tears UCP down (but the context) and joins.
  void Stop();

  void SetHandler(uint16_t id, Transport::MessageHandler handler) {
    absl::MutexLock lock(&handlers_mu_);
    handlers_[id] = std::make_shared<Transport::MessageHandler>(std::move(handler));
  }

  absl::StatusOr<uint64_t> CreateEndpoint(std::string_view worker_address,
                                          std::shared_ptr<const std::string> name);
  // Registers [base, base + len), or with base == nullptr allocates len bytes (*base is set).
  absl::Status Map(void** base, size_t len, ucp_mem_h* memh, std::string* packed_key);
  void Unmap(ucp_mem_h memh);

  // Progress thread only.
  void DoPuts(uint64_t ep_id, absl::Span<const PutSpan> spans, const RemoteRegion& remote,
              Completion done);
  void DoGet(uint64_t ep_id, void* local, size_t len, const RemoteRegion& remote, uint64_t offset,
             Completion done);
  void DoOrdered(uint64_t ep_id, EpState::Ordered item);
  void ReleaseEndpoint(uint64_t ep_id);

 private:
  UcxCore() = default;

  void Loop();
  void Wake();
  void Teardown();

  EpState* FindEp(uint64_t id) {
    auto it = eps_.find(id);
    return it == eps_.end() ? nullptr : it->second.get();
  }
  absl::StatusOr<ucp_rkey_h> Rkey(EpState& s, const std::string& key);
  absl::Status SendPutData(EpState& s, const void* data, size_t len, uint64_t address,
                           uint64_t key_hash);
  void IssueAckRequest(EpState& s, uint64_t epoch, Completion done);
  void Acked(EpState& s, uint64_t token, uint32_t refusals);
  void AnswerAck(ucp_ep_h reply_ep, uint64_t stream, uint64_t token, uint32_t refusals);
  std::function<void(ucs_status_t)> FailEndpointOnError(const EpState& s, const char* verb);
  // Copies a kPutData payload into registered memory; false (nothing written) if the range is
  // not inside one registered region or the key does not match it.
  bool WriteRegion(uint64_t address, uint64_t key_hash, std::string_view bytes);

 public:
  // Grants (Transport::GrantAccess): a region entry of their own, with its key and ranges; puts
  // as messages under it are applied only while it exists. AddGrant returns the grant's key.
  absl::StatusOr<std::string> AddGrant(const RemoteRegion& registration, absl::Span<const ByteRange> ranges);
  void RemoveGrant(const std::string& key);
  bool message_puts() const { return message_puts_; }

 private:
  static absl::Status CheckTransfer(const char* verb, const EpState& s, size_t len,
                                    const RemoteRegion& remote, uint64_t offset);
  void DestroyRkeys(EpState& s);

  Op* NewOp(const char* verb, const EpState& s, Completion done);
  static ucp_request_param_t Param(Op* op);
  void Track(Op* op, ucs_status_ptr_t request);
  void FinishOp(Op* op, ucs_status_t status);
  static void OnOpDone(void* request, ucs_status_t status, void* user_data);

  void PumpOrdered(EpState& s);
  void IssueFlush(EpState& s, uint64_t epoch, Completion done);
  void IssueMessage(EpState& s, uint16_t id, uint16_t flags, std::string payload, Completion done);
  void IssueHello(EpState& s);
  void Connected(EpState& s, absl::Status status);
  void AnswerHello(const MessageHeader& hello, ucp_ep_h reply_ep);
  void FailOrdered(EpState& s, const absl::Status& status);
  void AwaitFlush(EpState& s, uint64_t epoch, Completion done);
  void CompleteAwaiting(EpState& s);
  bool IssueWantedFlushes();  // whether there were any
  void MaybeClose(EpState& s);
  void StartClose(EpState& s, bool force);
  void CloseNow(EpState& s, bool force);
  void MaybeErase(EpState& s);
  void EraseReleased();
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnClosed(void* request, ucs_status_t status, void* user_data);
  void HandleFailedEndpoints();

  static ucs_status_t OnMessage(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  // What travels with a message besides its header and payload.
  struct Extra {
    uint64_t address = 0;  // kPutData: PutHeader::address and key_hash
    uint64_t key_hash = 0;
    ucp_ep_h reply_ep = nullptr;  // kPutFlush: where the kPutAck goes
  };
  void Receive(const MessageHeader& header, std::string_view payload, const Extra& extra);
  void Dispatch(const MessageHeader& header, std::string_view payload, const Extra& extra);

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;  // destroyed by Teardown, on the progress thread
  int worker_fd_ = -1;
  int wake_fd_ = -1;
  std::string address_;
  bool peer_failure_detection_ = true;
  bool message_puts_ = false;  // UcxOptions::put_path resolved
  std::thread thread_;

  absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool sleeping_ ABSL_GUARDED_BY(mu_) = false;
  bool worker_gone_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex context_mu_;  // ucp_mem_unmap after the progress thread is gone

  // Registered regions, for puts as messages (they may overlap or share a base).
  struct Region {
    uint64_t address;
    uint64_t length;
    uint64_t key_hash;  // RegionKeyHash of its framed key
    ucp_mem_h memh;     // null for a grant
    std::vector<ByteRange> granted;  // a grant's ranges, relative to address
  };
  absl::Mutex regions_mu_;
  std::vector<Region> regions_ ABSL_GUARDED_BY(regions_mu_);

  absl::Mutex handlers_mu_;
  absl::flat_hash_map<uint16_t, std::shared_ptr<Transport::MessageHandler>> handlers_
      ABSL_GUARDED_BY(handlers_mu_);

  // Progress thread only.
  struct Early {
    MessageHeader header;
    Extra extra;
    std::string payload;
  };
  struct Stream {
    uint64_t next = 0;
    std::map<uint64_t, Early> early;
    uint32_t refusals = 0;  // kPutData refused (or lost) so far, sent with every kPutAck
  };
  absl::flat_hash_map<uint64_t, std::unique_ptr<EpState>> eps_;
  absl::flat_hash_set<Op*> ops_;  // with a UCP request in flight
  std::vector<uint64_t> failed_eps_;
  std::vector<uint64_t> erase_eps_;   // released and closed; erased by the loop
  std::vector<uint64_t> want_flush_;  // endpoints with puts awaiting a flush
  absl::flat_hash_map<uint64_t, Stream> streams_;
  absl::flat_hash_map<uint64_t, uint64_t> hello_streams_;  // stream → endpoint, handshake pending
  absl::flat_hash_map<uint64_t, uint64_t> ep_streams_;     // stream → endpoint, for kPutAck
  uint64_t next_ep_id_ = 1;
  bool tearing_down_ = false;
  absl::BitGen bitgen_;
};

// ---- setup and teardown -------------------------------------------------------------------------

}  // namespace strata::transport::internal_ucx
