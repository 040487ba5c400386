#pragma once
// The local store: an OCI image layout (oci-layout, index.json, blobs/sha256/<hex>)
// that every OCI tool can read. Blobs are named by their SHA-256 and written once
// (temporary file, fsync, rename, fsync of the directory); index.json is replaced
// atomically under an exclusive flock on <store>/.envsnap/lock, so concurrent
// writers never lose a tag. Tags are the org.opencontainers.image.ref.name
// annotation of a manifest descriptor in index.json ("name:tag").
// envsnap's own caches live under <store>/.envsnap/ (not part of the layout).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/oci/digest.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::store {

enum class OpenMode { create_if_missing, must_exist };

// $ENVSNAP_STORE, else $XDG_DATA_HOME/envsnap, else ~/.local/share/envsnap; flag wins when non-empty.
std::filesystem::path default_store_path(const std::string& flag);

// Streams one blob into a temporary file in the store while hashing it.
class BlobWriter {
public:
  BlobWriter(BlobWriter&&) noexcept;
  BlobWriter& operator=(BlobWriter&&) noexcept;
  ~BlobWriter();  // removes the temporary file unless committed
  util::Result<void> write(const void* data, size_t size);
  util::Result<void> write(std::string_view s) { return write(s.data(), s.size()); }
  uint64_t size() const;
  // Digest of what was written so far is fixed by commit(): fsync, rename into
  // blobs/sha256/<hex> (kept as is when it already exists), fsync the directory.
  util::Result<oci::Descriptor> commit(std::string media_type);
  // As commit(), but refuses (and discards) when the content's digest is not expected.
  util::Result<oci::Descriptor> commit_expected(std::string media_type, const oci::Digest& expected);

private:
  friend class Store;
  struct Impl;
  explicit BlobWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

struct TaggedImage {
  std::string name;  // "name:tag"
  oci::Descriptor manifest;
};

struct GcReport {
  uint64_t blobs_removed = 0, bytes_removed = 0, cache_bytes_removed = 0;
  uint64_t temp_files_removed = 0, temp_bytes_removed = 0;  // leftovers of interrupted writers
};

struct CheckReport {
  uint64_t blobs_checked = 0;
  std::vector<std::string> problems;  // each names the blob path and what is wrong
};

// An exclusive or shared lock on the store, released on destruction. Writers hold it
// shared from their first blob until they tag, so gc (exclusive) never collects blobs
// not yet tagged. It is <store>/.envsnap/gc.lock, not the index lock, so tag() can
// run while it is held.
class StoreLock {
public:
  StoreLock() = default;
  explicit StoreLock(util::UniqueFd fd) : m_fd(std::move(fd)) {}

private:
  util::UniqueFd m_fd;
};

class Store {
public:
  static util::Result<Store> open(const std::filesystem::path& dir, OpenMode mode);
  const std::filesystem::path& path() const { return m_path; }
  // <store>/.envsnap/<name>, created on demand: caches of later issues live there.
  std::filesystem::path cache_dir(std::string_view name) const;
  // Small records of envsnap's caches, <store>/.envsnap/<kind>/<name>: read whole, or
  // replaced whole (temporary file in .envsnap/tmp, fsync, rename).
  util::Result<std::string> read_record(std::string_view kind, std::string_view name) const;
  util::Result<void> write_record(std::string_view kind, std::string_view name, std::string_view bytes) const;

  bool has_blob(const oci::Digest& d) const;
  std::filesystem::path blob_path(const oci::Digest& d) const;
  util::Result<BlobWriter> new_blob();
  util::Result<oci::Descriptor> put_blob(std::string_view bytes, std::string media_type);
  // Reads a whole blob (manifests, configs) and verifies its digest.
  util::Result<std::string> read_blob(const oci::Digest& d) const;
  util::Result<util::UniqueFd> open_blob(const oci::Digest& d) const;
  // Removes the stored blob D when its content does not hash to D, so that writing
  // the right content again repairs it (a blob that exists is otherwise kept as is).
  // True when one was removed.
  bool remove_if_corrupt(const oci::Digest& d) const;

  util::Result<std::vector<TaggedImage>> list() const;
  // NAME[:TAG], NAME@sha256:..., or a unique prefix (>= 7 hex) of a manifest digest.
  util::Result<oci::Descriptor> resolve(std::string_view ref) const;
  util::Result<nlohmann::json> read_manifest(const oci::Descriptor& d) const;
  util::Result<nlohmann::json> read_config(const nlohmann::json& manifest) const;
  // Points name:tag at the manifest (replacing an older one with that name).
  util::Result<void> tag(const oci::Reference& ref, const oci::Descriptor& manifest);
  util::Result<void> untag(std::string_view ref);

  // Removes blobs no image references, stale temporaries, and caches' leftovers.
  util::Result<GcReport> gc();
  // Re-hashes every blob; checks that every referenced blob exists with its size.
  util::Result<CheckReport> check() const;

  util::Result<StoreLock> lock_exclusive() const;
  util::Result<StoreLock> lock_shared() const;

private:
  std::filesystem::path m_path;
};

}  // namespace envsnap::store
