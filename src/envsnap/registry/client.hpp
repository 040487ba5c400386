#pragma once
// A distribution-spec client for one registry host: picks https or http, follows
// the Basic / Bearer auth flow (tokens cached per scope), and retries transient
// failures with backoff. Failures that end the command are thrown as util::Fatal
// with exit 4 (network), 5 (authentication) or 6 (corrupt content). Safe to share
// between threads: each thread uses its own curl handle.

#include <mutex>
#include <optional>
#include <string>

#include "envsnap/registry/auth.hpp"
#include "envsnap/registry/http.hpp"

namespace envsnap::registry {

inline constexpr int exit_network = 4;
inline constexpr int exit_auth = 5;
inline constexpr int exit_corrupt = 6;

class Client {
public:
  Client(std::string host, TlsOptions tls, std::optional<Credentials> creds);

  const std::string& host() const { return m_host; }
  const TlsOptions& tls() const { return m_tls; }
  // GET /v2/: settles the scheme. With authenticate, a 401 runs the auth flow and a
  // rejection is fatal (exit 5), which is how login verifies credentials.
  void ping(bool authenticate);
  // scheme://host + path.
  std::string url(std::string_view path) const;

  // Sends req (its url absolute) with the authorization that scope ("repository:NAME:pull,push",
  // several separated by spaces) needs. A 401 runs the auth flow once; retryable failures
  // are retried when retry is set and req has no sink, and network failures that remain
  // are then fatal (exit 4); otherwise the caller sees them. Any HTTP status is returned,
  // but 401 after authenticating and 403 are fatal (exit 5).
  HttpResponse send(HttpRequest req, const std::string& scope, bool retry = true);

  // "authentication failed for HOST: WHY; run envsnap login HOST"
  [[noreturn]] void fail_auth(const std::string& why) const;

private:
  std::string authorization(const std::string& scope);
  void authenticate(const std::string& www_authenticate, const std::string& scope);

  std::string m_host;
  TlsOptions m_tls;
  std::optional<Credentials> m_creds;
  std::mutex m_mu;
  std::string m_scheme = "https";
  bool m_use_basic = false;
  std::map<std::string, std::string> m_tokens;  // scope -> bearer token
};

// A short description of a failed response for messages: "HTTP 500: <error code/message>" or libcurl's error.
std::string describe(const HttpResponse& r);

}  // namespace envsnap::registry
