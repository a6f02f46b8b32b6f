// The UCX transport of a service configured on one host listens on that host's device only
// (issue #11: with every host 127.0.0.1 in the cluster file, the KV-transfer listeners bound the
// machine's public address too).
#include "transport/net_devices.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "transport/transport.h"

namespace strata::transport {
namespace {

TEST(NetDevicesTest, LoopbackIsLo) {
  absl::StatusOr<std::string> d = UcxNetDevicesFor("127.0.0.1");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "lo");
  d = UcxNetDevicesFor("localhost");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "lo");
}

TEST(NetDevicesTest, NoHostOrAWildcardMeansEveryDevice) {
  EXPECT_EQ(*UcxNetDevicesFor(""), "");
  EXPECT_EQ(*UcxNetDevicesFor("0.0.0.0"), "");
  EXPECT_EQ(*UcxNetDevicesFor("::"), "");
}

TEST(NetDevicesTest, AnAddressNoInterfaceHoldsIsAnError) {
  // 203.0.113.0/24 is TEST-NET-3: documentation only, never a real interface's address.
  absl::StatusOr<std::string> d = UcxNetDevicesFor("203.0.113.77");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound) << d.status();
  EXPECT_NE(d.status().message().find("203.0.113.77"), absl::string_view::npos);
  d = UcxNetDevicesFor("no-such-host.invalid");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << d.status();
}

// Socket inodes this process holds.
std::set<std::string> SocketInodes() {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
    if (target.rfind("socket:[", 0) == 0) out.insert(target.substr(8, target.size() - 9));
  }
  return out;
}

// The local addresses ("0100007F:1F90", as /proc/net/tcp writes them) of listening sockets
// among `inodes`; IPv6 ones are prefixed with "6:".
std::vector<std::string> ListeningAddresses(const std::set<std::string>& inodes) {
  std::vector<std::string> out;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() < 10 || f[3] != "0A") continue;  // 0A: LISTEN
      if (inodes.count(f[9]) == 0) continue;
      out.push_back(std::string(file).back() == '6' ? "6:" + f[1] : f[1]);
    }
  }
  return out;
}

TEST(NetDevicesTest, AUcxTransportOnLoopbackListensOnLoopbackOnly) {
  const std::set<std::string> before = SocketInodes();
  absl::StatusOr<std::unique_ptr<Transport>> t = MakeUcxTransport({.transports = "tcp", .host = "127.0.0.1"});
  ASSERT_TRUE(t.ok()) << t.status();
  std::set<std::string> added;
  for (const std::string& inode : SocketInodes()) {
    if (before.count(inode) == 0) added.insert(inode);
  }
  const std::vector<std::string> listening = ListeningAddresses(added);
  ASSERT_FALSE(listening.empty()) << "the tcp transport opened no listening socket";
  for (const std::string& a : listening) {
    EXPECT_EQ(a.substr(0, 9), "0100007F:") << "a KV-transfer listener off loopback: " << a;
  }
}

}  // namespace
}  // namespace strata::transport
