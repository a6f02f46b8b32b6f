// The UCX core's operations (puts, gets, flushes, ordered sends; puts as messages) and its
// receiving side, on the progress thread (ucx_core.cc: set-up, loop, endpoints, close; the design
// is at the top of ucx_transport.cc).
#include "transport/ucx_core.h"

#include "absl/base/dynamic_annotations.h"
#include "common/logging.h"

namespace strata::transport::internal_ucx {

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
        !framed.ok() && !internal::Unframe(FrameKind::kGrantKey, remote.key, "grant key").ok()) {
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

absl::StatusOr<std::string> UcxCore::AddGrant(const RemoteRegion& registration,
                                              absl::Span<const ByteRange> ranges) {
  STRATA_RETURN_IF_ERROR(internal::CheckGrantRanges(registration, ranges));
  const uint64_t hash = RegionKeyHash(registration.key);
  absl::MutexLock lock(&regions_mu_);
  const bool ours = std::any_of(regions_.begin(), regions_.end(), [&](const Region& r) {
    return r.memh != nullptr && r.key_hash == hash && r.address == registration.address;
  });
  if (!ours) return absl::InvalidArgumentError("grant: the registration is not this transport's");
  std::string body = registration.key;
  body.resize(body.size() + internal::kGrantTokenBytes);
  absl::BitGen gen;  // any thread may grant; the core's generator is the progress thread's
  for (size_t i = 0; i < internal::kGrantTokenBytes; i += 8) {
    const uint64_t word = absl::Uniform<uint64_t>(gen);
    std::memcpy(body.data() + registration.key.size() + i, &word, 8);
  }
  std::string key = internal::Frame(FrameKind::kGrantKey, body.data(), body.size());
  regions_.push_back(Region{registration.address, registration.length, RegionKeyHash(key), nullptr,
                            std::vector<ByteRange>(ranges.begin(), ranges.end())});
  return key;
}

void UcxCore::RemoveGrant(const std::string& key) {
  const uint64_t hash = RegionKeyHash(key);
  absl::MutexLock lock(&regions_mu_);  // waits for a put being written under it
  std::erase_if(regions_, [hash](const Region& r) { return r.memh == nullptr && r.key_hash == hash; });
}

bool UcxCore::WriteRegion(uint64_t address, uint64_t key_hash, std::string_view bytes) {
  absl::MutexLock lock(&regions_mu_);
  for (const Region& region : regions_) {  // a process registers a handful of regions
    if (address >= region.address && region.key_hash == key_hash &&
        Fits(address - region.address, bytes.size(), region.length) &&
        (region.granted.empty() ||
         internal::InsideOneRange(region.granted, address - region.address, bytes.size()))) {
      // This copy is the remote peer's write (a put by RMA is done by UCX, the NIC or the
      // kernel, which ThreadSanitizer never sees either). What orders it with this process's
      // readers and writers of the region is the application's protocol across processes (the
      // sender's flush completes, then it tells the reader over gRPC or a pipe), which TSan cannot
      // follow; it reported the copy as racing with Allocate's memset and with the reader.
      ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_BEGIN();
      std::memcpy(reinterpret_cast<void*>(address), bytes.data(), bytes.size());
      ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_END();
      return true;
    }
  }
  // A revoked grant refuses every late put of a cancelled transfer: a few lines, then a count.
  static LogRateLimiter limiter;
  if (int64_t suppressed = 0; limiter.Allow(absl::Now(), &suppressed)) {
    spdlog::warn("ucx: refused a put of {} bytes at {:#x}: not inside a region (or grant) registered here with "
                 "that key{}",
                 bytes.size(), address,
                 suppressed > 0 ? absl::StrCat(" (", suppressed, " more refused, not logged)") : "");
  }
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

}  // namespace strata::transport::internal_ucx
