#pragma once
// Registry references: HOST[:PORT]/REPOSITORY[:TAG] or HOST[:PORT]/REPOSITORY@sha256:<hex>.
// The first component names a registry only when it holds '.' or ':' or is
// "localhost"; there is no implicit docker.io.

#include <optional>
#include <string>
#include <string_view>

#include "envsnap/oci/digest.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::registry {

struct RegistryReference {
  std::string host;        // "127.0.0.1:5000", "ghcr.io"
  std::string repository;  // "team/yolo-train"
  std::string tag;         // empty when a digest is given
  std::optional<oci::Digest> digest;

  // "host/repository:tag" or "host/repository@sha256:..."
  std::string str() const;
  // The tag or digest, as the manifest URL takes it.
  std::string reference() const;
};

// True when text's first '/'-separated component names a registry host.
bool is_registry_reference(std::string_view text);
util::Result<RegistryReference> parse_registry_reference(std::string_view text);
// A registry host as login/logout take it: a scheme and a trailing path ("/v2/") are dropped.
util::Result<std::string> normalize_host(std::string_view text);
// True for localhost, 127.0.0.0/8 and ::1 (with or without a port).
bool is_loopback_host(std::string_view host);

}  // namespace envsnap::registry
