// Tokenizer throughput on one core, and load time.
//
//   tokenizer_bench [--benchmark_filter=...]     (STRATA_TOKENIZER_DIR overrides the models folder
//                                                 configured with -DSTRATA_TOKENIZER_DIR)
//
// Encodes ~4 MB of mixed text, cut into ~8 KB documents as requests would be: the corpus of the
// parity test (prose, code, numbers, CJK, emoji, special tokens) interleaved with generated
// paragraphs of pseudo-words, CJK runs and code-like lines. The pseudo-words give over a hundred
// thousand distinct words, more than the word cache holds, so the figure is not a cache-hit
// rate. Reports MB/s (10^6 bytes of input text per second) against the 5 MB/s target.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/report.h"
#include "benchmark/benchmark.h"
#include "engine/tokenizer.h"

namespace strata::bench {
namespace {

using engine::Tokenizer;

constexpr size_t kTextBytes = 4 << 20;
constexpr size_t kDocumentBytes = 8 << 10;

std::string TokenizerDir() {
  const char* env = std::getenv("STRATA_TOKENIZER_DIR");
  return env != nullptr && *env != '\0' ? env : STRATA_TOKENIZER_DIR_DEFAULT;
}

struct Corpus {
  std::vector<std::string> documents;
  size_t bytes = 0;
};

void AppendCodePoint(uint32_t cp, std::string* out) {
  if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
  }
  out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
}

Corpus BuildCorpus() {
  std::vector<std::string> files;
  const std::filesystem::path dir =
      std::filesystem::path(STRATA_SOURCE_DIR) / "tests/data/tokenizer";
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  for (const auto& path : paths) {
    std::ifstream in(path, std::ios::binary);
    files.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  std::mt19937_64 rng(2024);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  static const char* const kSyllables[] = {"ka",  "ri",  "to",  "men",  "sha",  "lo",  "vek",
                                           "tra", "qui", "zon", "el",   "an",   "dor", "mi",
                                           "ne",  "su",  "pha", "gri",  "ul",   "bre", "x",
                                           "o",   "ist", "ing", "tion", "able", "th",  "ou"};
  constexpr size_t kNumSyllables = std::size(kSyllables);
  auto word = [&] {
    std::string w;
    for (size_t s = 0, n = 1 + pick(4); s < n; ++s) w += kSyllables[pick(kNumSyllables)];
    if (pick(10) == 0) w[0] = static_cast<char>(w[0] - 'a' + 'A');
    return w;
  };
  static const char* const kPunctuation[] = {".", ",", ";", ":", "!", "?", " -", "\"", "'s"};

  Corpus corpus;
  std::string document;
  std::string block;
  while (corpus.bytes < kTextBytes) {
    block.clear();
    const size_t kind = pick(10);
    if (kind < 3 && !files.empty()) {
      block = files[pick(files.size())];
    } else if (kind < 8) {  // prose of pseudo-words
      for (size_t i = 0, n = 60 + pick(60); i < n; ++i) {
        block += word();
        if (pick(8) == 0) block += kPunctuation[pick(std::size(kPunctuation))];
        if (pick(25) == 0) block += " " + std::to_string(rng() % 1000000);
        block += ' ';
      }
      block += "\n\n";
    } else if (kind == 8) {  // CJK run with punctuation
      for (size_t i = 0, n = 50 + pick(150); i < n; ++i) {
        AppendCodePoint(pick(12) == 0 ? 0xFF0C : 0x4E00 + static_cast<uint32_t>(pick(0x51A5)),
                        &block);
      }
      block += "\xE3\x80\x82\n";  // 。
    } else {                      // code-like lines
      for (size_t i = 0, n = 3 + pick(8); i < n; ++i) {
        block += "    auto " + word() + "_" + word() + " = " + word() + "->" + word() + "(" +
                 std::to_string(pick(4096)) + ", \"" + word() + "\");  // " + word() + "\n";
      }
    }
    document += block;
    corpus.bytes += block.size();
    if (document.size() >= kDocumentBytes) {
      corpus.documents.push_back(std::move(document));
      document.clear();
    }
  }
  if (!document.empty()) corpus.documents.push_back(std::move(document));
  return corpus;
}

const Corpus& SharedCorpus() {
  static const Corpus* const corpus = new Corpus(BuildCorpus());
  return *corpus;
}

// Loaded once for the warm benchmark (the word cache fills as in a long-running server).
const Tokenizer* SharedTokenizer() {
  static const Tokenizer* const tokenizer = [] {
    auto loaded = Tokenizer::Load(TokenizerDir());
    if (!loaded.ok()) {
      std::cerr << "tokenizer_bench: " << loaded.status()
                << " (run `make tokenizer` / deploy/tokenizer/fetch.sh)\n";
      return static_cast<Tokenizer*>(nullptr);
    }
    return loaded->release();
  }();
  return tokenizer;
}

size_t EncodeAll(const Tokenizer& tokenizer, const Corpus& corpus) {
  size_t tokens = 0;
  for (const std::string& document : corpus.documents) {
    std::vector<int32_t> ids = tokenizer.Encode(document);
    benchmark::DoNotOptimize(ids.data());
    tokens += ids.size();
  }
  return tokens;
}

void BM_Encode(benchmark::State& state) {
  const Tokenizer* tokenizer = SharedTokenizer();
  if (tokenizer == nullptr) {
    state.SkipWithError("tokenizer did not load");
    return;
  }
  const Corpus& corpus = SharedCorpus();
  size_t tokens = 0;
  for (auto _ : state) tokens += EncodeAll(*tokenizer, corpus);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus.bytes));
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  state.counters["bytes_per_token"] =
      static_cast<double>(corpus.bytes * state.iterations()) / static_cast<double>(tokens);
}
BENCHMARK(BM_Encode)->Unit(benchmark::kMillisecond)->MinTime(3.0);

// A freshly loaded tokenizer per pass: every word starts uncached.
void BM_EncodeColdCache(benchmark::State& state) {
  const Corpus& corpus = SharedCorpus();
  for (auto _ : state) {
    state.PauseTiming();
    auto tokenizer = Tokenizer::Load(TokenizerDir());
    if (!tokenizer.ok()) {
      state.SkipWithError("tokenizer did not load");
      return;
    }
    state.ResumeTiming();
    EncodeAll(**tokenizer, corpus);
    state.PauseTiming();
    tokenizer->reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus.bytes));
}
BENCHMARK(BM_EncodeColdCache)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_Load(benchmark::State& state) {
  for (auto _ : state) {
    auto tokenizer = Tokenizer::Load(TokenizerDir());
    if (!tokenizer.ok()) {
      state.SkipWithError("tokenizer did not load");
      return;
    }
    benchmark::DoNotOptimize(tokenizer->get());
  }
}
BENCHMARK(BM_Load)->Unit(benchmark::kMillisecond)->Iterations(5);

// Prints as usual and keeps each benchmark's seconds per iteration for the report.
class CapturingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred || run.iterations == 0) continue;
      const std::string name = run.benchmark_name();
      seconds_[name.substr(0, name.find('/'))] =
          run.real_accumulated_time / static_cast<double>(run.iterations);
    }
    ConsoleReporter::ReportRuns(runs);
  }
  // Seconds per iteration of `benchmark`, or a negative value if it did not run.
  double seconds(const std::string& benchmark) const {
    auto it = seconds_.find(benchmark);
    return it == seconds_.end() ? -1 : it->second;
  }

 private:
  std::map<std::string, double> seconds_;
};

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  using strata::bench::Report;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const strata::bench::Corpus& corpus = strata::bench::SharedCorpus();
  std::cout << "tokenizer_bench: " << corpus.bytes << " bytes of text in "
            << corpus.documents.size() << " documents\n";
  strata::bench::CapturingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  const double mb = static_cast<double>(corpus.bytes) / 1e6;
  bool ran = false;
  if (double s = reporter.seconds("BM_Encode"); s > 0) {
    Report({"tokenizer_encode_1core", mb / s, "MB/s", 5.0}, "tokenizer");
    ran = true;
  }
  if (double s = reporter.seconds("BM_EncodeColdCache"); s > 0) {
    Report({"tokenizer_encode_1core_cold_cache", mb / s, "MB/s", 5.0}, "tokenizer");
    ran = true;
  }
  if (double s = reporter.seconds("BM_Load"); s > 0) {
    Report({"tokenizer_load", s, "s", 1.0, /*higher_is_better=*/false}, "tokenizer");
    ran = true;
  }
  return ran ? 0 : 1;
}
