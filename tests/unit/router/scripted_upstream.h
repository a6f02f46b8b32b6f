// A scripted router::Upstream for the router's front tests: each call is played by a script on
// its own thread, as a real upstream calls back from its own threads, and records the request
// it got and whether it was cancelled.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "router/upstream.h"

namespace strata::router {

// One upstream call, played by a script on its own thread (as a real upstream calls back from
// its own threads).
class ScriptedCall {
 public:
  ScriptedCall(UpstreamRequest request, std::function<void(UpstreamEvent)> on_event)
      : request_(std::move(request)), on_event_(std::move(on_event)) {}

  const UpstreamRequest& request() const { return request_; }

  void Send(std::vector<int32_t> tokens, std::vector<float> logprobs = {}) {
    on_event_(UpstreamEvent{.tokens = std::move(tokens), .logprobs = std::move(logprobs)});
  }
  void Done(FinishReason finish, absl::Status status = absl::OkStatus(),
            std::vector<int32_t> tokens = {}, int64_t cached = 0) {
    done_ = true;
    on_event_(UpstreamEvent{.tokens = std::move(tokens),
                            .done = true,
                            .finish = finish,
                            .status = std::move(status),
                            .cached_tokens = cached});
  }
  // Blocks the script until the front cancels or the test releases it.
  bool WaitForCancelOrRelease() {
    absl::MutexLock lock(&mu_);
    auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancelled_ || released_; };
    mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(30));
    return cancelled_;
  }
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }
  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  bool WaitCancelled(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto c = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancelled_; };
    return mu_.AwaitWithTimeout(absl::Condition(&c), timeout);
  }
  bool done() const { return done_; }

 private:
  const UpstreamRequest request_;
  const std::function<void(UpstreamEvent)> on_event_;
  bool done_ = false;  // script thread only
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

using Script = std::function<void(ScriptedCall&)>;

class ScriptedUpstream final : public Upstream {
 public:
  void SetScript(Script script) {
    absl::MutexLock lock(&mu_);
    script_ = std::move(script);
  }

  std::unique_ptr<UpstreamCall> Start(UpstreamRequest request,
                                      std::function<void(UpstreamEvent)> on_event) override {
    auto call = std::make_shared<ScriptedCall>(std::move(request), std::move(on_event));
    Script script;
    {
      absl::MutexLock lock(&mu_);
      script = script_;
      calls_.push_back(call);
    }
    auto thread = std::make_unique<std::thread>([call, script] {
      script(*call);
      // Every call ends with exactly one final event.
      if (!call->done()) {
        call->Done(FinishReason::kNone, call->cancelled() ? absl::CancelledError("cancelled")
                                                          : absl::InternalError("script ended"));
      }
    });
    return std::make_unique<Handle>(call, std::move(thread));
  }

  void SetReady(absl::Status ready) {
    absl::MutexLock lock(&mu_);
    ready_ = std::move(ready);
  }
  absl::Status Ready() const override {
    absl::MutexLock lock(&mu_);
    return ready_;
  }

  std::shared_ptr<ScriptedCall> last_call() {
    absl::MutexLock lock(&mu_);
    return calls_.empty() ? nullptr : calls_.back();
  }
  size_t num_calls() {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }
  std::shared_ptr<ScriptedCall> WaitForCall(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_.size() >= n; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10))) return nullptr;
    return calls_[n - 1];
  }

 private:
  class Handle final : public UpstreamCall {
   public:
    Handle(std::shared_ptr<ScriptedCall> call, std::unique_ptr<std::thread> thread)
        : call_(std::move(call)), thread_(std::move(thread)) {}
    ~Handle() override {
      // The front destroys calls only after their final event and never on this thread.
      EXPECT_NE(std::this_thread::get_id(), thread_->get_id());
      thread_->join();
    }
    void Cancel() override { call_->Cancel(); }

   private:
    std::shared_ptr<ScriptedCall> call_;
    std::unique_ptr<std::thread> thread_;
  };

  mutable absl::Mutex mu_;
  Script script_ ABSL_GUARDED_BY(mu_);
  absl::Status ready_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<ScriptedCall>> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::router
