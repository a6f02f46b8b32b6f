#include "transport/ucx_core.h"

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

// What a kPutData message carries of its region's key. As with UCX's rkeys, the key grants the
// whole registration (owners hand out sub-ranges of it, e.g. one state slot). With tcp every
// region's packed key is the same bytes, so there it only shows the sender was given a key of
// this transport; the receiver still writes nothing outside its registered memory.
uint64_t RegionKeyHash(const std::string& key) { return XXH64(key.data(), key.size(), 0); }

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

absl::StatusOr<ucp_rkey_h> UcxCore::Rkey(EpState& s, const std::string& key) {
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

// ---- operations ---------------------------------------------------------------------------------

Op* UcxCore::NewOp(const char* verb, const EpState& s, Completion done) {
  Op* op = new Op;
  op->core = this;
  op->verb = verb;
  op->peer = s.name;
  op->done = std::move(done);
  return op;
}

ucp_request_param_t UcxCore::Param(Op* op) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxCore::OnOpDone;
  param.user_data = op;
  return param;
}

void UcxCore::Track(Op* op, ucs_status_ptr_t request) {
  if (request == nullptr || UCS_PTR_IS_ERR(request)) {
    FinishOp(op, UCS_PTR_STATUS(request));
    delete op;
    return;
  }
  ops_.insert(op);  // UCP calls OnOpDone from ucp_worker_progress
}

void UcxCore::FinishOp(Op* op, ucs_status_t status) {
  if (op->finished) return;
  op->finished = true;
  if (op->then) op->then(status);
  if (op->done) op->done(UcxError(absl::StrCat(op->verb, " to ", *op->peer), status));
}

void UcxCore::OnOpDone(void* request, ucs_status_t status, void* user_data) {
  Op* op = static_cast<Op*>(user_data);
  UcxCore* core = op->core;
  core->ops_.erase(op);
  core->FinishOp(op, status);
  ucp_request_free(request);
  delete op;
}

// The checks a transfer of `len` bytes at `offset` into `remote` must pass before it is issued.
absl::Status UcxCore::CheckTransfer(const char* verb, const EpState& s, size_t len,
                                    const RemoteRegion& remote, uint64_t offset) {
  if (!s.error.ok()) return s.error;
  if (!Fits(offset, len, remote.length)) {
    return absl::OutOfRangeError(
        absl::StrFormat("%s of %d bytes at offset %d leaves the remote region of %d bytes", verb,
                        len, offset, remote.length));
  }
  return absl::OkStatus();
}

void UcxCore::DoGet(uint64_t ep_id, void* local, size_t len, const RemoteRegion& remote,
                    uint64_t offset, Completion done) {
  EpState* s = FindEp(ep_id);
  if (s == nullptr) return done(absl::InternalError("get: unknown endpoint"));
  if (absl::Status ok = CheckTransfer("get", *s, len, remote, offset); !ok.ok()) return done(ok);
  if (len == 0) return done(absl::OkStatus());
  absl::StatusOr<ucp_rkey_h> rkey = Rkey(*s, remote.key);
  if (!rkey.ok()) return done(Annotate(rkey.status(), "get"));
  Op* op = NewOp("get", *s, std::move(done));
  const ucp_request_param_t param = Param(op);
  Track(op, ucp_get_nbx(s->ep, local, len, remote.address + offset, *rkey, &param));
}

// UCP completes a put when the local buffer may be reused; the caller's completion waits for a
// flush that covers it, so it means what Endpoint promises: the bytes are in the peer's memory.
// Since that flush is the completion, the puts themselves need none: each request is released
// as soon as it is issued (UCP still finishes it), and the flush reports a put that failed (the
// endpoint fails). One flush covers every put issued before it, so a stream of puts needs about
// one per loop round, and a PutMany one in all.
void UcxCore::DoPuts(uint64_t ep_id, absl::Span<const PutSpan> spans, const RemoteRegion& remote,
                     Completion done) {
  EpState* s = FindEp(ep_id);
  if (s == nullptr) return done(absl::InternalError("put: unknown endpoint"));
  for (const PutSpan& span : spans) {
    if (absl::Status ok = CheckTransfer("put", *s, span.len, remote, span.remote_offset);
        !ok.ok()) {
      return done(ok);
    }
  }
  absl::Status error;
  size_t bytes = 0;
  if (message_puts_) {
    // As kPutData messages of at most kPutChunk bytes; the flush is a kPutFlush the peer answers.
    if (absl::Status framed =
            internal::Unframe(FrameKind::kRemoteKey, remote.key, "remote region key").status();
        !framed.ok()) {
      return done(Annotate(framed, "put"));
    }
    const uint64_t key_hash = RegionKeyHash(remote.key);
    for (const PutSpan& span : spans) {
      if (span.len == 0) continue;
      for (size_t at = 0; at < span.len && error.ok(); at += kPutChunk) {
        error = SendPutData(*s, static_cast<const char*>(span.local) + at,
                            std::min(kPutChunk, span.len - at),
                            remote.address + span.remote_offset + at, key_hash);
      }
      if (!error.ok()) break;
      bytes += span.len;
      ++s->puts_issued;
    }
  } else {
    absl::StatusOr<ucp_rkey_h> rkey = Rkey(*s, remote.key);
    if (!rkey.ok()) return done(Annotate(rkey.status(), "put"));
    const ucp_request_param_t param{};  // no callback: see above
    for (const PutSpan& span : spans) {
      if (span.len == 0) continue;
      bytes += span.len;
      const ucs_status_ptr_t request =
          ucp_put_nbx(s->ep, const_cast<void*>(span.local), span.len,
                      remote.address + span.remote_offset, *rkey, &param);
      if (UCS_PTR_IS_ERR(request)) {
        error = UcxError(absl::StrCat("put to ", *s->name), UCS_PTR_STATUS(request));
        break;
      }
      ++s->puts_issued;
      if (request != nullptr) ucp_request_free(request);
    }
  }
  // A large batch gets its flush now rather than at the end of the loop round: the round may
  // hold more batches, and this one's completion (its caller's cue to issue more) should not wait
  // for them to be copied too.
  if (bytes >= kEarlyFlushBytes && s->flush_target < s->puts_issued) {
    IssueFlush(*s, s->puts_issued, nullptr);
  }
  if (error.ok()) return AwaitFlush(*s, s->puts_issued, std::move(done));
  // The puts already issued may still read the caller's memory: report once they are done.
  AwaitFlush(*s, s->puts_issued,
             [error, done = std::move(done)](absl::Status) mutable { done(std::move(error)); });
}

absl::Status UcxCore::SendPutData(EpState& s, const void* data, size_t len, uint64_t address,
                                  uint64_t key_hash) {
  Op* op = NewOp("put", s, nullptr);  // the header lives in the op until UCP is done with it
  op->put = internal::PutHeader{
      .message = MessageHeader{.stream = s.stream, .seq = s.next_seq++, .flags = internal::kPutData},
      .address = address,
      .key_hash = key_hash};
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  op->then = FailEndpointOnError(s, "put");
  const ucs_status_ptr_t request =
      ucp_am_send_nbx(s.ep, kAmId, &op->put, sizeof(op->put), data, len, &param);
  const ucs_status_t status = UCS_PTR_IS_ERR(request) ? UCS_PTR_STATUS(request) : UCS_OK;
  Track(op, request);
  return status == UCS_OK ? absl::OkStatus() : UcxError(absl::StrCat("put to ", *s.name), status);
}

// A message of the endpoint's stream that fails leaves a hole the receiver would wait behind for
// ever: the endpoint fails (its pending operations with it), as when the peer vanishes.
std::function<void(ucs_status_t)> UcxCore::FailEndpointOnError(const EpState& s, const char* verb) {
  return [this, id = s.id, verb](ucs_status_t status) {
    if (status == UCS_OK) return;
    EpState* s = FindEp(id);
    if (s == nullptr) return;
    if (s->error.ok()) s->error = UcxError(absl::StrCat(verb, " to ", *s->name), status);
    failed_eps_.push_back(id);
  };
}

// A kPutFlush: the peer answers it (kPutAck) after handling every earlier message of the stream,
// so its answer means the puts up to `epoch` are in the peer's memory.
void UcxCore::IssueAckRequest(EpState& s, uint64_t epoch, Completion done) {
  const uint64_t token = ++s.last_token;
  s.ack_requests.push_back({token, epoch, std::move(done)});
  Op* op = NewOp("flush", s, nullptr);
  op->header = MessageHeader{.stream = s.stream, .seq = s.next_seq++, .flags = internal::kPutFlush};
  op->payload.assign(reinterpret_cast<const char*>(&token), sizeof(token));
  op->then = FailEndpointOnError(s, "flush");
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  Track(op, ucp_am_send_nbx(s.ep, kAmId, &op->header, sizeof(op->header), op->payload.data(),
                            op->payload.size(), &param));
}

void UcxCore::Acked(EpState& s, uint64_t token, uint32_t refusals) {
  // The count is cumulative per stream, so an answer that overtook an earlier one still carries
  // the earlier one's refusals (and the earlier one, arriving late, covers nothing new).
  const bool refused = refusals != s.refusals_seen;
  s.refusals_seen = std::max(s.refusals_seen, refusals);
  uint64_t epoch = s.puts_flushed;
  std::vector<Completion> flushed;
  while (!s.ack_requests.empty() && s.ack_requests.front().token <= token) {
    EpState::AckRequest& request = s.ack_requests.front();
    epoch = std::max(epoch, request.epoch);
    if (request.done != nullptr) flushed.push_back(std::move(request.done));
    s.ack_requests.pop_front();
  }
  if (refused) {
    // Some put since the last answer was refused; which one the answer does not say, so every
    // put it covers fails.
    const absl::Status error = absl::PermissionDeniedError(absl::StrCat(
        "put to ", *s.name,
        ": the peer refused bytes outside its registered memory or with a wrong region key"));
    std::vector<EpState::AwaitingPut> failed;
    for (size_t i = 0; i < s.awaiting.size();) {
      if (s.awaiting[i].epoch <= epoch) {
        failed.push_back(std::move(s.awaiting[i]));
        s.awaiting[i] = std::move(s.awaiting.back());
        s.awaiting.pop_back();
      } else {
        ++i;
      }
    }
    for (EpState::AwaitingPut& put : failed) put.done(error);
  }
  s.puts_flushed = std::max(s.puts_flushed, epoch);
  CompleteAwaiting(s);
  for (Completion& done : flushed) done(absl::OkStatus());
  PumpOrdered(s);
}

void UcxCore::AnswerAck(ucp_ep_h reply_ep, uint64_t stream, uint64_t token, uint32_t refusals) {
  if (reply_ep == nullptr) {
    spdlog::warn("ucx: a flush request came without a reply endpoint; not answered");
    return;
  }
  Op* op = new Op;
  op->core = this;
  op->verb = "answer flush";
  op->peer = std::make_shared<const std::string>("a peer putting into this process");
  op->header = MessageHeader{
      .stream = stream, .seq = token, .flags = internal::kPutAck, .reserved = refusals};
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  Track(op, ucp_am_send_nbx(reply_ep, kAmId, &op->header, sizeof(op->header), nullptr, 0, &param));
}

bool UcxCore::WriteRegion(uint64_t address, uint64_t key_hash, std::string_view bytes) {
  absl::MutexLock lock(&regions_mu_);
  for (const Region& region : regions_) {  // a process registers a handful of regions
    if (address >= region.address && region.key_hash == key_hash &&
        Fits(address - region.address, bytes.size(), region.length)) {
      std::memcpy(reinterpret_cast<void*>(address), bytes.data(), bytes.size());
      return true;
    }
  }
  spdlog::warn("ucx: refused a put of {} bytes at {:#x}: not inside a region registered here with "
               "that key",
               bytes.size(), address);
  return false;
}

void UcxCore::AwaitFlush(EpState& s, uint64_t epoch, Completion done) {
  if (s.puts_flushed >= epoch) return done(absl::OkStatus());
  if (!s.error.ok()) return done(s.error);
  if (s.ep == nullptr)
    return done(absl::CancelledError(absl::StrCat("put to ", *s.name, ": the endpoint closed")));
  s.awaiting.push_back({epoch, std::move(done)});
  // One flush per loop round covers all the puts issued in it, not one per put.
  if (s.flush_target < epoch && !s.flush_wanted) {
    s.flush_wanted = true;
    want_flush_.push_back(s.id);
  }
}

bool UcxCore::IssueWantedFlushes() {
  if (want_flush_.empty()) return false;
  std::vector<uint64_t> ids;
  ids.swap(want_flush_);
  for (uint64_t id : ids) {
    EpState* s = FindEp(id);
    if (s == nullptr || !s->flush_wanted) continue;
    s->flush_wanted = false;
    if (s->closing) continue;  // the close flushes (RMA) or waited for the answers (messages)
    if (s->ep != nullptr && s->error.ok() && s->flush_target < s->puts_issued)
      IssueFlush(*s, s->puts_issued, nullptr);
  }
  return true;
}

void UcxCore::CompleteAwaiting(EpState& s) {
  std::vector<EpState::AwaitingPut> ready;
  for (size_t i = 0; i < s.awaiting.size();) {
    if (s.awaiting[i].epoch <= s.puts_flushed) {
      ready.push_back(std::move(s.awaiting[i]));
      s.awaiting[i] = std::move(s.awaiting.back());
      s.awaiting.pop_back();
    } else {
      ++i;
    }
  }
  for (EpState::AwaitingPut& put : ready) put.done(absl::OkStatus());
}

void UcxCore::DoOrdered(uint64_t ep_id, EpState::Ordered item) {
  EpState* s = FindEp(ep_id);
  if (s == nullptr) return item.done(absl::InternalError("unknown endpoint"));
  if (!s->error.ok()) return item.done(s->error);
  if (!item.is_flush && item.payload.size() > kMaxMessage) {
    return item.done(absl::InvalidArgumentError(absl::StrFormat(
        "send: a message of %d bytes is over the limit of %d", item.payload.size(), kMaxMessage)));
  }
  item.put_epoch = s->puts_issued;
  s->ordered.push_back(std::move(item));
  PumpOrdered(*s);
}

// Issues the Sends and Flushes at the head of the endpoint's queue that may go now. Reentrant: an
// operation that completes at once may call back into it.
void UcxCore::PumpOrdered(EpState& s) {
  while (!s.ordered.empty() && s.error.ok()) {
    EpState::Ordered& head = s.ordered.front();
    // (Puts as messages travel in the stream ahead of the message: no wait.)
    if (!message_puts_ && !head.is_flush && head.put_epoch > s.puts_flushed) {
      // The puts before this message may not have landed yet: flush them first (once).
      if (s.flush_target < head.put_epoch) IssueFlush(s, s.puts_issued, nullptr);
      return;
    }
    EpState::Ordered item = std::move(head);
    s.ordered.pop_front();
    if (item.is_flush) {
      IssueFlush(s, item.put_epoch, std::move(item.done));
    } else {
      IssueMessage(s, item.id, 0, std::move(item.payload), std::move(item.done));
    }
  }
  MaybeClose(s);
}

void UcxCore::IssueFlush(EpState& s, uint64_t epoch, Completion done) {
  s.flush_target = std::max(s.flush_target, epoch);
  if (message_puts_) return IssueAckRequest(s, epoch, std::move(done));
  Op* op = NewOp("flush", s, std::move(done));
  op->then = [this, id = s.id, epoch](ucs_status_t status) {
    EpState* s = FindEp(id);
    if (s == nullptr) return;
    if (status != UCS_OK) {
      FailOrdered(*s,
                  s->error.ok() ? UcxError(absl::StrCat("flush to ", *s->name), status) : s->error);
      return;
    }
    s->puts_flushed = std::max(s->puts_flushed, epoch);
    CompleteAwaiting(*s);
    PumpOrdered(*s);
  };
  const ucp_request_param_t param = Param(op);
  Track(op, ucp_ep_flush_nbx(s.ep, &param));
}

void UcxCore::IssueMessage(EpState& s, uint16_t id, uint16_t flags, std::string payload,
                           Completion done) {
  Op* op = NewOp("send", s, std::move(done));
  op->header = MessageHeader{.stream = s.stream, .seq = s.next_seq++, .id = id, .flags = flags};
  op->payload = std::move(payload);
  op->then = FailEndpointOnError(s, "send");
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  Track(op, ucp_am_send_nbx(s.ep, kAmId, &op->header, sizeof(op->header), op->payload.data(),
                            op->payload.size(), &param));
}

// Fails the queued Sends and Flushes and the puts waiting for a flush.
void UcxCore::FailOrdered(EpState& s, const absl::Status& status) {
  std::deque<EpState::Ordered> items;
  items.swap(s.ordered);
  std::vector<EpState::AwaitingPut> puts;
  puts.swap(s.awaiting);
  std::deque<EpState::AckRequest> requests;
  requests.swap(s.ack_requests);
  for (EpState::AwaitingPut& put : puts) put.done(status);
  for (EpState::AckRequest& request : requests) {
    if (request.done != nullptr) request.done(status);
  }
  for (EpState::Ordered& item : items) item.done(status);
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

// ---- receiving ----------------------------------------------------------------------------------

ucs_status_t UcxCore::OnMessage(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  UcxCore* core = static_cast<UcxCore*>(arg);
  const std::string_view payload(static_cast<const char*>(data), length);
  if (header_length == sizeof(internal::PutHeader) &&
      (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    internal::PutHeader put;
    std::memcpy(&put, header, sizeof(put));
    if ((put.message.flags & internal::kPutData) != 0) {
      core->Receive(put.message, payload, Extra{.address = put.address, .key_hash = put.key_hash});
      return UCS_OK;
    }
  }
  if (header_length != sizeof(MessageHeader) ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    spdlog::warn(
        "ucx: dropped a message that did not come from a Strata transport ({} header bytes)",
        header_length);
    return UCS_OK;
  }
  MessageHeader h;
  std::memcpy(&h, header, sizeof(h));
  if ((h.flags & internal::kHello) != 0) {
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0)
      core->AnswerHello(h, param->reply_ep);
    return UCS_OK;
  }
  if ((h.flags & internal::kHelloReply) != 0) {
    auto it = core->hello_streams_.find(h.stream);
    if (it != core->hello_streams_.end()) {
      if (EpState* s = core->FindEp(it->second); s != nullptr)
        core->Connected(*s, absl::OkStatus());
    }
    return UCS_OK;
  }
  if ((h.flags & internal::kPutAck) != 0) {
    auto it = core->ep_streams_.find(h.stream);
    if (it != core->ep_streams_.end()) {
      if (EpState* s = core->FindEp(it->second); s != nullptr)
        core->Acked(*s, h.seq, h.reserved);
    }
    return UCS_OK;
  }
  Extra extra;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0) extra.reply_ep = param->reply_ep;
  core->Receive(h, payload, extra);
  return UCS_OK;
}

void UcxCore::AnswerHello(const MessageHeader& hello, ucp_ep_h reply_ep) {
  Op* op = new Op;
  op->core = this;
  op->verb = "answer hello";
  op->peer = std::make_shared<const std::string>("a connecting peer");
  op->header = MessageHeader{.stream = hello.stream, .flags = internal::kHelloReply};
  ucp_request_param_t param = Param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  Track(op, ucp_am_send_nbx(reply_ep, kAmId, &op->header, sizeof(op->header), nullptr, 0, &param));
}

void UcxCore::Receive(const MessageHeader& header, std::string_view payload, const Extra& extra) {
  Stream& stream = streams_[header.stream];
  if (header.seq < stream.next) {
    spdlog::warn("ucx: dropped a repeated message (stream {:x}, seq {})", header.stream,
                 header.seq);
    return;
  }
  if (header.seq > stream.next) {
    if (stream.early.size() < kMaxEarlyMessages) {
      stream.early.emplace(header.seq, Early{header, extra, std::string(payload)});
      return;
    }
    // The missing message is not coming (its sender failed mid-stream): go on without it.
    spdlog::error("ucx: stream {:x} lost messages {}..{}; delivering the later ones", header.stream,
                  stream.next, stream.early.begin()->first - 1);
    ++stream.refusals;  // a lost message may have carried put data: the next answer says so
    stream.next = stream.early.begin()->first;
    stream.early.emplace(header.seq, Early{header, extra, std::string(payload)});
  } else {
    ++stream.next;
    Dispatch(header, payload, extra);
  }
  // `stream` may be gone after Dispatch (end of stream); look it up again.
  for (;;) {
    auto it = streams_.find(header.stream);
    if (it == streams_.end() || it->second.early.empty() ||
        it->second.early.begin()->first != it->second.next)
      break;
    auto node = it->second.early.extract(it->second.early.begin());
    ++it->second.next;
    const Early& early = node.mapped();
    Dispatch(early.header, early.payload, early.extra);
  }
}

void UcxCore::Dispatch(const MessageHeader& header, std::string_view payload, const Extra& extra) {
  if ((header.flags & internal::kEndOfStream) != 0) {
    streams_.erase(header.stream);
    return;
  }
  if ((header.flags & internal::kPutData) != 0) {
    if (!WriteRegion(extra.address, extra.key_hash, payload)) ++streams_[header.stream].refusals;
    return;
  }
  if ((header.flags & internal::kPutFlush) != 0) {
    uint64_t token = 0;
    if (payload.size() != sizeof(token)) {
      spdlog::warn("ucx: dropped a malformed flush request ({} bytes)", payload.size());
      return;
    }
    std::memcpy(&token, payload.data(), sizeof(token));
    AnswerAck(extra.reply_ep, header.stream, token, streams_[header.stream].refusals);
    return;
  }
  std::shared_ptr<Transport::MessageHandler> handler;
  {
    absl::MutexLock lock(&handlers_mu_);
    auto it = handlers_.find(header.id);
    if (it != handlers_.end()) handler = it->second;
  }
  if (handler == nullptr) {
    spdlog::warn("ucx: no handler for message id {}; dropped", header.id);
    return;
  }
  (*handler)(payload);
}

// ---- the public objects -------------------------------------------------------------------------

}  // namespace strata::transport::internal_ucx
