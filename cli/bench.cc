// strata bench: the benchmarks, each printing its figure, limit and ratio and recording the run
// in bench/results/.
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "bench/engine_bench.h"
#include "bench/kv_transfer_bench.h"
#include "bench/metrics_scrape.h"
#include "bench/kvstore_bench.h"
#include "bench/prefix_bench.h"
#include "common/status.h"
#include "bench/serve_bench.h"
#include "cli/commands.h"

namespace strata::cli {
namespace {

// `strata bench prefix`: cold and warm TTFT of one long document through a running cluster.
void AddBenchPrefixCommand(CLI::App* bench, int* exit_code) {
  auto o = std::make_shared<bench::PrefixBenchOptions>();
  CLI::App* cmd = bench->add_subcommand(
      "prefix", "TTFT of a long document asked about cold, then warm from the workers' caches, the kvstore's RAM "
                "tier and its SSD tier, against a running cluster (targets: warm <= 5% of cold at 128K tokens, "
                "<= 1% at 1M).");
  cmd->add_option("--url", o->url, "router root, http://host:port")->capture_default_str();
  cmd->add_option("--api-key", o->api_key, "sent as a Bearer token");
  cmd->add_option("--model", o->model, "model name (default: the first one /v1/models lists)");
  cmd->add_option("--doc-tokens", o->doc_tokens, "document length in tokens")->capture_default_str();
  cmd->add_option("--question-tokens", o->question_tokens, "question length in tokens")->capture_default_str();
  cmd->add_option("--output-tokens", o->output_tokens, "max_tokens per answer")->capture_default_str();
  cmd->add_option("--workers", o->workers,
                  "every prefill and decode worker's http://host:port (their caches are dropped to reach the kvstore)");
  cmd->add_option("--kvstores", o->kvstores, "every kvstore's http://host:port (their RAM tiers are dropped to reach the SSD tier)");
  cmd->add_option("--seed", o->seed, "the document (0: a new one every run)")->capture_default_str();
  cmd->add_option("--timeout", o->timeout_s, "per request, seconds")->capture_default_str();
  cmd->callback([o, exit_code] {
    absl::Status s = bench::RunPrefixBench(*o);
    if (!s.ok()) *exit_code = Fail("bench prefix", std::string(s.message()));
  });
}

// `strata bench kvstore`: the kvstore's SSD tier and fetch path against dd and ucx_perftest.
void AddBenchKvStoreCommand(CLI::App* bench, int* exit_code) {
  auto o = std::make_shared<bench::KvStoreBenchOptions>();
  CLI::App* cmd = bench->add_subcommand(
      "kvstore", "The kvstore's SSD tier read rate next to dd iflag=direct, and a fetch over UCX next to "
                 "ucx_perftest ucp_am_bw (targets: 80% of each).");
  cmd->add_option("--preset", o->preset, "KV layout of this preset")->capture_default_str();
  cmd->add_option("--dir", o->dir, "folder for the SSD tier (on the disk to measure)")->capture_default_str();
  cmd->add_option("--ssd-mib", o->ssd_mib, "bytes written and read back (0: skip)")->capture_default_str();
  cmd->add_option("--batch", o->batch, "slots per read batch")->capture_default_str();
  cmd->add_option("--fetch-blocks", o->fetch_blocks, "blocks per fetch (0: skip)")->capture_default_str();
  cmd->add_option("--fetch-rounds", o->fetch_rounds, "fetches timed (the best counts)")->capture_default_str();
  cmd->add_option("--transport-tls", o->transports, "UCX_TLS for the fetch")->capture_default_str();
  cmd->add_option("--perftest", o->perftest, "ucx_perftest binary")->capture_default_str();
  cmd->callback([o, exit_code] {
    absl::Status s = bench::RunKvStoreBench(*o);
    if (!s.ok()) *exit_code = Fail("bench kvstore", std::string(s.message()));
  });
}

// `strata bench serve`: load on a running router (or any OpenAI-compatible server).
void AddBenchServeCommand(CLI::App* bench, int* exit_code) {
  auto o = std::make_shared<bench::ServeBenchOptions>();
  CLI::App* serve = bench->add_subcommand(
      "serve", "OpenAI API load: TTFT, TPOT, ITL, end-to-end latency and throughput of streamed "
               "completions against a running router.");
  serve->add_option("--url", o->url, "server root, http://host:port")->capture_default_str();
  serve->add_option("--api-key", o->api_key, "sent as a Bearer token");
  serve->add_option("--model", o->model, "model name (default: the first one /v1/models lists)");
  serve->add_option("--endpoint", o->endpoint, "completions or chat")
      ->check(CLI::IsMember({"completions", "chat"}))
      ->capture_default_str();
  CLI::Option* concurrency =
      serve->add_option("--concurrency", o->concurrency, "closed loop: requests in flight")
          ->capture_default_str();
  serve->add_option("--request-rate", o->request_rate, "open loop: Poisson arrivals, requests/s")
      ->excludes(concurrency);
  serve->add_option("--num-requests", o->num_requests, "measured requests")->capture_default_str();
  serve->add_option("--prompt-tokens", o->prompt_tokens, "prompt length in tokens")
      ->capture_default_str();
  serve->add_option("--output-tokens", o->output_tokens, "max_tokens, with ignore_eos")
      ->capture_default_str();
  serve->add_flag("--text-prompt", o->text_prompt,
                  "completions: send words (about one token each) instead of token ids");
  serve->add_option("--warmup", o->warmup, "requests sent before the measured run")
      ->capture_default_str();
  serve->add_option("--seed", o->seed, "prompts and arrival times")->capture_default_str();
  serve->add_option("--timeout", o->timeout_s, "per request, seconds")->capture_default_str();
  serve->add_option("--io-threads", o->io_threads, "client threads")->capture_default_str();
  serve->add_option("--label", o->label, "figure name prefix in bench/results/serve.tsv");
  serve->add_option("--background-prompt-tokens", o->background_prompt_tokens,
                    "first send one request with a prompt this long, kept in prefill while the "
                    "measured requests run (interference)");
  serve->add_option("--background-lead", o->background_lead_s,
                    "seconds between the background request and the measured ones")->capture_default_str();
  serve->add_option("--ttft-limit-ms", o->ttft_limit_ms, "hold the TTFT figures to this limit (ms)");
  auto handoff = std::make_shared<std::vector<std::string>>();
  serve->add_option("--handoff-metrics", *handoff,
                    "decode workers' http://host:port (their /metrics): also report the KV hand-off "
                    "share of TTFT (target <= 5% for an 8K prompt)");
  serve->callback([o, handoff, exit_code] {
    // The decode workers count hand-offs and their exposed time; the share is their mean over
    // this run divided by the client's mean TTFT.
    auto scrape = [&](double* count, double* seconds) -> absl::Status {
      *count = *seconds = 0;
      for (const std::string& url : *handoff) {
        STRATA_ASSIGN_OR_RETURN(double c, bench::ScrapeMetric(url, "strata_decode_kv_handoffs_total"));
        STRATA_ASSIGN_OR_RETURN(double s, bench::ScrapeMetric(url, "strata_decode_kv_handoff_seconds_total"));
        *count += c;
        *seconds += s;
      }
      return absl::OkStatus();
    };
    double count0 = 0, seconds0 = 0, count1 = 0, seconds1 = 0;
    if (absl::Status s = scrape(&count0, &seconds0); !s.ok()) {
      *exit_code = Fail("bench serve", s.ToString());
      return;
    }
    absl::StatusOr<bench::ServeBenchResult> result = bench::RunServeBench(*o);
    if (!result.ok()) {
      *exit_code = Fail("bench serve", std::string(result.status().message()));
      return;
    }
    bench::PrintServeBench(*result);
    if (result->completed == 0) {
      *exit_code = Fail("bench serve", absl::StrCat("all ", result->failed, " requests failed: ",
                                                    result->errors.front().first));
      return;
    }
    bench::ReportServeBench(*result, "serve");
    if (handoff->empty()) return;
    if (absl::Status s = scrape(&count1, &seconds1); !s.ok()) {
      *exit_code = Fail("bench serve", s.ToString());
      return;
    }
    if (count1 <= count0) {
      *exit_code = Fail("bench serve", "the decode workers counted no KV hand-off (is a prefill worker registered?)");
      return;
    }
    const double handoff_s = (seconds1 - seconds0) / (count1 - count0);
    std::printf("KV hand-off (exposed, mean of %.0f): %.2f ms; TTFT mean %.2f ms\n", count1 - count0, handoff_s * 1e3,
                result->ttft_s.mean * 1e3);
    bench::Report({.name = result->label + "_kv_handoff_share_of_ttft",
                   .value = 100 * handoff_s / result->ttft_s.mean,
                   .unit = "%",
                   .limit = 5,
                   .higher_is_better = false},
                  "serve");
  });
}

// `strata bench kv-transfer`: KV puts into a peer process over UCX next to ucx_perftest.
void AddBenchKvTransferCommand(CLI::App* bench, int* exit_code) {
  auto o = std::make_shared<bench::KvTransferBenchOptions>();
  CLI::App* kv = bench->add_subcommand(
      "kv-transfer", "KV transfer: a stream of UCX puts into a forked peer's registered memory, GB/s next to "
                     "ucx_perftest ucp_put_bw on the same transports and sizes (target: 80%).");
  kv->add_option("--transport-tls", o->transports,
                 "UCX_TLS settings, each run on its own (repeat the flag, or separate by spaces)")
      ->capture_default_str();
  kv->add_option("--size", o->sizes,
                 "message bytes, comma-separated (default: 64 KiB, 1 MiB and one small-preset KV block)")
      ->delimiter(',');
  kv->add_option("--total-bytes", o->total_bytes, "bytes streamed per case")->capture_default_str();
  kv->add_option("--window", o->window, "puts in flight")->capture_default_str();
  kv->add_option("--ucx-perftest", o->perftest, "the reference tool")->capture_default_str();
  kv->callback([o, exit_code] {
    absl::Status status = bench::RunKvTransferBench(*o);
    if (!status.ok()) *exit_code = Fail("bench kv-transfer", std::string(status.message()));
  });
}

}  // namespace

void AddBenchCommand(CLI::App& app, int* exit_code) {
  CLI::App* bench = app.add_subcommand("bench", "Run a benchmark; figures are recorded in bench/results/.");
  bench->require_subcommand(1);
  auto o = std::make_shared<bench::EngineBenchOptions>();
  const char* home = std::getenv("HOME");
  o->model_cache = absl::StrCat(std::getenv("STRATA_CACHE") != nullptr ? std::getenv("STRATA_CACHE")
                                                                       : absl::StrCat(home != nullptr ? home : "/tmp", "/.cache/strata"),
                                "/bench-models");
  o->tokenizer_dir = DefaultTokenizerDir();
  CLI::App* engine = bench->add_subcommand(
      "engine", "CPU engine: decode tokens/s at several batches and contexts, prefill tokens/s, next to the "
                "memory-bandwidth roofline of this machine.");
  engine->add_option("--presets", o->presets, "model presets")->delimiter(',')->capture_default_str();
  engine->add_option("--batches", o->batches, "decode batch sizes")->delimiter(',')->capture_default_str();
  engine->add_option("--contexts", o->contexts, "decode context lengths")->delimiter(',')->capture_default_str();
  engine->add_option("--prefill-tokens", o->prefill_tokens, "prefill length")->capture_default_str();
  engine->add_option("--long-context", o->long_context, "decode context for the long-context case on tiny (0: skip)")
      ->capture_default_str();
  engine->add_option("--steps", o->steps, "decode steps timed per case")->capture_default_str();
  engine->add_option("--threads", o->threads, "worker threads (default: all cores)");
  engine->add_option("--model-cache", o->model_cache, "where the bench models are made (once)")->capture_default_str();
  engine->add_option("--tokenizer-dir", o->tokenizer_dir, "tokenizer files for making the bench models")
      ->capture_default_str();
  engine->add_flag("--profile-ops", o->profile_ops, "print where each decode case's time goes, op by op");
  engine->callback([o, exit_code] {
    absl::Status status = bench::RunEngineBench(*o);
    if (!status.ok()) *exit_code = Fail("bench engine", std::string(status.message()));
  });
  AddBenchServeCommand(bench, exit_code);
  AddBenchPrefixCommand(bench, exit_code);
  AddBenchKvStoreCommand(bench, exit_code);
  AddBenchKvTransferCommand(bench, exit_code);
}

}  // namespace strata::cli
