// `strata bench serve`: an OpenAI-API load generator (like vLLM's benchmark_serving and SGLang's
// bench_serving) for the router or any OpenAI-compatible server. It streams completions
// ("stream": true with usage) with prompts of a chosen length and exactly `output_tokens` tokens
// out ("ignore_eos": true), either closed loop (`concurrency` requests always in flight) or open
// loop (Poisson arrivals at `request_rate`), and measures per request the time to first token,
// every inter-token gap, the time per output token and the end-to-end latency.
//
//   ServeBenchOptions options{.url = "http://127.0.0.1:8000", .num_requests = 200};
//   STRATA_ASSIGN_OR_RETURN(ServeBenchResult result, RunServeBench(options));
//   PrintServeBench(result);                 // the summary table
//   ReportServeBench(result, "serve");       // figures into bench/results/serve.tsv
//
// RunServeBench blocks its caller; the HTTP client runs on `io_threads` threads of its own (the
// /v1/models lookup, when no model is named, on the caller's thread).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/report.h"

namespace strata::bench {

struct ServeBenchOptions {
  std::string url = "http://127.0.0.1:8000";  // http://host[:port][/prefix]; requests go to /v1/...
  std::string api_key;                        // sent as "Authorization: Bearer <key>" when set
  std::string model;                          // empty: the first model GET /v1/models lists
  std::string endpoint = "completions";       // "completions" or "chat"
  int64_t concurrency = 8;                    // closed loop: requests in flight
  double request_rate = 0;      // > 0: open loop, Poisson arrivals (requests/s); concurrency unused
  int64_t num_requests = 100;   // measured requests
  int64_t prompt_tokens = 256;  // prompt length (exact with token ids, approximate with text)
  int64_t output_tokens = 128;  // max_tokens, with ignore_eos so every request makes this many
  bool text_prompt = false;     // completions: send words instead of token ids (chat always does)
  int64_t warmup = 1;           // requests sent (and not measured) before the run
  uint64_t seed = 0;            // prompts and arrival times
  double timeout_s = 300;       // per request, connect to [DONE]
  int io_threads = 1;           // client threads, each with its own connections
  std::string label;  // figure name prefix; empty: serve_<endpoint>_in<P>_out<O>_c<N> (or _r<R>)
  // Interference: > 0 sends one request with a prompt of this many tokens first (it stays in
  // prefill while the measured requests run; it is cut off after them), waiting
  // `background_lead_s` before the measured requests start. The label gains _bg<N>.
  int64_t background_prompt_tokens = 0;
  double background_lead_s = 5;
  // > 0: the TTFT figures are held to this limit (milliseconds), e.g. issue #11's "a 100-token
  // request's TTFT ≤ 1 s while a 64K-token prompt is prefilled".
  double ttft_limit_ms = 0;
};

// One measured request. Times are seconds; `scheduled_s` and `start_s` count from the start of
// the measured run, the others from `start_s`.
struct RequestRecord {
  bool ok = false;
  std::string error;  // why it failed (empty when ok)
  int http_status = 0;
  double scheduled_s = 0;       // when it was due (open loop: its Poisson arrival)
  double start_s = 0;           // when it was sent
  double ttft_s = 0;            // first token chunk
  double e2e_s = 0;             // data: [DONE]
  std::vector<double> itl_s;    // gaps between consecutive token chunks
  int64_t streamed_tokens = 0;  // token chunks received
  bool has_usage = false;       // the include_usage chunk arrived; the counts below are from it
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt_tokens_details.cached_tokens
};

// Linear-interpolated percentiles (numpy's default), over the values given.
struct Distribution {
  int64_t count = 0;
  double mean = 0, min = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Distribution Summarize(std::vector<double> values);

struct ServeBenchResult {
  std::string label;  // figure name prefix
  std::string model;  // the model the requests named
  ServeBenchOptions options;
  std::vector<RequestRecord> requests;  // request order, warm-up excluded
  int64_t completed = 0;
  int64_t failed = 0;
  // Distinct failure messages with how often each occurred, in order of first occurrence.
  std::vector<std::pair<std::string, int64_t>> errors;
  double duration_s = 0;      // start of the run to the last request's end
  int64_t input_tokens = 0;   // successful requests: usage.prompt_tokens
  int64_t output_tokens = 0;  // successful requests: usage.completion_tokens
  int64_t cached_tokens = 0;
  double request_throughput = 0;  // successful requests / duration
  double output_throughput = 0;   // output tokens / duration
  double total_throughput = 0;    // (input + output tokens) / duration
  Distribution ttft_s;            // successful requests
  Distribution tpot_s;  // (e2e − ttft) / (completion_tokens − 1), requests with ≥ 2 tokens
  Distribution itl_s;   // every inter-token gap of every successful request
  Distribution e2e_s;
};

// Runs warm-up and measured requests against `options.url`. Failed requests are counted in the
// result, not returned as errors; the status is an error for bad options, an unreachable server,
// a failed model lookup, or when every warm-up request failed (the first failure's message).
absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& options);

// Prints the summary table (counts, throughputs, TTFT/TPOT/ITL/E2E mean and percentiles, the
// first few distinct errors) to stdout.
void PrintServeBench(const ServeBenchResult& result);

// The recorded figures: TTFT, TPOT and ITL p50/p99 (ms), req/s, output and total tok/s and the
// failure count; latency and throughput have no target yet (limit 0), failures must be 0.
std::vector<Figure> ServeBenchFigures(const ServeBenchResult& result);

// Report()s each of ServeBenchFigures into bench/results/<results_file>.tsv.
void ReportServeBench(const ServeBenchResult& result, const std::string& results_file = "serve");

// Splits a text/event-stream body into events, however the bytes arrive: an event may span
// several Feed calls and one call may hold several events. Calls `on_data` with each event's
// data (multi-line data joined with '\n'); comments and other fields are skipped. One thread.
class SseParser {
 public:
  void Feed(std::string_view bytes, const std::function<void(std::string_view data)>& on_data);

 private:
  void Line(std::string_view line, const std::function<void(std::string_view data)>& on_data);

  std::string pending_;  // bytes after the last complete line
  std::string data_;     // data lines of the event being read
  bool has_data_ = false;
};

}  // namespace strata::bench
