#include "bench/metrics_scrape.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace strata::bench {

absl::StatusOr<double> ScrapeMetric(const std::string& url, const std::string& series) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) return absl::InvalidArgumentError(absl::StrCat("not an http:// URL: ", url));
  rest = rest.substr(0, rest.find('/'));
  const size_t colon = rest.rfind(':');
  const std::string host(rest.substr(0, colon));
  const std::string port = colon == absl::string_view::npos ? "80" : std::string(rest.substr(colon + 1));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addrs = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &addrs) != 0 || addrs == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", url));
  }
  const int fd = ::socket(addrs->ai_family, addrs->ai_socktype, addrs->ai_protocol);
  const bool connected = fd >= 0 && ::connect(fd, addrs->ai_addr, addrs->ai_addrlen) == 0;
  freeaddrinfo(addrs);
  if (!connected) {
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", url));
  }
  const std::string request = absl::StrCat("GET /metrics HTTP/1.0\r\nHost: ", host, "\r\n\r\n");
  std::string response;
  bool ok = ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
  char buf[16384];
  for (ssize_t n; ok && (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) response.append(buf, static_cast<size_t>(n));
  ::close(fd);
  if (!ok || (!absl::StartsWith(response, "HTTP/1.1 200") && !absl::StartsWith(response, "HTTP/1.0 200"))) {
    return absl::UnavailableError(absl::StrCat("GET ", url, "/metrics failed"));
  }
  for (absl::string_view line : absl::StrSplit(response, '\n')) {
    line = absl::StripTrailingAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      double v;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return absl::NotFoundError(absl::StrCat(url, "/metrics has no ", series));
}

}  // namespace strata::bench
