// Which network devices a UCX transport may use so that it listens on the configured host only.
// A cluster file that puts every service on 127.0.0.1 must not get KV-transfer listeners on the
// machine's public interfaces: UCX's tcp transport listens on every device it is allowed
// (UCX_NET_DEVICES, default all), so the transport names the one device that holds the host's
// address — and, where that device is a RoCE/IPoIB port, its RDMA device too.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace strata::transport {

// The UCX_NET_DEVICES value for `host` (an IPv4/IPv6 address or a name that resolves to one
// held by this machine): e.g. "lo" for 127.0.0.1, "eth0,mlx5_0:1" for a RoCE port's address.
// "" (no restriction) for an empty host or a wildcard (0.0.0.0, ::). NotFound when no interface
// of this machine holds the address, InvalidArgument when the name does not resolve.
absl::StatusOr<std::string> UcxNetDevicesFor(const std::string& host);

}  // namespace strata::transport
