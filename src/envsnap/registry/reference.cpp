#include "envsnap/registry/reference.hpp"

#include <regex>

#include <fmt/format.h>

#include "envsnap/oci/reference.hpp"

namespace envsnap::registry {

namespace {

bool host_syntax_ok(std::string_view host) {
  static const std::regex host_re(R"((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)");
  return std::regex_match(std::string(host), host_re);
}

std::string_view host_without_port(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    auto close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(1, close - 1);
  }
  auto colon = host.rfind(':');
  return colon == std::string_view::npos ? host : host.substr(0, colon);
}

}  // namespace

std::string RegistryReference::str() const { return host + "/" + repository + (digest ? "@" + digest->str() : ":" + tag); }

std::string RegistryReference::reference() const { return digest ? digest->str() : tag; }

bool is_registry_reference(std::string_view text) {
  auto slash = text.find('/');
  if (slash == std::string_view::npos || slash == 0) return false;
  auto first = text.substr(0, slash);
  return first == "localhost" || first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos;
}

util::Result<RegistryReference> parse_registry_reference(std::string_view text) {
  if (!is_registry_reference(text))
    return util::Error{fmt::format("'{}' is not a registry reference: give HOST[:PORT]/REPOSITORY[:TAG] "
                                   "(the host holds a '.' or ':' or is localhost)", text)};
  auto slash = text.find('/');
  RegistryReference r;
  r.host = std::string(text.substr(0, slash));
  if (!host_syntax_ok(r.host)) return util::Error{fmt::format("reference '{}': '{}' is not a valid registry host", text, r.host)};
  auto rest = oci::parse_reference(text.substr(slash + 1));
  if (!rest) return util::Error{fmt::format("reference '{}': {}", text, rest.message())};
  r.repository = rest->name;
  r.tag = rest->tag;
  r.digest = rest->digest;
  return r;
}

util::Result<std::string> normalize_host(std::string_view text) {
  std::string_view h = text;
  for (std::string_view scheme : {"https://", "http://"})
    if (h.substr(0, scheme.size()) == scheme) h.remove_prefix(scheme.size());
  if (auto slash = h.find('/'); slash != std::string_view::npos) h = h.substr(0, slash);
  if (h.empty() || !host_syntax_ok(h)) return util::Error{fmt::format("'{}' is not a registry host (HOST[:PORT])", text)};
  return std::string(h);
}

bool is_loopback_host(std::string_view host) {
  auto h = host_without_port(host);
  if (h == "localhost" || h == "::1") return true;
  static const std::regex v4(R"(127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})");
  return std::regex_match(std::string(h), v4);
}

}  // namespace envsnap::registry
