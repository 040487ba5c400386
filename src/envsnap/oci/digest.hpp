#pragma once
// OCI content digests ("sha256:<64 lowercase hex>") and descriptors.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "envsnap/util/result.hpp"

namespace envsnap::oci {

inline constexpr std::string_view media_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view media_index = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view media_config = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view media_layer_gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view media_layer_zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view media_layer_tar = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view media_docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view media_docker_list = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view annotation_ref_name = "org.opencontainers.image.ref.name";
inline constexpr std::string_view label_lock = "dev.envsnap.lock";
inline constexpr std::string_view label_lock_digest = "dev.envsnap.lock.digest";

class Digest {
public:
  // Parses "sha256:<64 hex>"; other algorithms and malformed text are errors.
  static util::Result<Digest> parse(std::string_view text);
  static Digest from_hex(std::string hex);  // hex must be 64 lowercase hex digits
  static Digest of(std::string_view bytes);
  const std::string& hex() const { return m_hex; }
  std::string str() const { return "sha256:" + m_hex; }
  auto operator<=>(const Digest&) const = default;

private:
  std::string m_hex;
};

struct Descriptor {
  std::string media_type;
  Digest digest;
  int64_t size = 0;
  std::map<std::string, std::string> annotations;
  std::string platform_os, platform_arch;  // only in an index

  nlohmann::json to_json() const;
  static util::Result<Descriptor> from_json(const nlohmann::json& j, std::string_view where);
};

// "amd64" for x86_64 and so on: the GOARCH names OCI uses.
std::string oci_arch(std::string_view machine);

}  // namespace envsnap::oci
