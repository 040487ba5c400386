#include <filesystem>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/image/snapshot.hpp"
#include "envsnap/lock/capture.hpp"
#include "envsnap/store/store.hpp"

namespace envsnap::cli {

namespace fs = std::filesystem;

lock::LockDocument load_lock_argument(const std::string& arg, const std::string& store_flag,
                                      const std::vector<std::string>& data, bool quiet) {
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    lock::CaptureOptions opts;
    opts.root = arg;
    for (auto& d : data) opts.data.push_back((fs::path(arg) / fs::path(d).relative_path()).string());
    auto doc = lock::capture_lock(opts);
    if (!doc) throw util::Fatal(2, doc.message());
    if (!quiet) print_warnings(doc->captured);
    return std::move(*doc);
  }
  if (fs::exists(arg, ec) || arg.starts_with("/") || arg.starts_with(".")) {
    auto doc = lock::read_file(arg);
    if (!doc) throw util::Fatal(2, doc.message());
    return std::move(*doc);
  }
  auto store = store::Store::open(store::default_store_path(store_flag), store::OpenMode::must_exist);
  if (!store) throw util::Fatal(2, fmt::format("{}: no such file, and {}", arg, store.message()));
  auto manifest_desc = store->resolve(arg);
  if (!manifest_desc) throw util::Fatal(2, manifest_desc.message());
  auto manifest = store->read_manifest(*manifest_desc);
  if (!manifest) throw util::Fatal(6, manifest.message());
  auto config = store->read_config(*manifest);
  if (!config) throw util::Fatal(6, config.message());
  auto doc = image::lock_from_config(*config, arg);
  if (!doc) throw util::Fatal(2, doc.message());
  doc->captured = {{"image", manifest_desc->digest.str()}, {"ref", arg}};
  return std::move(*doc);
}

}  // namespace envsnap::cli
