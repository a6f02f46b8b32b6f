// The UCX core's set-up, progress loop, queueing, endpoints, memory registration and close
// (ucx_ops.cc: the operations and the receiving side).
#include "transport/ucx_core.h"

#include "transport/net_devices.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace strata::transport::internal_ucx {
namespace {

// Whether a UCX_TLS list names a transport with hardware RDMA (InfiniBand / RoCE verbs, mlx5,
// Cray uGNI, rdmacm), where UCX's puts are one-sided and need no emulation.
bool NamesRdmaTransport(const std::string& transports) {
  for (absl::string_view name : absl::StrSplit(transports, ',', absl::SkipWhitespace())) {
    for (absl::string_view prefix : {"rc", "dc", "ud", "ib", "mlx", "ugni", "gga", "rdma", "verbs"}) {
      if (absl::StartsWith(absl::StripAsciiWhitespace(name), prefix)) return true;
    }
  }
  return false;
}

// Whether UCX may pick hardware RDMA for puts here: the host has an RDMA device and the transport
// list (the options', else $UCX_TLS) leaves UCX free to use it ("", "all", an exclusion list
// "^…" that does not exclude every RDMA transport) or names one.
bool RdmaPossible(const std::string& option) {
  std::string tls = option;
  if (tls.empty()) {
    const char* env = std::getenv("UCX_TLS");
    tls = env != nullptr ? env : "";
  }
  std::error_code error;
  const bool device = std::filesystem::exists("/sys/class/infiniband", error) &&
                      !std::filesystem::is_empty("/sys/class/infiniband", error);
  if (!device) return false;
  if (tls.empty() || tls == "all") return true;
  if (tls[0] == '^') return !NamesRdmaTransport(tls.substr(1));
  return NamesRdmaTransport(tls);
}

}  // namespace

absl::StatusOr<std::shared_ptr<UcxCore>> UcxCore::Create(const UcxOptions& options) {
  std::shared_ptr<UcxCore> core(new UcxCore());
  core->peer_failure_detection_ = options.peer_failure_detection;
  core->message_puts_ = options.put_path == UcxOptions::PutPath::kMessages ||
                        (options.put_path == UcxOptions::PutPath::kAuto &&
                         options.peer_failure_detection && !RdmaPossible(options.transports));
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcxError("ucx: read UCX configuration", status);
  if (!options.transports.empty()) {
    status = ucp_config_modify(config, "TLS", options.transports.c_str());
    if (status != UCS_OK) {
      ucp_config_release(config);
      return UcxError(absl::StrCat("ucx: set transports (UCX_TLS) to \"", options.transports, "\""),
                      status);
    }
  }
  if (std::getenv("UCX_NET_DEVICES") == nullptr) {
    absl::StatusOr<std::string> devices = UcxNetDevicesFor(options.host);
    if (!devices.ok()) {
      ucp_config_release(config);
      return Annotate(devices.status(), "ucx");
    }
    if (!devices->empty()) {
      status = ucp_config_modify(config, "NET_DEVICES", devices->c_str());
      if (status != UCS_OK) {
        ucp_config_release(config);
        return UcxError(absl::StrCat("ucx: use the network devices \"", *devices, "\" of host ", options.host),
                        status);
      }
      spdlog::debug("ucx: host {} is on network device(s) {}", options.host, *devices);
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = "strata";
  status = ucp_init(&params, config, &core->context_);
  ucp_config_release(config);
  if (status != UCS_OK) {
    return UcxError(absl::StrCat("ucx: init with transports \"", options.transports, "\""), status);
  }

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  status = ucp_worker_create(core->context_, &worker_params, &core->worker_);
  if (status != UCS_OK) return UcxError("ucx: create worker", status);
  status = ucp_worker_get_efd(core->worker_, &core->worker_fd_);
  if (status != UCS_OK) return UcxError("ucx: get the worker's event fd", status);

  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  handler.id = kAmId;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  handler.cb = &UcxCore::OnMessage;
  handler.arg = core.get();
  status = ucp_worker_set_am_recv_handler(core->worker_, &handler);
  if (status != UCS_OK) return UcxError("ucx: set the message handler", status);

  ucp_address_t* address = nullptr;
  size_t address_len = 0;
  status = ucp_worker_get_address(core->worker_, &address, &address_len);
  if (status != UCS_OK) return UcxError("ucx: get the worker address", status);
  core->address_ = internal::Frame(FrameKind::kWorkerAddress, address, address_len);
  ucp_worker_release_address(core->worker_, address);

  core->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (core->wake_fd_ < 0)
    return absl::InternalError(absl::StrCat("ucx: eventfd: ", std::strerror(errno)));
  // The worker now belongs to the progress thread.
  core->thread_ = std::thread([c = core.get()] { c->Loop(); });
  return core;
}

UcxCore::~UcxCore() {
  if (thread_.joinable()) Stop();
  if (worker_ != nullptr) ucp_worker_destroy(worker_);  // Create() failed before the thread started
  if (context_ != nullptr) ucp_cleanup(context_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void UcxCore::Stop() {
  std::deque<Task> left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    left.swap(queue_);
  }
  for (Task& task : left)
    task.fail(absl::CancelledError("ucx transport destroyed with the operation in flight"));
  Wake();
  if (thread_.joinable()) thread_.join();
}

void UcxCore::Wake() {
  const uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable, which is all a wake needs.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

void UcxCore::Loop() {
  progress_core = this;
  int idle = 0;
  std::deque<Task> batch;  // reused: a fresh deque per round allocates
  for (;;) {
    batch.clear();
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      batch.swap(queue_);
      stopping = stopping_;
    }
    for (Task& task : batch) task.run();
    unsigned progressed = 0;
    while (ucp_worker_progress(worker_) != 0) ++progressed;
    if (IssueWantedFlushes()) ++progressed;
    HandleFailedEndpoints();
    EraseReleased();
    if (stopping) break;
    if (!batch.empty() || progressed > 0) {
      idle = 0;
      continue;
    }
    if (++idle < kSpinsBeforeSleep) continue;
    idle = 0;
    {
      absl::MutexLock lock(&mu_);
      if (!queue_.empty() || stopping_) continue;
      sleeping_ = true;
    }
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_OK) {
      pollfd fds[2] = {{.fd = worker_fd_, .events = POLLIN, .revents = 0},
                       {.fd = wake_fd_, .events = POLLIN, .revents = 0}};
      // The timeout is only a guard against a transport that misses a wake-up.
      poll(fds, 2, /*timeout_ms=*/1);
    } else if (armed != UCS_ERR_BUSY) {
      spdlog::warn("ucx: arm the worker: {}", ucs_status_string(armed));
    }
    {
      absl::MutexLock lock(&mu_);
      sleeping_ = false;
    }
    uint64_t count;
    [[maybe_unused]] ssize_t n = read(wake_fd_, &count, sizeof(count));
  }
  Teardown();
}

void UcxCore::Teardown() {
  tearing_down_ = true;
  const absl::Status gone =
      absl::CancelledError("ucx transport destroyed with the operation in flight");
  // Operations UCP already has are finished, not cut off: closing an endpoint in flush mode lets
  // them complete, and a peer is never left with half a transfer. (UCX 1.13.1 aborts a peer that
  // is still processing tcp-emulated puts when their sender's connection resets.) Endpoints that
  // failed, or do not finish within kCloseDeadline, are force-closed and UCP cancels what is left.
  for (auto& [id, s] : eps_) {
    FailOrdered(*s, gone);
    Connected(*s, gone);
    if (s->ep != nullptr && !s->closing) StartClose(*s, /*force=*/!s->error.ok());
  }
  const absl::Time deadline = absl::Now() + kCloseDeadline;
  auto closing = [this] {
    for (auto& [id, s] : eps_) {
      if (s->ep != nullptr) return true;
    }
    return false;
  };
  while (closing() && absl::Now() < deadline) {
    ucp_worker_progress(worker_);
    IssueWantedFlushes();
    HandleFailedEndpoints();
  }
  if (closing()) {
    spdlog::warn("ucx: endpoints still closing after {}; destroying the worker",
                 absl::FormatDuration(kCloseDeadline));
  }
  // Anything UCP has not completed is failed here, and its memory kept until the worker is gone
  // in case UCP calls back while destroying.
  for (Op* op : ops_) FinishOp(op, UCS_ERR_CANCELED);
  ucp_worker_destroy(worker_);
  worker_ = nullptr;
  for (Op* op : ops_) delete op;
  ops_.clear();
  eps_.clear();
  streams_.clear();
  absl::MutexLock lock(&mu_);
  worker_gone_ = true;
}

// ---- queueing -----------------------------------------------------------------------------------

void UcxCore::Submit(std::function<void(Completion)> run, Completion done) {
  bool accepted = false;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (!OnProgressThread()) {
      auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || in_flight_ < kMaxInFlight;
      };
      mu_.Await(absl::Condition(&room));
    }
    if (!stopping_) {
      ++in_flight_;
      Completion counted = [this, done](absl::Status status) {
        {
          absl::MutexLock lock(&mu_);
          --in_flight_;
        }
        done(std::move(status));
      };
      queue_.push_back({.run = [run = std::move(run), counted] { run(counted); }, .fail = counted});
      accepted = true;
      wake = sleeping_;
    }
  }
  if (!accepted) return done(absl::CancelledError("ucx transport is shut down"));
  if (wake) Wake();
}

void UcxCore::SubmitInternal(std::function<void()> run) {
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    queue_.push_back({.run = std::move(run), .fail = [](absl::Status) {}});
    wake = sleeping_;
  }
  if (wake) Wake();
}

absl::Status UcxCore::RunSync(const std::function<absl::Status()>& fn) {
  if (OnProgressThread()) return fn();
  absl::Notification done;
  absl::Status result;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("ucx transport is shut down");
    queue_.push_back({.run =
                          [&] {
                            result = fn();
                            done.Notify();
                          },
                      .fail =
                          [&](absl::Status status) {
                            result = std::move(status);
                            done.Notify();
                          }});
    wake = sleeping_;
  }
  if (wake) Wake();
  done.WaitForNotification();
  return result;
}

// ---- endpoints and memory -----------------------------------------------------------------------

absl::StatusOr<uint64_t> UcxCore::CreateEndpoint(std::string_view worker_address,
                                                 std::shared_ptr<const std::string> name) {
  // Connect waits for a handshake: a hello message the peer answers on its reply endpoint. Besides
  // telling the caller at once about a peer that is not there, this gets both sides through UCX's
  // wire-up before Connect returns. That matters with UCX 1.13.1, which aborts the process on an
  // assertion when a peer vanishes while a wire-up reply to it is still queued
  // (openucx/ucx#8175, fixed after 1.13): the peer's answer leaves after its wire-up reply.
  const bool wait = !OnProgressThread();
  struct Handshake {
    absl::Notification done;
    absl::Status status;
  };
  auto handshake = std::make_shared<Handshake>();
  uint64_t id = 0;
  STRATA_RETURN_IF_ERROR(RunSync([&]() -> absl::Status {
    auto s = std::make_unique<EpState>();
    s->core = this;
    s->id = next_ep_id_++;
    s->name = name;
    s->stream = absl::Uniform<uint64_t>(bitgen_);
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
    if (peer_failure_detection_) {
      params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      params.err_handler.cb = &UcxCore::OnEpError;
      params.err_handler.arg = s.get();
    } else {
      params.field_mask &= ~(UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER);
    }
    const ucs_status_t status = ucp_ep_create(worker_, &params, &s->ep);
    if (status != UCS_OK) return UcxError(absl::StrCat("connect to ", *name), status);
    id = s->id;
    EpState& state = *s;
    eps_[id] = std::move(s);
    hello_streams_[state.stream] = id;
    ep_streams_[state.stream] = id;
    state.connected = [handshake](absl::Status status) {
      handshake->status = std::move(status);
      handshake->done.Notify();
    };
    IssueHello(state);
    return absl::OkStatus();
  }));
  if (!wait) return id;
  absl::Status status = handshake->done.WaitForNotificationWithTimeout(kConnectDeadline)
                            ? handshake->status
                            : absl::DeadlineExceededError(absl::StrCat(
                                  "no answer within ", absl::FormatDuration(kConnectDeadline)));
  if (!status.ok()) {
    SubmitInternal([this, id] { ReleaseEndpoint(id); });
    return Annotate(status, absl::StrCat("connect to ", *name));
  }
  return id;
}

void UcxCore::IssueHello(EpState& s) {
  Op* op = NewOp("hello", s, [this, id = s.id](absl::Status status) {
    if (status.ok()) return;
    if (EpState* s = FindEp(id); s != nullptr) Connected(*s, std::move(status));
  });
  op->header = MessageHeader{.stream = s.stream, .flags = internal::kHello};
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  Track(op, ucp_am_send_nbx(s.ep, kAmId, &op->header, sizeof(op->header), nullptr, 0, &param));
}

void UcxCore::Connected(EpState& s, absl::Status status) {
  hello_streams_.erase(s.stream);
  Completion connected = std::move(s.connected);
  s.connected = nullptr;
  if (connected != nullptr) connected(std::move(status));
}

absl::Status UcxCore::Map(void** base, size_t len, ucp_mem_h* memh, std::string* packed_key) {
  return RunSync([&]() -> absl::Status {
    const bool allocate = *base == nullptr;
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    params.address = *base;
    params.length = len;
    if (allocate) {
      params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
      params.flags = UCP_MEM_MAP_ALLOCATE;
    }
    ucs_status_t status = ucp_mem_map(context_, &params, memh);
    if (status != UCS_OK) {
      return UcxError(allocate ? absl::StrFormat("allocate %d registered bytes", len)
                               : absl::StrFormat("register %d bytes at %p", len, *base),
                      status);
    }
    if (allocate) {
      ucp_mem_attr_t attr{};
      attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
      status = ucp_mem_query(*memh, &attr);
      if (status != UCS_OK) {
        ucp_mem_unmap(context_, *memh);
        return UcxError("query allocated memory", status);
      }
      *base = attr.address;
    }
    void* buffer = nullptr;
    size_t size = 0;
    status = ucp_rkey_pack(context_, *memh, &buffer, &size);
    if (status != UCS_OK) {
      ucp_mem_unmap(context_, *memh);
      return UcxError("pack the remote key of a registration", status);
    }
    *packed_key = internal::Frame(FrameKind::kRemoteKey, buffer, size);
    ucp_rkey_buffer_release(buffer);
    absl::MutexLock lock(&regions_mu_);
    regions_.push_back(
        Region{reinterpret_cast<uintptr_t>(*base), len, RegionKeyHash(*packed_key), *memh});
    return absl::OkStatus();
  });
}

void UcxCore::Unmap(ucp_mem_h memh) {
  {
    absl::MutexLock lock(&regions_mu_);
    std::erase_if(regions_, [memh](const Region& r) { return r.memh == memh; });
  }
  auto unmap = [&]() -> absl::Status {
    const ucs_status_t status = ucp_mem_unmap(context_, memh);
    if (status != UCS_OK) spdlog::warn("ucx: unregister memory: {}", ucs_status_string(status));
    return absl::OkStatus();
  };
  if (RunSync(unmap).ok()) return;
  // The transport is stopping: wait until the worker is gone, then only the context is left.
  {
    absl::MutexLock lock(&mu_);
    auto gone = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return worker_gone_; };
    mu_.Await(absl::Condition(&gone));
  }
  absl::MutexLock lock(&context_mu_);
  unmap().IgnoreError();
}

absl::StatusOr<ucp_rkey_h> UcxCore::Rkey(EpState& s, const std::string& framed) {
  // A grant's key carries its registration's key: RMA unpacks that one (once per registration).
  std::string key = framed;
  if (auto grant = internal::Unframe(FrameKind::kGrantKey, framed, "grant key");
      grant.ok() && grant->size() > internal::kGrantTokenBytes) {
    key = std::string(grant->substr(0, grant->size() - internal::kGrantTokenBytes));
  }
  auto it = s.rkeys.find(key);
  if (it != s.rkeys.end()) return it->second;
  STRATA_ASSIGN_OR_RETURN(std::string_view packed,
                          internal::Unframe(FrameKind::kRemoteKey, key, "remote region key"));
  // Unpacked keys live as long as the endpoint (UCP forbids destroying one with operations on it
  // in flight); a peer has few registrations, so this bound is never reached by honest use.
  if (s.rkeys.size() >= kMaxRkeysPerEndpoint) {
    return absl::ResourceExhaustedError(
        absl::StrCat("over ", kMaxRkeysPerEndpoint,
                     " distinct remote regions used on the endpoint to ", *s.name));
  }
  ucp_rkey_h rkey = nullptr;
  const ucs_status_t status = ucp_ep_rkey_unpack(s.ep, packed.data(), &rkey);
  if (status != UCS_OK) return UcxError(absl::StrCat("unpack a remote key of ", *s.name), status);
  s.rkeys.emplace(key, rkey);
  return rkey;
}

void UcxCore::DestroyRkeys(EpState& s) {
  for (auto& [key, rkey] : s.rkeys) ucp_rkey_destroy(rkey);
  s.rkeys.clear();
}

// ---- endpoint failure and close -----------------------------------------------------------------

void UcxCore::OnEpError(void* arg, ucp_ep_h, ucs_status_t status) {
  EpState* s = static_cast<EpState*>(arg);
  if (s->error.ok()) s->error = UcxError(*s->name, status);
  spdlog::warn("ucx: endpoint to {} failed: {}", *s->name, ucs_status_string(status));
  // Closing here, inside UCX's callback, is not allowed; the loop does it after progress.
  s->core->failed_eps_.push_back(s->id);
}

void UcxCore::HandleFailedEndpoints() {
  std::vector<uint64_t> failed;
  failed.swap(failed_eps_);
  for (uint64_t id : failed) {
    EpState* s = FindEp(id);
    if (s == nullptr) continue;
    FailOrdered(*s, s->error);
    Connected(*s, s->error);
    if (s->ep != nullptr && !s->closing) StartClose(*s, /*force=*/true);
  }
}

void UcxCore::ReleaseEndpoint(uint64_t ep_id) {
  EpState* s = FindEp(ep_id);
  if (s == nullptr) return;
  s->user_gone = true;
  Connected(*s, absl::CancelledError("connect: the endpoint was released"));
  MaybeClose(*s);
}

// Closes an endpoint its owner released once its queued Sends/Flushes have left, telling the peer
// its message stream ended so the peer can forget it.
void UcxCore::MaybeClose(EpState& s) {
  if (!s.user_gone || !s.ordered.empty() || s.closing || tearing_down_) return;
  if (s.ep == nullptr) return MaybeErase(s);
  // Puts as messages are done only when the peer answers: close after that (the close's own
  // flush would only say the messages left).
  if (message_puts_ && s.error.ok() && (!s.awaiting.empty() || !s.ack_requests.empty())) {
    if (s.flush_target < s.puts_issued) IssueFlush(s, s.puts_issued, nullptr);
    return;
  }
  if (s.error.ok() && s.next_seq > 0)
    IssueMessage(s, 0, internal::kEndOfStream, std::string(), nullptr);
  StartClose(s, /*force=*/!s.error.ok());
}

// An endpoint is flushed before it is closed: UCP requires its rkeys to be destroyed after the
// operations using them are flushed and before the endpoint goes. A failed endpoint is closed at
// once with force (UCP cancels what it still has).
void UcxCore::StartClose(EpState& s, bool force) {
  s.closing = true;
  if (force) return CloseNow(s, /*force=*/true);
  Op* op = NewOp("close", s, nullptr);
  op->then = [this, id = s.id, epoch = s.puts_issued](ucs_status_t status) {
    EpState* s = FindEp(id);
    if (s == nullptr || s->ep == nullptr) return;
    if (status == UCS_OK && !message_puts_) {  // RMA: the flush means the puts landed
      s->puts_flushed = std::max(s->puts_flushed, epoch);
      CompleteAwaiting(*s);
    }
    CloseNow(*s, /*force=*/status != UCS_OK || !s->error.ok());
  };
  const ucp_request_param_t param = Param(op);
  Track(op, ucp_ep_flush_nbx(s.ep, &param));  // may close (and erase) `s` before it returns
}

void UcxCore::CloseNow(EpState& s, bool force) {
  FailOrdered(s, s.error.ok()
                     ? absl::CancelledError(absl::StrCat("the endpoint to ", *s.name, " closed"))
                     : s.error);
  DestroyRkeys(s);
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &UcxCore::OnClosed;
  param.user_data = &s;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t request = ucp_ep_close_nbx(s.ep, &param);
  if (request == nullptr || UCS_PTR_IS_ERR(request)) {
    s.ep = nullptr;
    s.closing = false;
    MaybeErase(s);
  }
}

void UcxCore::OnClosed(void* request, ucs_status_t, void* user_data) {
  EpState* s = static_cast<EpState*>(user_data);
  s->ep = nullptr;
  s->closing = false;
  ucp_request_free(request);
  s->core->MaybeErase(*s);
}

// Erasing waits for the loop: `s` may be in use further up the stack (a completion that ran
// inside PumpOrdered, say).
void UcxCore::MaybeErase(EpState& s) {
  if (tearing_down_ || !s.user_gone || s.ep != nullptr) return;
  erase_eps_.push_back(s.id);
}

void UcxCore::EraseReleased() {
  std::vector<uint64_t> ids;
  ids.swap(erase_eps_);
  for (uint64_t id : ids) {
    if (EpState* s = FindEp(id); s != nullptr) ep_streams_.erase(s->stream);
    eps_.erase(id);
  }
}

}  // namespace strata::transport::internal_ucx
