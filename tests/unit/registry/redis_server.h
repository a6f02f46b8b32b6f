// A private redis-server for tests: a free loopback port, its own temp dir, no persistence.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::registry {

class RedisServer {
 public:
  // Starts redis-server and waits (with a deadline) until it answers PING.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start();
  ~RedisServer();  // kills the server and removes the temp dir

  int port() const { return port_; }
  // Stops the server (SIGTERM, then reaps it); Restart() brings it back on the same port, empty.
  absl::Status Stop();
  absl::Status Restart();

 private:
  RedisServer(std::string dir, int port) : dir_(std::move(dir)), port_(port) {}
  absl::Status Launch();

  std::string dir_;
  int port_;
  pid_t pid_ = -1;
};

}  // namespace strata::registry
