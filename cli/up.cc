// strata up: a whole cluster on this machine (DESIGN.md §7). Starts a private redis-server
// (unless the cluster file names a Redis), the prefill and decode workers, then the router, each
// as a child process running this same binary; waits until every one answers /healthz; prints the
// URL and a curl command; supervises them until Ctrl-C or SIGTERM, then stops them all.
//
// Supervision (the cluster file's `supervise:` section, see Supervisor and RestartTracker):
//  - A child that dies while the cluster is starting fails the start: everything is stopped and
//    `strata up` exits 1 (a bad model, flag or port is not fixed by trying again).
//  - Once the cluster is up, a child that exits on its own, whatever its status or signal, is
//    restarted after a backoff (backoff_s, doubling up to max_backoff_s, back to backoff_s after
//    reset_after_s up); each exit and restart is logged with its status and the next backoff. The
//    others keep serving meanwhile: workers re-register in Redis under a new id, the router finds
//    them there; after a Redis restart every service's heartbeat puts its record back within a
//    third of its lease.
//  - A child that would need more than max_restarts restarts within window_s is given up on
//    ("giving up on decode-0 after 5 restarts in 60 s ..."). `strata up` carries on without it
//    while the cluster can still serve, i.e. the router and (if private) Redis are running and at
//    least one prefill and one decode worker are; otherwise it stops the rest and exits 1.
//  - Ctrl-C or SIGTERM stops everything (nothing is restarted from then on), router first, Redis
//    last; `strata up` then exits 0, even if it had given up on some worker before. A second
//    Ctrl-C skips the grace period.
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cli/cluster_config.h"
#include "cli/commands.h"
#include "cli/supervisor.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace strata::cli {
namespace {

struct UpFlags {
  std::string config = "deploy/local/cluster.yaml";
  std::string model;
  double ready_timeout_s = 300;
  double stop_timeout_s = 10;
};

std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

// The URL authority for a host (IPv6 literals need brackets).
std::string UrlHost(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

// Checks what would otherwise make a child fail in a less obvious way.
absl::Status Preflight(const ClusterConfig& config) {
  if (config.model.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.source, " names no model: set 'model' or pass --model DIR"));
  }
  if (!std::filesystem::exists(std::filesystem::path(config.model) / "config.json")) {
    return absl::NotFoundError(
        absl::StrCat("model folder '", config.model,
                     "' has no config.json (make a test model with `strata mkmodel --preset "
                     "tiny --out ",
                     config.model, "`)"));
  }
  if (config.transport == "inproc") {
    return absl::InvalidArgumentError(
        absl::StrCat(config.source,
                     ": transport 'inproc' works only inside one process (`strata serve "
                     "--colocated`); `strata up` runs separate processes: use 'ucx'"));
  }
  if (config.private_redis()) {
    if (absl::Status s = CheckPortFree("127.0.0.1", config.redis_port); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("the private Redis port: ", s.message(),
                                                 " (change redis_port in ", config.source, ")"));
    }
  }
  for (const ServiceEndpoints& service : config.AllServices()) {
    for (int port : {service.grpc_port, service.http_port}) {
      if (absl::Status s = CheckPortFree(service.host, port); !s.ok()) {
        return absl::UnavailableError(
            absl::StrCat(service.name, ": ", s.message(),
                         " (is another cluster running? ports are set in ", config.source, ")"));
      }
    }
  }
  return absl::OkStatus();
}

RestartPolicy PolicyOf(const SuperviseSettings& s) {
  return {.max_restarts = s.max_restarts,
          .window = absl::Seconds(s.window_s),
          .initial_backoff = absl::Seconds(s.backoff_s),
          .max_backoff = absl::Seconds(s.max_backoff_s),
          .reset_after = absl::Seconds(s.reset_after_s)};
}

// Why the cluster cannot serve any more, given the children given up on so far; "" while it can.
std::string WhatIsLost(const ClusterConfig& config, const Supervisor& supervisor) {
  if (supervisor.GivenUp("router")) return "the router is gone";
  if (config.private_redis() && supervisor.GivenUp("redis")) {
    // The workers would go on serving the router's last view, but nothing could register again.
    return "the private Redis is gone (no service can register or be found)";
  }
  auto all_gone = [&](int count, auto endpoints) {
    for (int i = 0; i < count; ++i) {
      if (!supervisor.GivenUp((config.*endpoints)(i).name)) return false;
    }
    return true;
  };
  if (all_gone(config.prefill.count, &ClusterConfig::PrefillEndpoints))
    return "no prefill worker is left";
  if (all_gone(config.decode.count, &ClusterConfig::DecodeEndpoints))
    return "no decode worker is left";
  return "";
}

std::string CurlCommand(const ClusterConfig& config) {
  const ServiceEndpoints router = config.RouterEndpoints();
  const std::string url = absl::StrCat(
      "http://", UrlHost(ConnectHost(router.host), router.http_port), "/v1/chat/completions");
  nlohmann::json body = {
      {"model", config.ServedModelName()},
      {"stream", true},
      {"max_tokens", 32},
      {"messages",
       nlohmann::json::array({{{"role", "user"}, {"content", "Hello! Who are you?"}}})}};
  std::string command = absl::StrCat("curl -N ", url, " \\\n  -H 'Content-Type: application/json'");
  if (!config.router.api_keys.empty()) {
    absl::StrAppend(
        &command, " \\\n  -H ",
        ShellQuote(absl::StrCat("Authorization: Bearer ", config.router.api_keys[0].key)));
  }
  absl::StrAppend(&command, " \\\n  -d ", ShellQuote(body.dump()));
  return command;
}

int RunUp(const UpFlags& flags) {
  absl::StatusOr<ClusterConfig> loaded = LoadClusterConfig(flags.config);
  if (!loaded.ok()) return Fail("up", std::string(loaded.status().message()));
  ClusterConfig config = *std::move(loaded);
  if (!flags.model.empty()) config.model = flags.model;
  if (absl::Status s = Preflight(config); !s.ok()) return Fail("up", std::string(s.message()));
  absl::StatusOr<std::string> self = SelfExecutable();
  if (!self.ok()) return Fail("up", std::string(self.status().message()));
  const std::string config_path = std::filesystem::absolute(flags.config).string();
  const std::string redis = config.RedisAddress();

  // Before any thread starts: SIGINT/SIGTERM/SIGCHLD are then taken only by `signals`.
  SignalWaiter signals;
  bool stop_requested = false;
  auto pause = [&](absl::Duration d) {
    return stop_requested = stop_requested || signals.Wait(d) != 0;
  };

  std::string redis_dir;  // removed after the supervisor (declared below) has stopped Redis
  absl::Cleanup remove_redis_dir = [&] {
    std::error_code ignored;
    if (!redis_dir.empty()) std::filesystem::remove_all(redis_dir, ignored);
  };
  Supervisor supervisor({.stop_timeout = absl::Seconds(flags.stop_timeout_s),
                         .restart = PolicyOf(config.supervise),
                         .events = [](absl::string_view message) {
                           spdlog::warn("strata up: {}", std::string(message));
                         }});
  const absl::Duration ready_timeout = absl::Seconds(flags.ready_timeout_s);
  int exit_code = 0;
  auto fail = [&](const std::string& message) {
    spdlog::error("strata up: {}", message);
    exit_code = 1;
  };

  // Runs the whole start-up; false if it failed or was interrupted.
  auto start_all = [&]() -> bool {
    if (config.private_redis()) {
      std::string dir = (std::filesystem::temp_directory_path() / "strata-redis-XXXXXX").string();
      if (mkdtemp(dir.data()) == nullptr) {
        fail("cannot create a temporary folder for Redis");
        return false;
      }
      redis_dir = dir;
      spdlog::info("strata up: starting a private Redis on {} (data in {}, not persisted)", redis,
                   redis_dir);
      absl::StatusOr<pid_t> pid = supervisor.Start(
          {.name = "redis",
           .argv = {"redis-server", "--port", std::to_string(config.redis_port), "--bind",
                    "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", redis_dir},
           .stop_order = 2});  // last: the services deregister on the way down
      if (!pid.ok()) {
        fail(absl::StrCat(pid.status().message(),
                          " (install the redis-server package, or set 'redis' in ", config.source,
                          ")"));
        return false;
      }
      absl::Status ready = supervisor.WaitReady(
          "redis", [&] { return RedisPings("127.0.0.1", config.redis_port, absl::Seconds(1)); },
          absl::Seconds(30), pause);
      if (!ready.ok()) {
        if (!absl::IsCancelled(ready)) fail(std::string(ready.message()));
        return false;
      }
    }

    // Every service: this binary, with the cluster file, its index, the Redis to register in.
    const auto level_name = spdlog::level::to_string_view(spdlog::get_level());
    const std::string log_level(level_name.data(), level_name.size());
    auto spec = [&](const ServiceEndpoints& service) {
      ChildSpec child{.name = service.name,
                      .argv = {*self, "--log-level", log_level, "--log-format", config.log_format,
                               service.role, "--config", config_path}};
      if (service.role != "router") {
        child.argv.insert(child.argv.end(), {"--index", std::to_string(service.index)});
      }
      child.argv.insert(child.argv.end(), {"--redis", redis});
      if (!flags.model.empty()) child.argv.insert(child.argv.end(), {"--model", flags.model});
      if (!config.ucx_tls.empty()) child.env.emplace_back("UCX_TLS", config.ucx_tls);
      child.stop_order = service.role == "router" ? 0 : 1;  // the router first: no new requests
      return child;
    };
    auto wait_healthy = [&](const ServiceEndpoints& service) {
      const std::string host = ConnectHost(service.host);
      absl::Status ready = supervisor.WaitReady(
          service.name,
          [&] {
            absl::StatusOr<int> code =
                HttpGetStatus(host, service.http_port, "/healthz", absl::Seconds(1));
            return code.ok() && *code == 200;
          },
          ready_timeout, pause);
      if (!ready.ok() && !absl::IsCancelled(ready)) fail(std::string(ready.message()));
      return ready.ok();
    };

    // Workers first (they load the model in parallel; the kvstores with them), then the router,
    // which finds them in Redis.
    std::vector<ServiceEndpoints> workers;
    for (int i = 0; i < config.kvstore.count; ++i) workers.push_back(config.KvStoreEndpoints(i));
    for (int i = 0; i < config.prefill.count; ++i) workers.push_back(config.PrefillEndpoints(i));
    for (int i = 0; i < config.decode.count; ++i) workers.push_back(config.DecodeEndpoints(i));
    for (const ServiceEndpoints& worker : workers) {
      if (absl::StatusOr<pid_t> pid = supervisor.Start(spec(worker)); !pid.ok()) {
        fail(std::string(pid.status().message()));
        return false;
      }
    }
    spdlog::info(
        "strata up: started {} prefill and {} decode worker(s){}; waiting for them to load the model",
        config.prefill.count, config.decode.count,
        config.kvstore.count > 0 ? absl::StrCat(" and ", config.kvstore.count, " kvstore(s)") : "");
    for (const ServiceEndpoints& worker : workers) {
      if (!wait_healthy(worker)) return false;
    }
    const ServiceEndpoints router = config.RouterEndpoints();
    if (absl::StatusOr<pid_t> pid = supervisor.Start(spec(router)); !pid.ok()) {
      fail(std::string(pid.status().message()));
      return false;
    }
    return wait_healthy(router);
  };

  if (start_all()) {
    const ServiceEndpoints router = config.RouterEndpoints();
    std::printf(
        "\nStrata cluster '%s' is ready: model %s, 1 router, %d prefill and %d decode worker(s), "
        "%d kvstore(s), Redis at %s%s.\n"
        "  OpenAI API: http://%s/v1\n\nTry:\n%s\n\nPress Ctrl-C to stop.\n",
        config.cluster.c_str(), config.ServedModelName().c_str(), config.prefill.count,
        config.decode.count, config.kvstore.count, redis.c_str(), config.private_redis() ? " (private)" : "",
        UrlHost(ConnectHost(router.host), router.http_port).c_str(), CurlCommand(config).c_str());
    std::fflush(stdout);
    std::vector<std::string> given_up;
    while (true) {
      absl::StatusOr<int> stop = supervisor.Watch(signals);
      if (stop.ok()) {
        stop_requested = true;
        break;
      }
      spdlog::error("strata up: {}", std::string(stop.status().message()));
      if (const std::string lost = WhatIsLost(config, supervisor); !lost.empty()) {
        fail(absl::StrCat("stopping the cluster: ", lost));
        break;
      }
      for (const ServiceEndpoints& service : config.AllServices()) {
        if (!supervisor.GivenUp(service.name) ||
            std::find(given_up.begin(), given_up.end(), service.name) != given_up.end()) {
          continue;
        }
        given_up.push_back(service.name);
        spdlog::warn("strata up: the cluster goes on serving without {}", service.name);
      }
    }
  }
  if (supervisor.running() > 0) spdlog::info("strata up: stopping the cluster");
  // A second Ctrl-C while stopping skips the grace period.
  supervisor.Stop([&] { return signals.Wait(absl::ZeroDuration()) != 0; });
  spdlog::info("strata up: every process has stopped");
  return exit_code;
}

}  // namespace

void AddUpCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<UpFlags>();
  CLI::App* cmd = app.add_subcommand(
      "up",
      "Start a whole cluster on this machine: a private Redis (unless the file names one), the "
      "router and the prefill and decode workers, each a child process. Waits until all are ready, "
      "prints the URL and a curl command, restarts a process that dies (as the file's 'supervise' "
      "section says), and stops every process on Ctrl-C or SIGTERM, or when the cluster can no "
      "longer serve.");
  cmd->add_option("--config", flags->config, "cluster file")->capture_default_str();
  cmd->add_option("--model", flags->model, "model folder (overrides the file's 'model')");
  cmd->add_option("--ready-timeout", flags->ready_timeout_s,
                  "seconds each service may take to get ready")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--stop-timeout", flags->stop_timeout_s,
                  "seconds services get to stop after SIGTERM before they are killed")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([flags, exit_code] { *exit_code = RunUp(*flags); });
}

}  // namespace strata::cli
