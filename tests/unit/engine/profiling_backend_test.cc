// engine::ProfilingBackend: forwards every op to the backend it wraps without changing a bit of
// the results, and counts each op's calls (linears per weight format and shape, with the weight
// bytes they read) for its report.
#include "engine/profiling_backend.h"

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/backend_ops_test_util.h"

namespace strata::engine::backend_test {
namespace {

const ProfilingBackend::OpStats* Find(const std::vector<ProfilingBackend::OpStats>& stats,
                                      const std::string& key) {
  for (const ProfilingBackend::OpStats& s : stats) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

TEST(ProfilingBackendTest, ForwardsOpsBitForBitAndCountsThem) {
  auto cpu = CpuBackend::Create({.threads = 2});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  Backend& inner = **cpu;
  ProfilingBackend profiler(inner);
  EXPECT_EQ(profiler.name(), inner.name());
  EXPECT_EQ(profiler.host_memory(), inner.host_memory());

  Random rng(11);
  const int64_t n = 3;
  const TestWeight fp8 = MakeWeight(WeightFormat::kFp8Block, 256, 384, rng);
  const TestWeight bf16 = MakeWeight(WeightFormat::kBf16, 130, 256, rng);
  // Weights made resident through the wrapper: the inner backend sees the same memory.
  const WeightView fp8_view = ResidentView(profiler, fp8), bf16_view = ResidentView(profiler, bf16);
  const Buffer x = Buffer::Of(profiler, rng.Bf16Normals(n * 384));
  const Buffer norm_w = Buffer::Of(profiler, rng.Bf16Normals(384));
  Buffer want(inner, n * 256 * 4), got(profiler, n * 256 * 4);

  inner.Linear(fp8_view, x.as<float>(), n, want.as<float>());
  profiler.Linear(fp8_view, x.as<float>(), n, got.as<float>());
  ExpectBitIdentical(want.Read<float>(), got.Read<float>(), "Linear fp8");
  profiler.Linear(fp8_view, x.as<float>(), n, got.as<float>());  // the same shape again

  Buffer want_bf16(inner, n * 130 * 4), got_bf16(profiler, n * 130 * 4);
  inner.Linear(bf16_view, x.as<float>(), n, want_bf16.as<float>());
  profiler.Linear(bf16_view, x.as<float>(), n, got_bf16.as<float>());
  ExpectBitIdentical(want_bf16.Read<float>(), got_bf16.Read<float>(), "Linear bf16");

  Buffer want_norm(inner, n * 384 * 4), got_norm(profiler, n * 384 * 4);
  inner.RmsNorm(x.as<float>(), norm_w.as<float>(), n, 384, 1e-6f, want_norm.as<float>());
  profiler.RmsNorm(x.as<float>(), norm_w.as<float>(), n, 384, 1e-6f, got_norm.as<float>());
  ExpectBitIdentical(want_norm.Read<float>(), got_norm.Read<float>(), "RmsNorm");

  const std::vector<ProfilingBackend::OpStats> stats = profiler.Stats();
  ASSERT_EQ(stats.size(), 3u);  // memory ops are forwarded, not counted
  const auto* linear_fp8 = Find(stats, "Linear fp8 [256x384]");
  const auto* linear_bf16 = Find(stats, "Linear bf16 [130x256]");
  const auto* rms_norm = Find(stats, "RmsNorm");
  ASSERT_NE(linear_fp8, nullptr);
  ASSERT_NE(linear_bf16, nullptr);
  ASSERT_NE(rms_norm, nullptr);
  EXPECT_EQ(linear_fp8->calls, 2);
  EXPECT_EQ(linear_bf16->calls, 1);
  EXPECT_EQ(rms_norm->calls, 1);
  // FP8: a byte per weight plus one scale per 128×128 block (2×3 blocks); BF16: two bytes.
  EXPECT_EQ(linear_fp8->weight_bytes, 2.0 * (256 * 384 + 2 * 3));
  EXPECT_EQ(linear_bf16->weight_bytes, 2.0 * 130 * 256);
  EXPECT_EQ(rms_norm->weight_bytes, 0);
  for (size_t i = 1; i < stats.size(); ++i) EXPECT_GE(stats[i - 1].seconds, stats[i].seconds);

  const std::string report = profiler.Report(1.0);
  EXPECT_NE(report.find("Linear fp8 [256x384]"), std::string::npos) << report;
  EXPECT_NE(report.find("Linear bf16 [130x256]"), std::string::npos) << report;
  EXPECT_NE(report.find("RmsNorm"), std::string::npos) << report;
  EXPECT_NE(report.find("other (not in ops)"), std::string::npos) << report;

  profiler.Reset();
  EXPECT_TRUE(profiler.Stats().empty());
}

}  // namespace
}  // namespace strata::engine::backend_test
