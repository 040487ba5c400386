#pragma once
// push and pull between the local store and a registry: blobs in parallel (at most
// 4 at a time), skipped when already there, mounted across repositories of the same
// registry when known, uploaded monolithically (< 16 MiB) or in 8 MiB chunks with
// resume; downloads resume with Range and are verified before they are stored.

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "envsnap/oci/digest.hpp"
#include "envsnap/registry/client.hpp"
#include "envsnap/registry/reference.hpp"
#include "envsnap/store/store.hpp"

namespace envsnap::registry {

inline constexpr uint64_t monolithic_limit = 16ull << 20;
inline constexpr uint64_t chunk_size = 8ull << 20;
inline constexpr int max_parallel = 4;

struct TransferOptions {
  bool progress = false;  // per-blob progress bars on stderr
};

struct PushResult {
  oci::Digest manifest;
  int uploaded = 0, present = 0, mounted = 0;  // blobs
};

struct PullResult {
  oci::Descriptor manifest;  // as stored: the platform manifest, not an index
  int fetched = 0, present = 0;  // blobs
};

// Pushes the image whose manifest (or index) is in the store to dest; its bytes go
// up exactly as stored. Tags dest's tag, or checks dest's digest.
PushResult push_image(store::Store& s, const oci::Descriptor& manifest, const RegistryReference& dest, Client& c,
                      const TransferOptions& opts);
// Fetches src (picking linux/<host arch> from an index) into the store; does not tag.
PullResult pull_image(store::Store& s, const RegistryReference& src, Client& c, const TransferOptions& opts);

// Which repositories of which registry hold a blob, as far as this store has seen:
// <store>/.envsnap/cache/registry/known-blobs.json, {"host": {"sha256:...": ["repo", ...]}}.
class KnownBlobs {
public:
  explicit KnownBlobs(std::filesystem::path file);
  std::set<std::string> repositories(const std::string& host, const oci::Digest& d) const;
  void add(const std::string& host, const oci::Digest& d, const std::string& repository);
  // Merges with what is on disk and writes atomically; failures are ignored (it is a cache).
  void save() const;

private:
  std::filesystem::path m_file;
  std::map<std::string, std::map<std::string, std::set<std::string>>> m_known;
};

// The platform manifest to pull from an index: linux/arch (first match), or nullopt.
std::optional<oci::Descriptor> pick_platform(const nlohmann::json& index, const std::string& arch);
// The media type of a manifest response: Content-Type without parameters, else the JSON's mediaType.
std::string manifest_media_type(const std::string& content_type, const nlohmann::json& body);

}  // namespace envsnap::registry
