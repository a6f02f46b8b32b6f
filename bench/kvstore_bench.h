// `strata bench kvstore`: the kvstore's two data paths against their physical references, in
// bench/results/kvstore.tsv:
//   - the SSD tier: `ssd_mib` of block slots written and then read back in batches (as a fetch
//     promotes a prefix: direct I/O through io_uring, every record verified), next to `dd
//     iflag=direct` reading the same file (held to 80% of it);
//   - a fetch: a chain of `fetch_blocks` blocks in the RAM tier pushed over UCX into a worker's
//     pool through the real service and client (gRPC control, message puts), next to
//     `ucx_perftest -t ucp_am_bw` at one block's size on the same transport (held to 80%).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace strata::bench {

struct KvStoreBenchOptions {
  std::string preset = "tiny";  // whose KV layout (block size)
  std::string dir = "/tmp";     // the SSD tier's folder (on the disk to measure)
  int64_t ssd_mib = 1024;       // 0: skip the SSD part
  int64_t batch = 64;           // slots per read batch
  int64_t fetch_blocks = 2048;  // 0: skip the fetch part
  int fetch_rounds = 5;
  std::string transports = "tcp";
  std::string perftest = "ucx_perftest";
  std::string results_file = "kvstore";
};

// Starts UCX in this process.
absl::Status RunKvStoreBench(const KvStoreBenchOptions& options);

}  // namespace strata::bench
