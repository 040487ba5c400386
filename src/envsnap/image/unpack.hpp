#pragma once
// Unpacking layers safely into a directory: every path is resolved inside the
// target (openat2 RESOLVE_IN_ROOT, never through a symlink out of it); entries with
// "..", absolute paths, hard links to outside, device nodes and whiteouts that
// escape are refused with an error naming the entry. Nothing is written outside
// the target.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "envsnap/oci/digest.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::image {

// apply: delete what a whiteout hides (one directory for all layers); keep_as_files:
// store .wh. entries as they are; overlay: write them as overlayfs expects of a lower
// layer (a 0/0 character device, trusted.overlay.opaque=y on an opaque directory).
enum class Whiteouts { apply, keep_as_files, overlay };
enum class Ownership { keep_numeric, current_user };

struct UnpackOptions {
  Whiteouts whiteouts = Whiteouts::apply;
  Ownership ownership = Ownership::keep_numeric;
};

// Reads a (gzip, zstd or plain) tar layer from FD into TARGET (an existing directory).
// When expected_diff_id is set, the uncompressed stream must hash to it.
util::Result<void> unpack_layer(int fd, const std::filesystem::path& target, const UnpackOptions& options,
                                const oci::Digest* expected_diff_id = nullptr);

// Why an unpack failed: corrupt content (a digest mismatch, a truncated or
// undecodable stream) or anything else (a refused entry, an I/O error).
enum class FailureKind { other, corrupt };

struct LayerChecks {
  std::string label;                          // names the layer in errors; "layer <diff_id>" when empty
  const oci::Digest* blob_digest = nullptr;   // the bytes read from FD must hash to it
  const oci::Digest* diff_id = nullptr;       // the uncompressed tar must hash to it
  std::function<void(uint64_t)> progress;     // bytes read from FD so far
};

// unpack_layer with the blob's own digest checked too; *kind (when given) says why it failed.
util::Result<void> unpack_layer_checked(int fd, const std::filesystem::path& target, const UnpackOptions& options,
                                        const LayerChecks& checks, FailureKind* kind = nullptr);

// Removes PATH and everything below it, making directories writable first (a
// rootless unpack may have left 0555 ones); never follows a symlink. Absent is fine.
util::Result<void> remove_tree(const std::filesystem::path& path);

}  // namespace envsnap::image
