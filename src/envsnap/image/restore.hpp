#pragma once
// Restoring an image of the store into a directory: every layer is unpacked in order
// (image/unpack.hpp) into a temporary sibling DIR.tmp-XXXXXX, each blob's digest and
// diff_id checked while it streams; the directory is renamed into place only when all
// layers are in. On failure nothing is left behind.

#include <filesystem>
#include <string_view>

#include "envsnap/image/unpack.hpp"
#include "envsnap/oci/digest.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::image {

struct RestoreOptions {
  UnpackOptions unpack;
  bool progress = false;  // a running byte count of the layers on stderr
};

// Restores REF (NAME[:TAG] or a digest) into DIR, which must not exist or be empty.
// Returns the manifest restored; *kind says whether a failure was corrupt content.
util::Result<oci::Descriptor> restore_image(const store::Store& store, std::string_view ref,
                                            const std::filesystem::path& dir, const RestoreOptions& options,
                                            FailureKind* kind = nullptr);

// The manifest and the config of REF read from STORE with their digests checked; a
// missing or damaged blob is FailureKind::corrupt.
struct ImageBlobs {
  oci::Descriptor manifest;
  std::string manifest_bytes, config_bytes;
  nlohmann::json manifest_json, config_json;
};
util::Result<ImageBlobs> read_image(const store::Store& store, std::string_view ref, FailureKind* kind);

// The layers of an image, bottom first, each with its diff_id from the config; an
// error when a media type is not a layer envsnap unpacks or the counts differ.
struct ImageLayer {
  oci::Descriptor blob;
  oci::Digest diff_id;
};
util::Result<std::vector<ImageLayer>> image_layers(const ImageBlobs& image);

}  // namespace envsnap::image
