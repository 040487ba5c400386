#include "envsnap/registry/client.hpp"

#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "envsnap/registry/reference.hpp"
#include "envsnap/util/result.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::registry {

namespace {

std::vector<std::string> split_scopes(const std::string& scope) {
  std::vector<std::string> out;
  for (auto s : util::split(scope, ' '))
    if (!s.empty()) out.emplace_back(s);
  return out;
}

}  // namespace

std::string describe(const HttpResponse& r) {
  if (r.curl_code != 0 && r.status == 0) return r.error;
  std::string detail;
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("errors") && j["errors"].is_array())
    for (auto& e : j["errors"]) {
      if (!e.is_object()) continue;
      std::string code = e.contains("code") && e["code"].is_string() ? e["code"].get<std::string>() : "";
      std::string msg = e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>() : "";
      detail += (detail.empty() ? "" : "; ") + code + (code.empty() || msg.empty() ? "" : ": ") + msg;
    }
  if (detail.empty() && !r.body.empty() && r.body.size() < 200 && util::is_utf8(r.body))
    detail = std::string(util::trim(r.body));
  std::string s = fmt::format("HTTP {}", r.status);
  if (!detail.empty()) s += ": " + util::printable(detail);
  if (r.curl_code != 0) s += " (" + r.error + ")";
  return s;
}

Client::Client(std::string host, TlsOptions tls, std::optional<Credentials> creds)
    : m_host(std::move(host)), m_tls(std::move(tls)), m_creds(std::move(creds)) {}

std::string Client::url(std::string_view path) const {
  std::string scheme;
  {
    std::lock_guard lk(const_cast<std::mutex&>(m_mu));
    scheme = m_scheme;
  }
  return scheme + "://" + m_host + std::string(path);
}

void Client::fail_auth(const std::string& why) const {
  throw util::Fatal(exit_auth, fmt::format("authentication failed for {}: {}; run envsnap login {}", m_host, why, m_host));
}

void Client::ping(bool authenticate) {
  HttpRequest req;
  HttpResponse r;
  for (int attempt = 0;; ++attempt) {
    req.url = "https://" + m_host + "/v2/";
    r = perform(req, m_tls);
    if (r.status == 0 && (is_loopback_host(m_host) || !m_tls.verify)) {
      HttpRequest plain;
      plain.url = "http://" + m_host + "/v2/";
      auto p = perform(plain, m_tls);
      bool registry_like = p.status == 200 || p.status == 401 || !p.header("docker-distribution-api-version").empty();
      if (p.status != 0 && registry_like) {
        std::lock_guard lk(m_mu);
        m_scheme = "http";
        r = std::move(p);
      }
    }
    if (attempt < max_retries && is_retryable(r.curl_code, r.status)) {
      std::this_thread::sleep_for(retry_delay(attempt));
      continue;
    }
    break;
  }
  if (r.status == 0)
    throw util::Fatal(exit_network, fmt::format("cannot reach registry {}: {}", m_host, describe(r)));
  if (r.status == 401 && authenticate) {
    req.url = url("/v2/");
    send(req, "");
    return;
  }
  if (r.status != 200 && r.status != 401)
    throw util::Fatal(exit_network, fmt::format("{} does not answer like a registry at /v2/: {}", m_host, describe(r)));
}

std::string Client::authorization(const std::string& scope) {
  std::lock_guard lk(m_mu);
  if (m_use_basic && m_creds) return "Authorization: Basic " + base64_encode(m_creds->user + ":" + m_creds->password);
  if (auto it = m_tokens.find(scope); it != m_tokens.end()) return "Authorization: Bearer " + it->second;
  return {};
}

void Client::authenticate(const std::string& header, const std::string& scope) {
  auto challenges = parse_www_authenticate(header);
  const Challenge* bearer = nullptr;
  const Challenge* basic = nullptr;
  for (auto& c : challenges) {
    if (c.scheme == "bearer" && !bearer) bearer = &c;
    if (c.scheme == "basic" && !basic) basic = &c;
  }
  if (bearer) {
    auto realm = bearer->params.find("realm");
    if (realm == bearer->params.end() || realm->second.empty())
      fail_auth(fmt::format("the registry's Bearer challenge has no realm: {}", header));
    std::string url = realm->second;
    std::vector<std::string> query;
    if (auto s = bearer->params.find("service"); s != bearer->params.end()) query.push_back("service=" + url_encode(s->second));
    auto scopes = split_scopes(scope);
    if (scopes.empty())
      if (auto s = bearer->params.find("scope"); s != bearer->params.end()) scopes = split_scopes(s->second);
    for (auto& s : scopes) query.push_back("scope=" + url_encode(s));
    for (size_t i = 0; i < query.size(); ++i) url += (i == 0 && url.find('?') == std::string::npos ? "?" : "&") + query[i];
    HttpRequest treq;
    treq.url = url;
    treq.follow_redirects = true;
    if (m_creds) treq.headers.push_back("Authorization: Basic " + base64_encode(m_creds->user + ":" + m_creds->password));
    HttpResponse tr;
    for (int attempt = 0;; ++attempt) {
      tr = perform(treq, m_tls);
      if (attempt < max_retries && is_retryable(tr.curl_code, tr.status)) {
        std::this_thread::sleep_for(retry_delay(attempt));
        continue;
      }
      break;
    }
    if (tr.status == 0)
      throw util::Fatal(exit_network, fmt::format("cannot reach the token server {} of {}: {}", realm->second, m_host, describe(tr)));
    if (tr.status == 401 || tr.status == 403)
      fail_auth(fmt::format("the token server {} refused {} ({})", realm->second,
                            m_creds ? "the credentials from " + m_creds->source : "anonymous access", describe(tr)));
    if (tr.status != 200)
      throw util::Fatal(exit_network, fmt::format("token server {} of {}: {}", realm->second, m_host, describe(tr)));
    auto j = nlohmann::json::parse(tr.body, nullptr, false);
    std::string token;
    if (!j.is_discarded() && j.is_object()) {
      if (j.contains("token") && j["token"].is_string()) token = j["token"].get<std::string>();
      if (token.empty() && j.contains("access_token") && j["access_token"].is_string())
        token = j["access_token"].get<std::string>();
    }
    if (token.empty())
      throw util::Fatal(exit_network, fmt::format("token server {} of {} answered without a token", realm->second, m_host));
    std::lock_guard lk(m_mu);
    m_tokens[scope] = token;
    return;
  }
  if (basic) {
    if (!m_creds) fail_auth("the registry asks for a user name and password and none are configured");
    std::lock_guard lk(m_mu);
    m_use_basic = true;
    return;
  }
  fail_auth(header.empty() ? "HTTP 401 without a WWW-Authenticate challenge"
                           : fmt::format("unsupported challenge '{}'", util::printable(header)));
}

HttpResponse Client::send(HttpRequest req, const std::string& scope, bool retry) {
  bool authenticated = false;
  const size_t base_headers = req.headers.size();
  for (int attempt = 0;;) {
    req.headers.resize(base_headers);
    if (auto a = authorization(scope); !a.empty()) req.headers.push_back(a);
    auto r = perform(req, m_tls);
    if (r.status == 401 && r.curl_code == 0) {
      if (authenticated) {
        std::string why = m_creds ? fmt::format("the registry rejected the credentials from {} ({})", m_creds->source, describe(r))
                                  : fmt::format("the registry requires credentials and none are configured ({})", describe(r));
        fail_auth(why);
      }
      authenticate(r.header("www-authenticate"), scope);
      authenticated = true;
      continue;
    }
    if (r.status == 403 && r.curl_code == 0)
      fail_auth(fmt::format("access denied to {} ({})", req.url, describe(r)));
    if (retry && !req.sink && attempt < max_retries && is_retryable(r.curl_code, r.status)) {
      std::this_thread::sleep_for(retry_delay(attempt));
      ++attempt;
      continue;
    }
    if (retry && !req.sink && (r.status == 0 || r.curl_code != 0))
      throw util::Fatal(exit_network, fmt::format("{} {}: {}", req.method, req.url, describe(r)));
    return r;
  }
}

}  // namespace envsnap::registry
