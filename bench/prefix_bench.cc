#include "bench/prefix_bench.h"

#include <chrono>
#include <cstdio>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "bench/report.h"
#include "cli/http_client.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Asked {
  double ttft_s = 0, total_s = 0;
  int64_t cached = -1, prompt = -1;
};

std::vector<int32_t> Ids(int64_t n, uint64_t& state) {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(static_cast<int32_t>(1000 + (state >> 33) % 60000));  // ordinary tokens
  }
  return ids;
}

absl::StatusOr<std::string> FirstModel(const cli::HttpUrl& url, const PrefixBenchOptions& o) {
  std::string body;
  cli::HttpClientRequest r{.method = "GET", .path = "/v1/models"};
  if (!o.api_key.empty()) r.headers.emplace_back("Authorization", absl::StrCat("Bearer ", o.api_key));
  STRATA_RETURN_IF_ERROR(cli::HttpFetch(url, r, [](const cli::HttpResponseHead&) {}, [&](absl::string_view piece) {
    body.append(piece.data(), piece.size());
    return true;
  }));
  const json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || j["data"].empty()) {
    return absl::FailedPreconditionError("GET /v1/models lists no model; pass --model");
  }
  return j["data"][0].value("id", "");
}

// One streamed completion: TTFT to the first content event, the usage at the end.
absl::StatusOr<Asked> Ask(const cli::HttpUrl& url, const PrefixBenchOptions& o, const std::string& model,
                          const std::vector<int32_t>& prompt) {
  const json body = {{"model", model},        {"prompt", prompt},  {"max_tokens", o.output_tokens},
                     {"temperature", 0},      {"ignore_eos", true}, {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  cli::HttpClientRequest r{.method = "POST", .path = "/v1/completions", .body = body.dump(),
                           .idle_timeout = absl::Seconds(o.timeout_s)};
  r.headers.emplace_back("Content-Type", "application/json");
  if (!o.api_key.empty()) r.headers.emplace_back("Authorization", absl::StrCat("Bearer ", o.api_key));
  Asked out;
  int status = 0;
  std::string error;
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> first;
  cli::SseSplitter sse;
  STRATA_RETURN_IF_ERROR(cli::HttpFetch(
      url, r, [&](const cli::HttpResponseHead& head) { status = head.status; },
      [&](absl::string_view piece) {
        if (status != 200) {
          error.append(piece.data(), piece.size());
          return true;
        }
        sse.Feed(piece, [&](const cli::SseEvent& e) {
          if (e.data == "[DONE]") return;
          const json j = json::parse(e.data, nullptr, false);
          if (j.is_discarded()) return;
          if (j.contains("error")) error = j["error"].value("message", e.data);
          if (j.contains("choices") && !j["choices"].empty() && !first) first = Clock::now();
          if (j.contains("usage") && j["usage"].is_object()) {
            out.prompt = j["usage"].value("prompt_tokens", int64_t{-1});
            if (j["usage"].contains("prompt_tokens_details")) {
              out.cached = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t{-1});
            }
          }
        });
        return true;
      }));
  if (status != 200 || !error.empty()) {
    return absl::UnavailableError(absl::StrCat("completion failed (HTTP ", status, "): ", error));
  }
  if (!first) return absl::DataLossError("the completion streamed no token");
  out.ttft_s = std::chrono::duration<double>(*first - start).count();
  out.total_s = std::chrono::duration<double>(Clock::now() - start).count();
  return out;
}

absl::Status Drop(const std::vector<std::string>& urls) {
  for (const std::string& u : urls) {
    STRATA_ASSIGN_OR_RETURN(cli::HttpUrl url, cli::ParseHttpUrl(u));
    int status = 0;
    STRATA_RETURN_IF_ERROR(cli::HttpFetch(
        url, {.method = "POST", .path = "/admin/drop-caches"}, [&](const cli::HttpResponseHead& h) { status = h.status; },
        [](absl::string_view) { return true; }));
    if (status != 200) return absl::FailedPreconditionError(absl::StrCat(u, "/admin/drop-caches answered ", status));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunPrefixBench(const PrefixBenchOptions& o) {
  if (o.doc_tokens < 256) return absl::InvalidArgumentError("--doc-tokens: at least 256 (two blocks)");
  STRATA_ASSIGN_OR_RETURN(cli::HttpUrl url, cli::ParseHttpUrl(o.url));
  std::string model = o.model;
  if (model.empty()) {
    STRATA_ASSIGN_OR_RETURN(model, FirstModel(url, o));
  }
  uint64_t state = o.seed != 0 ? o.seed : static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  const std::vector<int32_t> doc = Ids(o.doc_tokens, state);
  // ≤ 1% of cold at 1M tokens, ≤ 5% at 128K (and for anything shorter). A "1M" document is one
  // that fills most of the 1M context (the question and the answer need room too).
  const double share = o.doc_tokens > (int64_t{1} << 19) ? 0.01 : 0.05;
  const std::string name = absl::StrCat("prefix_doc", o.doc_tokens);

  struct Phase {
    std::string label;
    const std::vector<std::string>* drop_workers;
    const std::vector<std::string>* drop_kvstores;
  };
  const std::vector<std::string> none;
  std::vector<Phase> phases = {{"cold", &none, &none}, {"warm_local", &none, &none}};
  if (!o.workers.empty()) phases.push_back({"warm_kvstore_ram", &o.workers, &none});
  if (!o.workers.empty() && !o.kvstores.empty()) phases.push_back({"warm_kvstore_ssd", &o.workers, &o.kvstores});
  double cold = 0;
  for (const Phase& p : phases) {
    STRATA_RETURN_IF_ERROR(Drop(*p.drop_workers));
    STRATA_RETURN_IF_ERROR(Drop(*p.drop_kvstores));
    std::vector<int32_t> prompt = doc;
    const std::vector<int32_t> question = Ids(o.question_tokens, state);
    prompt.insert(prompt.end(), question.begin(), question.end());
    std::fprintf(stderr, "%s: %s (%lld tokens)...\n", name.c_str(), p.label.c_str(), static_cast<long long>(prompt.size()));
    STRATA_ASSIGN_OR_RETURN(Asked a, Ask(url, o, model, prompt));
    std::printf("%-18s TTFT %9.3f s  cached %8lld of %lld prompt tokens\n", p.label.c_str(), a.ttft_s,
                static_cast<long long>(a.cached), static_cast<long long>(a.prompt));
    std::fflush(stdout);
    if (p.label == "cold") {
      cold = a.ttft_s;
      Report({absl::StrCat(name, "_cold_ttft"), a.ttft_s, "s", 0, false}, o.results_file);
      continue;
    }
    Report({absl::StrCat(name, "_", p.label, "_ttft"), a.ttft_s, "s", share * cold, false}, o.results_file);
    Report({absl::StrCat(name, "_", p.label, "_cached_tokens"), static_cast<double>(a.cached), "tokens",
            static_cast<double>(o.doc_tokens / 128 * 128), true},
           o.results_file);
  }
  return absl::OkStatus();
}

}  // namespace strata::bench
