#pragma once
// Unpacking layers safely into a directory: every path is resolved inside the
// target (openat2 RESOLVE_IN_ROOT, never through a symlink out of it); entries with
// "..", absolute paths, hard links to outside, device nodes and whiteouts that
// escape are refused with an error naming the entry. Nothing is written outside
// the target.

#include <filesystem>
#include <functional>

#include "envsnap/oci/digest.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::image {

enum class Whiteouts { apply, keep_as_files };
enum class Ownership { keep_numeric, current_user };

struct UnpackOptions {
  Whiteouts whiteouts = Whiteouts::apply;
  Ownership ownership = Ownership::keep_numeric;
};

// Reads a (gzip, zstd or plain) tar layer from FD into TARGET (an existing directory).
// When expected_diff_id is set, the uncompressed stream must hash to it.
util::Result<void> unpack_layer(int fd, const std::filesystem::path& target, const UnpackOptions& options,
                                const oci::Digest* expected_diff_id = nullptr);

}  // namespace envsnap::image
