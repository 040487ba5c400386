#pragma once
// Image archives (docs/archives.md). export writes one deterministic tar that is both
// a docker-archive (manifest.json) and an OCI image layout (oci-layout, index.json,
// blobs/sha256/...), or only the OCI layout; layers go in as stored, each blob's
// digest checked while it is copied. import reads either kind (plain, gzip or zstd
// tar, docker save of any version, podman save, skopeo's archives) in one pass and
// tags only at the end, so a failed import leaves the store's images as they were.

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/image/unpack.hpp"
#include "envsnap/oci/digest.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::image {

enum class ArchiveFormat { docker, oci };

struct ExportOptions {
  ArchiveFormat format = ArchiveFormat::docker;
  bool gzip = false;  // wrap the tar in gzip at level 0 (stored blocks)
};

// True for FILE names ending in .tar.gz or .tgz.
bool wants_gzip(const std::filesystem::path& file);

// Writes REF to OUT (through OUT.tmp-XXXXXX, renamed at the end; "-" streams to stdout).
// Returns the manifest exported; *kind says whether a failure was corrupt content.
util::Result<oci::Descriptor> export_image(const store::Store& store, std::string_view ref,
                                           const std::filesystem::path& out, const ExportOptions& options,
                                           FailureKind* kind = nullptr);

struct ImportedImage {
  std::string name;  // "name:tag" as tagged in the store
  oci::Descriptor manifest;
};

// Imports every image of the archive FILE; TAG ("name:tag"), when not empty, names the
// one image the archive must hold, else names come from the archive's annotations or
// RepoTags. *kind says whether a failure was corrupt content (a digest mismatch, a
// truncated archive).
util::Result<std::vector<ImportedImage>> import_archive(store::Store& store, const std::filesystem::path& file,
                                                        const std::string& tag, FailureKind* kind = nullptr);

}  // namespace envsnap::image
