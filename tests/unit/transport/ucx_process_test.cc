// UcxTransport between two processes: the test re-executes its own binary as the peer (a clean
// process, no state inherited from the parent's UCX), which registers a buffer and hands its
// address and region back over a pipe. The parent puts into it, the child checks the bytes, and
// then the child is killed: the parent's next operations must fail, within a deadline, not hang.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"
#include "transport/transport.h"

extern char** environ;

namespace strata::transport {
namespace {

using ::strata::transport::testing::Completions;
using ::strata::transport::testing::Fill;
using ::strata::transport::testing::FirstMismatch;
using ::strata::transport::testing::kDeadline;

constexpr char kChildEnv[] = "STRATA_TRANSPORT_TEST_CHILD";
constexpr size_t kBufferBytes = 1 << 20;

// Length-prefixed frames over a pipe, so binary addresses and keys pass unchanged.
bool WriteFrame(int fd, const std::string& data) {
  std::string out(4, '\0');
  const uint32_t len = data.size();
  std::memcpy(out.data(), &len, 4);
  out += data;
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n <= 0) return false;
    done += n;
  }
  return true;
}

bool ReadExactly(int fd, char* p, size_t len, absl::Time deadline) {
  size_t done = 0;
  while (done < len) {
    pollfd pfd{.fd = fd, .events = POLLIN, .revents = 0};
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0 || poll(&pfd, 1, static_cast<int>(left_ms)) <= 0) return false;
    const ssize_t n = read(fd, p + done, len - done);
    if (n <= 0) return false;
    done += n;
  }
  return true;
}

bool ReadFrame(int fd, std::string* data, absl::Time deadline) {
  uint32_t len = 0;
  if (!ReadExactly(fd, reinterpret_cast<char*>(&len), 4, deadline)) return false;
  data->assign(len, '\0');
  return ReadExactly(fd, data->data(), len, deadline);
}

// The child's side. Runs only when the parent test re-executes this binary with kChildEnv set to
// "<read fd> <write fd> <transports>".
TEST(UcxChildProcess, Serve) {
  const char* spec = std::getenv(kChildEnv);
  if (spec == nullptr) GTEST_SKIP() << "runs only as the peer process of UcxTwoProcessesTest";
  std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(' ', 2));
  ASSERT_EQ(parts.size(), 3u);
  int in = -1, out = -1;
  ASSERT_TRUE(absl::SimpleAtoi(parts[0], &in) && absl::SimpleAtoi(parts[1], &out));
  absl::StatusOr<std::unique_ptr<Transport>> transport = MakeUcxTransport({.transports = parts[2]});
  ASSERT_TRUE(transport.ok()) << transport.status();
  std::vector<uint8_t> buffer(kBufferBytes, 0);
  auto registration = (*transport)->Register(buffer.data(), buffer.size());
  ASSERT_TRUE(registration.ok()) << registration.status();
  const RemoteRegion region = (*registration)->Describe();
  ASSERT_TRUE(WriteFrame(out, (*transport)->address()));
  ASSERT_TRUE(WriteFrame(out, absl::StrCat(region.address, " ", region.length)));
  ASSERT_TRUE(WriteFrame(out, region.key));
  for (std::string command; ReadFrame(in, &command, absl::InfiniteFuture());) {
    uint64_t seed = 0, len = 0;
    std::vector<std::string> words = absl::StrSplit(command, ' ');
    if (words.size() == 3 && words[0] == "verify" && absl::SimpleAtoi(words[1], &seed) &&
        absl::SimpleAtoi(words[2], &len) && len <= buffer.size()) {
      const size_t bad = FirstMismatch(buffer.data(), len, seed);
      ASSERT_TRUE(WriteFrame(out, bad == len ? "ok" : absl::StrCat("mismatch at ", bad)));
    } else if (words.size() == 1 && words[0] == "stream") {
      // Puts into the parent's region (its address, "address length", key follow) until killed.
      std::string address, where;
      RemoteRegion target;
      ASSERT_TRUE(ReadFrame(in, &address, absl::Now() + kDeadline));
      ASSERT_TRUE(ReadFrame(in, &where, absl::Now() + kDeadline));
      ASSERT_TRUE(ReadFrame(in, &target.key, absl::Now() + kDeadline));
      std::vector<std::string> fields = absl::StrSplit(where, ' ');
      ASSERT_EQ(fields.size(), 2u);
      ASSERT_TRUE(absl::SimpleAtoi(fields[0], &target.address) &&
                  absl::SimpleAtoi(fields[1], &target.length));
      absl::StatusOr<std::shared_ptr<Endpoint>> ep = (*transport)->Connect(address);
      ASSERT_TRUE(ep.ok()) << ep.status();
      std::vector<PutSpan> spans;
      for (uint64_t at = 0; at + (64 << 10) <= target.length; at += 64 << 10) {
        spans.push_back({buffer.data() + at % buffer.size(), 64 << 10, at});
      }
      bool told = false;
      for (;;) {
        absl::Notification done;
        (*ep)->PutMany(spans, target, [&](absl::Status) { done.Notify(); });
        done.WaitForNotification();
        if (!told) {
          ASSERT_TRUE(WriteFrame(out, "streaming"));
          told = true;
        }
      }
    } else {
      break;
    }
  }
}

class UcxTwoProcessesTest : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    for (int fd : {to_child_, from_child_}) {
      if (fd >= 0) close(fd);
    }
  }

  // Starts the child and reads what it registered.
  void StartChild() {
    int down[2], up[2];
    ASSERT_EQ(pipe2(down, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(up, O_CLOEXEC), 0);
    // Everything the child needs is built before fork(): after it, only exec.
    const std::string spec = absl::StrCat(kChildEnv, "=", down[0], " ", up[1], " ", GetParam());
    std::vector<char*> env;
    for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
    env.push_back(const_cast<char*>(spec.c_str()));
    env.push_back(nullptr);
    std::string exe = "/proc/self/exe", filter = "--gtest_filter=UcxChildProcess.Serve";
    char* argv[] = {exe.data(), filter.data(), nullptr};
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      fcntl(down[0], F_SETFD, 0);
      fcntl(up[1], F_SETFD, 0);
      execve(exe.c_str(), argv, env.data());
      _exit(127);
    }
    close(down[0]);
    close(up[1]);
    to_child_ = down[1];
    from_child_ = up[0];
    const absl::Time deadline = absl::Now() + kDeadline;
    std::string where;
    ASSERT_TRUE(ReadFrame(from_child_, &child_address_, deadline))
        << "the child did not report its address";
    ASSERT_TRUE(ReadFrame(from_child_, &where, deadline));
    ASSERT_TRUE(ReadFrame(from_child_, &child_region_.key, deadline));
    std::vector<std::string> words = absl::StrSplit(where, ' ');
    ASSERT_EQ(words.size(), 2u);
    ASSERT_TRUE(absl::SimpleAtoi(words[0], &child_region_.address));
    ASSERT_TRUE(absl::SimpleAtoi(words[1], &child_region_.length));
  }

  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string child_address_;
  RemoteRegion child_region_;
};

TEST_P(UcxTwoProcessesTest, PutsLandInTheChildAndAKilledChildFailsTheNextOperations) {
  ASSERT_NO_FATAL_FAILURE(StartChild());
  absl::StatusOr<std::unique_ptr<Transport>> transport =
      MakeUcxTransport({.transports = GetParam()});
  ASSERT_TRUE(transport.ok()) << transport.status();
  std::vector<uint8_t> local(kBufferBytes);
  auto registration = (*transport)->Register(local.data(), local.size());
  ASSERT_TRUE(registration.ok()) << registration.status();
  absl::StatusOr<std::shared_ptr<Endpoint>> ep = (*transport)->Connect(child_address_);
  ASSERT_TRUE(ep.ok()) << ep.status();
  ASSERT_EQ(child_region_.length, kBufferBytes);

  // Several puts covering the buffer, at odd boundaries, then one flush.
  Fill(local.data(), kBufferBytes, 77);
  const std::vector<size_t> cuts = {0, 1, 4097, 65536 + 3, 700001, kBufferBytes};
  Completions puts(cuts.size() - 1);
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    (*ep)->Put(local.data() + cuts[i], cuts[i + 1] - cuts[i], child_region_, cuts[i], puts.For(i));
  }
  ASSERT_TRUE(puts.WaitFor(cuts.size() - 1));
  for (size_t i = 0; i + 1 < cuts.size(); ++i) ASSERT_TRUE(puts.status(i).ok()) << puts.status(i);
  ASSERT_TRUE(FlushSync(**ep).ok());
  ASSERT_TRUE(WriteFrame(to_child_, absl::StrCat("verify 77 ", kBufferBytes)));
  std::string verdict;
  ASSERT_TRUE(ReadFrame(from_child_, &verdict, absl::Now() + kDeadline));
  EXPECT_EQ(verdict, "ok");

  // Reading back works too.
  std::vector<uint8_t> back(kBufferBytes, 0);
  ASSERT_TRUE(GetSync(**ep, back.data(), kBufferBytes, child_region_, 0).ok());
  EXPECT_EQ(FirstMismatch(back.data(), kBufferBytes, 77), kBufferBytes);

  ASSERT_EQ(kill(pid_, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid_, nullptr, 0), pid_);
  pid_ = -1;
  // The completions may come after this test gave up on them: they own their state.
  auto after = std::make_shared<Completions>(2);
  (*ep)->Put(local.data(), 4096, child_region_, 0, after->For(0));
  (*ep)->Flush(after->For(1));
  ASSERT_TRUE(after->WaitFor(2)) << "operations to a killed peer neither completed nor failed";
  EXPECT_FALSE(after->status(0).ok() && after->status(1).ok());
  // The endpoint stays failed; later operations fail at once.
  EXPECT_FALSE(PutSync(**ep, local.data(), 16, child_region_, 0).ok());
}

// The other direction: the child streams puts into this process's memory and is killed in the
// middle (openucx/ucx#7274: UCX 1.13 can abort a receiver whose tcp put peer dies mid-transfer).
// This process must keep serving: its transport still connects and puts.
TEST_P(UcxTwoProcessesTest, ASenderKilledMidStreamLeavesTheReceiverServing) {
  ASSERT_NO_FATAL_FAILURE(StartChild());
  absl::StatusOr<std::unique_ptr<Transport>> transport =
      MakeUcxTransport({.transports = GetParam()});
  ASSERT_TRUE(transport.ok()) << transport.status();
  constexpr size_t kTarget = 64 << 20;
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> target = (*transport)->Allocate(kTarget);
  ASSERT_TRUE(target.ok()) << target.status();
  const RemoteRegion region = (*target)->Describe();
  ASSERT_TRUE(WriteFrame(to_child_, "stream"));
  ASSERT_TRUE(WriteFrame(to_child_, (*transport)->address()));
  ASSERT_TRUE(WriteFrame(to_child_, absl::StrCat(region.address, " ", region.length)));
  ASSERT_TRUE(WriteFrame(to_child_, region.key));
  std::string word;
  ASSERT_TRUE(ReadFrame(from_child_, &word, absl::Now() + kDeadline));
  ASSERT_EQ(word, "streaming");
  absl::SleepFor(absl::Milliseconds(300));  // mid-stream: the child never stops putting
  ASSERT_EQ(kill(pid_, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid_, nullptr, 0), pid_);
  pid_ = -1;
  absl::SleepFor(absl::Seconds(1));  // UCX notices the dead connection meanwhile

  // Still serving: a fresh peer connects and puts into this process, and this process puts into
  // the fresh peer.
  absl::StatusOr<std::unique_ptr<Transport>> fresh = MakeUcxTransport({.transports = GetParam()});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  std::vector<uint8_t> bytes(4096);
  Fill(bytes.data(), bytes.size(), 5);
  auto fresh_reg = (*fresh)->Register(bytes.data(), bytes.size());
  ASSERT_TRUE(fresh_reg.ok()) << fresh_reg.status();
  absl::StatusOr<std::shared_ptr<Endpoint>> in = (*fresh)->Connect((*transport)->address());
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_TRUE(PutSync(**in, bytes.data(), bytes.size(), region, 0).ok());
  EXPECT_EQ(FirstMismatch(reinterpret_cast<const uint8_t*>(region.address), bytes.size(), 5),
            bytes.size());
  absl::StatusOr<std::shared_ptr<Endpoint>> out = (*transport)->Connect((*fresh)->address());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(PutSync(**out, reinterpret_cast<const void*>(region.address), 64,
                      (*fresh_reg)->Describe(), 0)
                  .ok());
}

INSTANTIATE_TEST_SUITE_P(Ucx, UcxTwoProcessesTest, ::testing::Values("", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.empty() ? std::string("default") : info.param;
                         });

}  // namespace
}  // namespace strata::transport
