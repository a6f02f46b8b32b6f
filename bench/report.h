// Benchmark figures: each benchmark prints its figure next to the limit it is held to, and
// appends the run to bench/results/<file>.tsv so results stay comparable across commits and
// machines. Used by the binaries under bench/; call from the benchmark's main thread.
#pragma once

#include <string>

namespace strata::bench {

struct Figure {
  std::string name;  // e.g. "tokenizer_encode_1core"
  double value;
  std::string unit;  // e.g. "MB/s"
  double limit;      // the target the value is compared with
  bool higher_is_better = true;
};

// Prints "<name>: <value> <unit>  limit <limit> <unit>  ratio <value/limit>  PASS|BELOW TARGET"
// ("(no target)" for a lower-is-better figure with limit 0)
// and appends a tab-separated line to <repo>/bench/results/<results_file>.tsv: UTC date, machine
// (hostname and CPU model), git commit (short hash, "unknown" outside git), name, value, unit,
// limit, ratio. A results file that cannot be written is reported on stderr, not fatal. An
// absolute `results_file` ("/out/cuda") names the file itself (".tsv" appended): for runs on
// machines that have no checkout, whose results are copied back. An empty `results_file` only
// prints (runs whose figures are not comparable, e.g. under a profiler).
void Report(const Figure& figure, const std::string& results_file);

// Names the accelerator the figures were measured on (e.g. "NVIDIA H200"): from then on the
// machine column reads "<hostname> (<CPU>, <cores> cores, <device>)". The commit column is
// $STRATA_GIT_COMMIT where that is set (deploy/gpu/run.sh sets it from the packed build's
// commit: the GPU machine has the files but no git history).
void SetReportDevice(const std::string& device);

}  // namespace strata::bench
