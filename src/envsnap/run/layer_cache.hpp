#pragma once
// Unpacked layers for `envsnap run`: each layer is unpacked once, with overlayfs
// whiteouts, into <store>/.envsnap/cache/unpacked/<diff_id hex>, a directory that
// appears by rename only when complete (so a crash leaves a tmp-* that gc removes).
// A run holds a shared flock on every layer it uses; `envsnap gc` removes the layers
// no image references and skips those that are locked.

#include <filesystem>
#include <functional>
#include <vector>

#include "envsnap/image/restore.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::run {

struct UnpackedLayers {
  std::vector<std::filesystem::path> dirs;  // bottom layer first
  std::vector<util::UniqueFd> locks;        // shared flocks, held while the run lasts
  size_t unpacked_now = 0;                  // layers this call had to unpack
};

// Makes sure every layer of IMAGE is in the cache and locks them all shared. Each blob
// is checked against its digest and diff_id while it streams; a corrupt blob is an
// error and nothing enters the cache. PROGRESS (when set) gets a line per layer.
util::Result<UnpackedLayers> unpack_layers(const store::Store& store, const image::ImageBlobs& image,
                                           const std::function<void(const std::string&)>& progress = {});

// The cache directory itself.
std::filesystem::path unpacked_root(const store::Store& store);

}  // namespace envsnap::run
