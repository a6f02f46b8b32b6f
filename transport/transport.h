// The data plane between services (DESIGN.md §4): one-sided puts and gets into memory a peer has
// registered (KV blocks, expert activations) and small active messages. A peer is addressed by
// the opaque string its Transport::address() returns; that string, and the RemoteRegion of a
// registration, travel between services over gRPC (as `bytes`).
//
// Implementations: UcxTransport (UCP: shm/cma on one host, tcp or verbs across hosts),
// InProcTransport (same process, for hermetic tests and the colocated server) and FaultyTransport
// (wraps another and drops, delays or fails operations, for reliability tests).
//
// Threading: every method may be called from any thread. Completions and message handlers run on
// the transport's progress thread: they must not block and must not wait on other transport
// operations. Each operation's completion is called exactly once, also when the transport or the
// endpoint is destroyed first (then with an error).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "absl/time/time.h"

namespace strata::transport {

// What a peer needs to write into or read from a registered region. `key` is the packed remote
// key (UCX rkey) or the implementation's equivalent; it is opaque to callers.
struct RemoteRegion {
  uint64_t address = 0;
  uint64_t length = 0;
  std::string key;
};

// A registered local region. Unregisters on destruction; operations in flight on it must have
// completed first.
class MemoryRegistration {
 public:
  virtual ~MemoryRegistration() = default;
  virtual RemoteRegion Describe() const = 0;
};

// Byte ranges of a registration, relative to its start.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Part of a registered region lent to peers for one transfer (a decode worker's KV blocks and
// state slot for one request). Peers put into it through Describe() (the registration's address
// space, a key of the grant's own); a put outside the granted ranges is refused. Destroying the
// grant revokes it: once the destructor returns, no put under it lands any more — so the memory
// can be reused at once even if a cancelled, hung or dead sender still has puts on their way.
// That holds where the receiver applies puts itself (enforced(): in-process, and UCX's message
// puts); one-sided RMA bypasses the receiver, and there a revoked grant is only a promise: the
// caller must wait for the sender to settle (or quarantine the memory) before reusing it.
class Grant {
 public:
  virtual ~Grant() = default;
  virtual RemoteRegion Describe() const = 0;
  virtual bool enforced() const = 0;
};

using Completion = std::function<void(absl::Status)>;

// One piece of a PutMany: `len` bytes from `local` to the remote region at `remote_offset`.
struct PutSpan {
  const void* local = nullptr;
  size_t len = 0;
  uint64_t remote_offset = 0;
};

// A connection to one peer. Operations on one endpoint are issued in order; a Put's completion
// means the bytes are in the peer's memory (so the peer may be told by any channel once it has
// run), and a message sent after a Put is delivered after the Put's bytes landed.
class Endpoint {
 public:
  virtual ~Endpoint() = default;

  // Copies `len` bytes from `local` (inside a region registered with this transport) to
  // `remote.address + remote_offset`. Fails (through `done`) if the range leaves `remote`.
  virtual void Put(const void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset, Completion done) = 0;
  virtual void Get(void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset, Completion done) = 0;
  // The puts of `spans` into `remote`, issued in order as one operation (how a worker ships a
  // layer's KV pages): `done` is called once, when every byte has landed, or with the first
  // error (after the puts already issued have finished with the local memory). Checks every span
  // before issuing any: a span that leaves `remote` fails the whole call and nothing is put.
  // `spans` need not outlive the call. The default issues one Put per span.
  virtual void PutMany(absl::Span<const PutSpan> spans, const RemoteRegion& remote, Completion done);
  // Delivers `payload` (small: ≤ 64 KiB) to the peer's handler for `id`, after every Put issued
  // before it on this endpoint has landed.
  virtual void Send(uint16_t id, std::string_view payload, Completion done) = 0;
  // Completes when every operation issued before it on this endpoint has completed remotely.
  virtual void Flush(Completion done) = 0;
  virtual const std::string& peer() const = 0;
};

class Transport {
 public:
  using MessageHandler = std::function<void(std::string_view payload)>;

  virtual ~Transport() = default;

  virtual std::string name() const = 0;  // "ucx", "inproc", "faulty(ucx)"
  // This transport's address for peers' Connect().
  virtual std::string address() const = 0;
  virtual absl::StatusOr<std::unique_ptr<MemoryRegistration>> Register(void* base, size_t len) = 0;
  // Allocates `len` bytes (zeroed, 64-byte aligned), registered with this transport; the memory
  // is at Describe().address and lives as long as the registration. Peers on the same host put
  // into it fastest: UCX places it in shared memory that they map directly (memory registered with
  // Register() is reached through tcp or emulated puts there). The default allocates on the heap
  // and registers it.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegistration>> Allocate(size_t len);
  // Grants `ranges` of `registration` (made by this transport, outliving the grant) to peers.
  // InvalidArgument for a range outside the registration or an empty list. The default grants the
  // whole registration, unenforced.
  virtual absl::StatusOr<std::unique_ptr<Grant>> GrantAccess(const MemoryRegistration& registration,
                                                             absl::Span<const ByteRange> ranges);
  virtual absl::StatusOr<std::shared_ptr<Endpoint>> Connect(const std::string& peer_address) = 0;
  // Handler for messages with `id`; set before peers send them. Runs on the progress thread.
  virtual void SetMessageHandler(uint16_t id, MessageHandler handler) = 0;
};

namespace internal {
// InvalidArgument unless `ranges` is non-empty and each range lies inside `region`'s length.
absl::Status CheckGrantRanges(const RemoteRegion& region, absl::Span<const ByteRange> ranges);
// Whether [offset, offset + len) lies inside one of `ranges` (each absolute: offset = address).
bool InsideOneRange(absl::Span<const ByteRange> ranges, uint64_t address, uint64_t len);
}  // namespace internal

// Blocking helpers for callers that are not on the progress thread.
absl::Status PutSync(Endpoint& ep, const void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset);
absl::Status GetSync(Endpoint& ep, void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset);
absl::Status PutManySync(Endpoint& ep, absl::Span<const PutSpan> spans, const RemoteRegion& remote);
absl::Status FlushSync(Endpoint& ep);

struct UcxOptions {
  // UCX_TLS-style list ("" = UCX's default choice, e.g. "tcp", "shm,cma", "rc,sm").
  std::string transports;
  // The host (address or name) this service was configured on: UCX uses only the network device
  // that holds its address (UCX_NET_DEVICES; see net_devices.h), so the KV-transfer listeners
  // bind there and nowhere else. "" or a wildcard (0.0.0.0): every device. An explicit
  // $UCX_NET_DEVICES wins.
  std::string host;
  // Endpoints report a vanished peer as errors on its operations (UCP_ERR_HANDLING_MODE_PEER).
  // UCX 1.13 offers that only on transports with peer-failure support (tcp, verbs), not on shared
  // memory or cma: with "shm,cma" it must be false, and then a peer that dies may leave operations
  // to it hanging (or UCX may abort), so use it only where peers live and die together.
  bool peer_failure_detection = true;
  // How puts travel. kRma: UCX RMA (ucp_put_nbx), one-sided where the fabric has RDMA or shared
  // memory. kMessages: our own active messages, which the receiver's progress thread copies into
  // its registered memory after checking the range and the region's key, acknowledged per
  // PutMany/Flush. Over tcp UCX emulates RMA with messages of its own whose acknowledgements abort
  // the receiving process when the sender dies mid-transfer (UCX 1.13, openucx/ucx#7274); ours
  // fail like any other operation to a dead peer. kAuto: kRma where UCX can put over RDMA (the
  // host has an InfiniBand/RoCE device and `transports`, or else $UCX_TLS, allows rc, dc, ud, ib,
  // mlx5, … — "" and "all" do) or where peer_failure_detection is off (shm/cma), else kMessages.
  enum class PutPath { kAuto, kRma, kMessages };
  PutPath put_path = PutPath::kAuto;
};
absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const UcxOptions& options);

// In-process transports see each other through a fabric (addresses are names within it).
class InProcFabric;
std::shared_ptr<InProcFabric> MakeInProcFabric();
std::unique_ptr<Transport> MakeInProcTransport(std::shared_ptr<InProcFabric> fabric);

struct FaultOptions {
  double drop_probability = 0;       // operations not performed; their completion reports Unavailable("dropped")
  absl::Duration delay;              // added before each operation is issued (off the caller's thread)
  int64_t fail_after = -1;           // operations after the first N fail with Unavailable (-1: never)
  uint64_t seed = 1;
};
std::unique_ptr<Transport> MakeFaultyTransport(std::unique_ptr<Transport> inner, const FaultOptions& options);

}  // namespace strata::transport
