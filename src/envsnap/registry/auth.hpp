#pragma once
// Registry authentication: WWW-Authenticate challenges, base64, and where
// credentials come from (environment, envsnap's auth.json, podman's auth.json,
// docker's config.json with its credential helpers), and writing envsnap's own file.

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/util/result.hpp"

namespace envsnap::registry {

struct Challenge {
  std::string scheme;                         // lowercased: "basic", "bearer"
  std::map<std::string, std::string> params;  // keys lowercased, values unquoted
};

// Parses a WWW-Authenticate value (RFC 7235): one or more challenges, each a scheme
// followed by comma-separated key=value pairs whose values may be quoted strings
// holding commas and backslash escapes. Malformed tails are ignored.
std::vector<Challenge> parse_www_authenticate(std::string_view header);

std::string base64_encode(std::string_view data);
// Standard alphabet with padding; whitespace is ignored. nullopt for invalid input.
std::optional<std::string> base64_decode(std::string_view text);

struct Credentials {
  std::string user, password;
  std::string source;  // where they were found, for messages ("ENVSNAP_REGISTRY_USER", a file path)
};

// The files and environment credential lookup consults, in this order.
struct CredentialSources {
  std::optional<std::string> env_user, env_password;  // ENVSNAP_REGISTRY_USER / _PASSWORD
  std::filesystem::path envsnap_auth;                  // ENVSNAP_AUTH_FILE, else $XDG_CONFIG_HOME/envsnap/auth.json
  std::filesystem::path containers_auth;               // $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json
  std::filesystem::path docker_config;                 // $DOCKER_CONFIG/config.json, else ~/.docker/config.json
};

CredentialSources credential_sources_from_env();
// envsnap's own auth file: $ENVSNAP_AUTH_FILE, else $XDG_CONFIG_HOME/envsnap/auth.json, else ~/.config/envsnap/auth.json.
std::filesystem::path envsnap_auth_file();

// The first credentials for host, or nullopt. Unreadable files are skipped; a
// credential helper that fails or does not know the host yields nothing.
std::optional<Credentials> find_credentials(const std::string& host, const CredentialSources& sources);

// Runs docker-credential-<helper> get with host on stdin; nullopt when it fails.
std::optional<Credentials> run_credential_helper(const std::string& helper, const std::string& host);

// Adds or replaces host's entry in a docker-format auth file (0600, directories 0700, atomic).
util::Result<void> save_credentials(const std::filesystem::path& file, const std::string& host, const Credentials& creds);
// Removes host's entry; false when there was none.
util::Result<bool> remove_credentials(const std::filesystem::path& file, const std::string& host);

}  // namespace envsnap::registry
