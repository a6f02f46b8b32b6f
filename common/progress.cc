#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"

namespace strata {

std::string HumanBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 5) {
    bytes /= 1024.0;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%.0f %s", bytes, kUnits[unit]);
  return absl::StrFormat("%.*f %s", bytes < 10 ? 2 : 1, bytes, kUnits[unit]);
}

Progress::Progress(std::string label, uint64_t total_bytes)
    : Progress(std::move(label), total_bytes, ::isatty(STDERR_FILENO) == 1) {}

Progress::Progress(std::string label, uint64_t total_bytes, bool enabled)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!enabled_) return;
  Draw(/*final=*/true);
}

void Progress::Advance(uint64_t bytes) {
  done_.fetch_add(bytes, std::memory_order_relaxed);
  if (enabled_) Draw(/*final=*/false);
}

void Progress::Draw(bool final) {
  absl::MutexLock lock(&draw_mu_);
  auto now = std::chrono::steady_clock::now();
  if (!final && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  uint64_t done = done_.load(std::memory_order_relaxed);
  double seconds = std::chrono::duration<double>(now - start_).count();
  double pct = total_ == 0 ? 100.0 : 100.0 * static_cast<double>(done) / static_cast<double>(total_);
  std::fprintf(stderr, "\r%s %3.0f%% %s/%s  %s/s   ", label_.c_str(), pct,
               HumanBytes(static_cast<double>(done)).c_str(), HumanBytes(static_cast<double>(total_)).c_str(),
               HumanBytes(seconds > 0 ? static_cast<double>(done) / seconds : 0).c_str());
  drawn_ = true;
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace strata
