#include "envsnap/run/layer_cache.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "envsnap/image/unpack.hpp"

namespace envsnap::run {

namespace fs = std::filesystem;
using util::Error;
using util::Result;
using util::UniqueFd;

fs::path unpacked_root(const store::Store& store) {
  // The layers keep their setuid files and capabilities: only root may reach them.
  fs::path p = store.cache_dir("cache/unpacked");
  ::chmod(p.c_str(), 0700);
  return p;
}

namespace {

Result<UniqueFd> lock_dir(const fs::path& dir, int how) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return Error{fmt::format("cannot open {}: {}", dir.string(), std::strerror(errno))};
  if (::flock(fd.get(), how) != 0) return Error{fmt::format("cannot lock {}: {}", dir.string(), std::strerror(errno))};
  return fd;
}

Result<void> unpack_one(const store::Store& store, const image::ImageLayer& layer, const fs::path& root,
                        const fs::path& final_dir, const std::string& label) {
  std::string tmpl = (root / "tmp-XXXXXX").string();
  if (!::mkdtemp(tmpl.data()))
    return Error{fmt::format("cannot create a directory in {}: {}", root.string(), std::strerror(errno))};
  fs::path tmp(tmpl);
  ::chmod(tmp.c_str(), 0755);
  // Held until the rename so that a concurrent gc does not take it for a leftover.
  auto lock = lock_dir(tmp, LOCK_EX);
  if (!lock) return lock.error();
  auto cleanup = [&](std::string message) -> Result<void> {
    if (auto r = image::remove_tree(tmp); !r) message += fmt::format(" (and {})", r.message());
    return Error{std::move(message)};
  };
  auto fd = store.open_blob(layer.blob.digest);
  if (!fd) return cleanup(fd.message());
  image::UnpackOptions options;
  options.whiteouts = image::Whiteouts::overlay;
  image::LayerChecks checks;
  checks.label = label;
  checks.blob_digest = &layer.blob.digest;
  checks.diff_id = &layer.diff_id;
  image::FailureKind kind = image::FailureKind::other;
  if (auto r = image::unpack_layer_checked(fd->get(), tmp, options, checks, &kind); !r)
    return cleanup(kind == image::FailureKind::corrupt ? r.message() + "; the store is damaged: run envsnap check"
                                                       : r.message());
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    int err = errno;
    if (err == EEXIST || err == ENOTEMPTY) {  // another run was faster
      (void)image::remove_tree(tmp);
      return {};
    }
    return cleanup(fmt::format("cannot rename {} to {}: {}", tmp.string(), final_dir.string(), std::strerror(err)));
  }
  return {};
}

}  // namespace

Result<UnpackedLayers> unpack_layers(const store::Store& store, const image::ImageBlobs& image,
                                     const std::function<void(const std::string&)>& progress) {
  auto layers = image::image_layers(image);
  if (!layers) return layers.error();
  fs::path root = unpacked_root(store);
  // gc takes the store lock exclusively: while this is held no blob or layer goes away.
  auto store_lock = store.lock_shared();
  if (!store_lock) return store_lock.error();
  UnpackedLayers out;
  // The layers missing from the cache are unpacked in parallel: each goes to a directory
  // of its own, so they are independent (and decompressing, hashing and creating files
  // keeps every core busy).
  std::vector<size_t> missing;
  for (size_t i = 0; i < layers->size(); ++i) {
    struct stat st {};
    if (::lstat((root / (*layers)[i].diff_id.hex()).c_str(), &st) != 0) missing.push_back(i);
  }
  if (!missing.empty()) {
    std::mutex mu;
    std::vector<std::string> errors(layers->size());
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t k = next++; k < missing.size(); k = next++) {
        size_t i = missing[k];
        const auto& layer = (*layers)[i];
        std::string label = fmt::format("layer {}/{} (blob {})", i + 1, layers->size(), layer.blob.digest.str());
        if (progress) {
          std::lock_guard<std::mutex> lock(mu);
          progress(fmt::format("unpacking {}", label));
        }
        if (auto r = unpack_one(store, layer, root, root / layer.diff_id.hex(), label); !r) errors[i] = r.message();
      }
    };
    unsigned threads = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(),
                                                       static_cast<unsigned>(missing.size())));
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    for (const auto& e : errors)
      if (!e.empty()) return Error{e};
    out.unpacked_now = missing.size();
  }
  for (const auto& layer : *layers) {
    fs::path dir = root / layer.diff_id.hex();
    auto lock = lock_dir(dir, LOCK_SH);
    if (!lock) return lock.error();
    out.locks.push_back(std::move(*lock));
    out.dirs.push_back(dir);
  }
  return out;
}

}  // namespace envsnap::run
