#include "bench/report.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>

#ifndef STRATA_SOURCE_DIR
#error "STRATA_SOURCE_DIR must be the repository root"
#endif

namespace strata::bench {
namespace {

// Keeps a field on one TSV cell.
std::string Cell(std::string s) {
  for (char& c : s) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::array<char, 32> buf{};
  std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf.data();
}

std::string& Device() {
  static std::string device;
  return device;
}

std::string Machine() {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  std::string cpu = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) cpu = line.substr(line.find_first_not_of(" \t", colon + 1));
      break;
    }
  }
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return std::string(host.data()) + " (" + cpu + ", " + std::to_string(cores) + " cores" +
         (Device().empty() ? "" : ", " + Device()) + ")";
}

std::string GitCommit() {
  if (const char* env = std::getenv("STRATA_GIT_COMMIT"); env != nullptr && *env != '\0') return env;
  const std::string command = "git -C '" STRATA_SOURCE_DIR "' rev-parse --short HEAD 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "unknown";
  std::array<char, 64> buf{};
  std::string out;
  while (fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = pclose(pipe);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return status == 0 && !out.empty() ? out : "unknown";
}

}  // namespace

void SetReportDevice(const std::string& device) { Device() = device; }

void Report(const Figure& figure, const std::string& results_file) {
  const double ratio = figure.limit != 0 ? figure.value / figure.limit : 0;
  const bool pass =
      figure.higher_is_better ? figure.value >= figure.limit : figure.value <= figure.limit;
  std::printf("%s: %.4g %s  limit %.4g %s  ratio %.2f  %s\n", figure.name.c_str(), figure.value,
              figure.unit.c_str(), figure.limit, figure.unit.c_str(), ratio,
              figure.limit == 0 && !figure.higher_is_better ? "(no target)" : pass ? "PASS" : "BELOW TARGET");
  std::fflush(stdout);
  if (results_file.empty()) return;

  const std::string path = (results_file.rfind('/', 0) == 0 ? results_file
                                                            : std::string(STRATA_SOURCE_DIR) + "/bench/results/" +
                                                                  results_file) +
                           ".tsv";
  const bool exists = std::ifstream(path).good();
  std::ofstream out(path, std::ios::app);
  if (!out) {
    std::fprintf(stderr, "bench: cannot append to %s\n", path.c_str());
    return;
  }
  if (!exists) out << "date\tmachine\tcommit\tname\tvalue\tunit\tlimit\tratio\n";
  std::array<char, 64> value{}, limit{}, ratio_text{};
  std::snprintf(value.data(), value.size(), "%.4g", figure.value);
  std::snprintf(limit.data(), limit.size(), "%.4g", figure.limit);
  std::snprintf(ratio_text.data(), ratio_text.size(), "%.3f", ratio);
  out << UtcNow() << '\t' << Cell(Machine()) << '\t' << Cell(GitCommit()) << '\t'
      << Cell(figure.name) << '\t' << value.data() << '\t' << Cell(figure.unit) << '\t'
      << limit.data() << '\t' << ratio_text.data() << '\n';
}

}  // namespace strata::bench
