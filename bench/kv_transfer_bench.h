// `strata bench kv-transfer`: how fast the transport streams KV bytes into a peer process's
// registered memory, next to `ucx_perftest -t ucp_put_bw` on the same UCX transports and message
// sizes (DESIGN.md §8: at least 80% of it). Recorded in bench/results/kv_transfer.tsv.
//
// The peer is a forked process that registers a receive buffer and passes its address and region
// back over a pipe; this process then keeps `window` puts in flight, as a prefill worker pushing
// KV into a decode worker does, and times the stream up to the flush that makes it visible.
// ucx_perftest keeps every put outstanding until its final flush (its -O 0 default). A prefill
// worker does not wait either: each layer's pages go out as one PutMany while the next layer
// computes, so a 512-token step of the flash preset (43 layers, ~10 pages per layer per job)
// has hundreds of puts in flight; the default window of 256 is that.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::bench {

struct KvTransferBenchOptions {
  // UCX_TLS settings, each run separately (and given to ucx_perftest as UCX_TLS). On transports
  // without peer-failure support (shared memory, cma) the transport runs without it.
  std::vector<std::string> transports = {"tcp", "shm,cma"};
  // Put sizes in bytes; empty: 64 KiB, 1 MiB and one KV block of the "small" preset.
  std::vector<int64_t> sizes;
  int64_t total_bytes = int64_t{1} << 30;  // streamed per (transports, size), after a warm-up
  int window = 256;                        // puts in flight (PutMany calls of window / 2)
  std::string perftest = "ucx_perftest";   // the reference tool, from PATH unless a path
};

// Must be called before this process has started UCX (the peer is forked from it).
absl::Status RunKvTransferBench(const KvTransferBenchOptions& options);

// `ucx_perftest -t <test> -s <size> -n <iterations>` between two processes on loopback with
// UCX_TLS=<tls>: its overall bandwidth in bytes/s (the reference other benchmarks are held to).
absl::StatusOr<double> RunUcxPerftest(const std::string& perftest, const std::string& tls, const std::string& test,
                                      int64_t size, int64_t iterations);

}  // namespace strata::bench
