#include "transport/net_devices.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::transport {
namespace {

// The addresses `host` names (numeric, or resolved).
absl::StatusOr<std::vector<sockaddr_storage>> Resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("host '", host, "' does not resolve: ", gai_strerror(rc)));
  }
  std::vector<sockaddr_storage> out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    sockaddr_storage s{};
    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
    out.push_back(s);
  }
  freeaddrinfo(found);
  return out;
}

bool SameAddress(const sockaddr* a, const sockaddr_storage& b) {
  if (a == nullptr || a->sa_family != b.ss_family) return false;
  if (a->sa_family == AF_INET) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in*>(a)->sin_addr,
                       &reinterpret_cast<const sockaddr_in*>(&b)->sin_addr, sizeof(in_addr)) == 0;
  }
  if (a->sa_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(&b)->sin6_addr, sizeof(in6_addr)) == 0;
  }
  return false;
}

bool IsWildcard(const sockaddr_storage& s) {
  if (s.ss_family == AF_INET) return reinterpret_cast<const sockaddr_in*>(&s)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (s.ss_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(&s)->sin6_addr, &in6addr_any, sizeof(in6_addr)) == 0;
  }
  return false;
}

// "mlx5_0:1", … for the RDMA device behind netdev `ifname` (RoCE, IPoIB), from sysfs.
std::vector<std::string> RdmaPortsOf(const std::string& ifname) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  std::error_code ec;
  const fs::path ib = fs::path("/sys/class/net") / ifname / "device" / "infiniband";
  if (!fs::is_directory(ib, ec)) return out;
  for (const auto& dev : fs::directory_iterator(ib, ec)) {
    const fs::path ports = fs::path("/sys/class/infiniband") / dev.path().filename() / "ports";
    for (const auto& port : fs::directory_iterator(ports, ec)) {
      out.push_back(absl::StrCat(dev.path().filename().string(), ":", port.path().filename().string()));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> UcxNetDevicesFor(const std::string& host) {
  if (host.empty()) return std::string();
  auto addresses = Resolve(host);
  if (!addresses.ok()) return addresses.status();
  for (const sockaddr_storage& a : *addresses) {
    if (IsWildcard(a)) return std::string();
  }
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return absl::InternalError(absl::StrCat("getifaddrs: ", std::strerror(errno)));
  }
  std::set<std::string> devices;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if ((i->ifa_flags & IFF_UP) == 0) continue;
    for (const sockaddr_storage& a : *addresses) {
      if (SameAddress(i->ifa_addr, a)) devices.insert(i->ifa_name);
    }
  }
  freeifaddrs(list);
  if (devices.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no network interface of this machine holds the address of host '", host,
                     "' (the KV transfer listens on that host's interface only)"));
  }
  std::vector<std::string> names(devices.begin(), devices.end());
  for (const std::string& d : devices) {
    for (std::string& port : RdmaPortsOf(d)) names.push_back(std::move(port));
  }
  return absl::StrJoin(names, ",");
}

}  // namespace strata::transport
