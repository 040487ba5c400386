#include "envsnap/image/restore.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace envsnap::image {
namespace {

namespace fs = std::filesystem;
using util::Error;
using util::Result;

bool is_layer_media_type(std::string_view m) {
  return m == oci::media_layer_tar || m == oci::media_layer_gzip || m == oci::media_layer_zstd ||
         m == "application/vnd.docker.image.rootfs.diff.tar.gzip" ||
         m == "application/vnd.docker.image.rootfs.diff.tar.zstd" ||
         m == "application/vnd.docker.image.rootfs.diff.tar";
}

std::string human(uint64_t n) {
  if (n < (1u << 20)) return fmt::format("{:.1f} KiB", static_cast<double>(n) / 1024);
  if (n < (1ull << 30)) return fmt::format("{:.1f} MiB", static_cast<double>(n) / (1 << 20));
  return fmt::format("{:.2f} GiB", static_cast<double>(n) / (1ull << 30));
}

// "DIR must not exist or be empty"; the error says what to do.
Result<void> check_destination(const fs::path& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return Error{fmt::format("cannot inspect {}: {}", dir.string(), std::strerror(errno))};
  }
  if (!S_ISDIR(st.st_mode))
    return Error{fmt::format("{} exists and is not a directory; give a new or empty directory", dir.string())};
  std::error_code ec;
  if (!fs::is_empty(dir, ec) || ec)
    return Error{fmt::format("{} is not empty; give a new or empty directory", dir.string())};
  return {};
}

}  // namespace

Result<ImageBlobs> read_image(const store::Store& store, std::string_view ref, FailureKind* kind) {
  auto fail = [&](FailureKind k, std::string message) -> Result<ImageBlobs> {
    if (kind) *kind = k;
    return Error{std::move(message)};
  };
  auto desc = store.resolve(ref);
  if (!desc) return fail(FailureKind::other, desc.message());
  ImageBlobs out;
  out.manifest = *desc;
  auto bytes = store.read_blob(desc->digest);
  if (!bytes) return fail(FailureKind::corrupt, bytes.message());
  out.manifest_bytes = std::move(*bytes);
  out.manifest_json = nlohmann::json::parse(out.manifest_bytes, nullptr, false);
  auto& m = out.manifest_json;
  if (!m.is_object() || !m.contains("config") || !m.contains("layers") || !m["layers"].is_array())
    return fail(FailureKind::other,
                fmt::format("{} ({}) is not an image manifest (an image index?); give a single-platform image",
                            std::string(ref), desc->digest.str()));
  auto config = oci::Descriptor::from_json(m["config"], "the manifest's config");
  if (!config) return fail(FailureKind::other, config.message());
  auto cfg = store.read_blob(config->digest);
  if (!cfg) return fail(FailureKind::corrupt, cfg.message());
  out.config_bytes = std::move(*cfg);
  out.config_json = nlohmann::json::parse(out.config_bytes, nullptr, false);
  if (!out.config_json.is_object())
    return fail(FailureKind::other, fmt::format("the config {} of {} is not a JSON object", config->digest.str(),
                                                std::string(ref)));
  return out;
}

Result<std::vector<ImageLayer>> image_layers(const ImageBlobs& image) {
  std::vector<ImageLayer> out;
  for (auto& l : image.manifest_json["layers"]) {
    auto d = oci::Descriptor::from_json(l, "a layer of the manifest");
    if (!d) return Error{d.message()};
    if (!is_layer_media_type(d->media_type))
      return Error{fmt::format("layer {} has media type {}, which envsnap cannot unpack", d->digest.str(), d->media_type)};
    out.push_back({std::move(*d), oci::Digest{}});
  }
  std::vector<oci::Digest> diff_ids;
  auto& cfg = image.config_json;
  if (cfg.contains("rootfs") && cfg["rootfs"].is_object() && cfg["rootfs"].contains("diff_ids") &&
      cfg["rootfs"]["diff_ids"].is_array()) {
    for (auto& d : cfg["rootfs"]["diff_ids"]) {
      auto parsed = d.is_string() ? oci::Digest::parse(d.get<std::string>())
                                  : Result<oci::Digest>(Error{"a diff_id is not a string"});
      if (!parsed) return Error{fmt::format("the image config's rootfs.diff_ids: {}", parsed.message())};
      diff_ids.push_back(std::move(*parsed));
    }
  }
  if (diff_ids.size() != out.size())
    return Error{fmt::format("the image has {} layers but its config lists {} diff_ids", out.size(), diff_ids.size())};
  for (size_t i = 0; i < out.size(); ++i) out[i].diff_id = std::move(diff_ids[i]);
  return out;
}

Result<oci::Descriptor> restore_image(const store::Store& store, std::string_view ref, const fs::path& dir,
                                      const RestoreOptions& options, FailureKind* kind) {
  auto fail = [&](FailureKind k, std::string message) -> Result<oci::Descriptor> {
    if (kind) *kind = k;
    return Error{std::move(message)};
  };
  FailureKind read_kind = FailureKind::other;
  auto image = read_image(store, ref, &read_kind);
  if (!image) return fail(read_kind, image.message());

  auto layer_list = image_layers(*image);
  if (!layer_list) return fail(FailureKind::other, layer_list.message());
  std::vector<oci::Descriptor> layers;
  std::vector<oci::Digest> diff_ids;
  for (auto& l : *layer_list) {
    layers.push_back(l.blob);
    diff_ids.push_back(l.diff_id);
  }

  if (auto r = check_destination(dir); !r) return fail(FailureKind::other, r.message());
  fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  std::string tmpl = (parent / (dir.filename().string() + ".tmp-XXXXXX")).string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data()))
    return fail(FailureKind::other, fmt::format("cannot create a directory next to {}: {}", dir.string(), std::strerror(errno)));
  fs::path tmp(buf.data());
  ::chmod(tmp.c_str(), 0755);
  auto cleanup_fail = [&](FailureKind k, std::string message) -> Result<oci::Descriptor> {
    if (auto r = remove_tree(tmp); !r) message += fmt::format(" (and {})", r.message());
    return fail(k, std::move(message));
  };

  uint64_t total = 0, done = 0;
  for (auto& l : layers) total += static_cast<uint64_t>(l.size);
  auto last_print = std::chrono::steady_clock::time_point{};
  auto print_progress = [&](uint64_t bytes, size_t i, bool force) {
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_print < std::chrono::milliseconds(200)) return;
    last_print = now;
    fmt::print(stderr, "\rrestoring layer {}/{}: {} of {}   ", i + 1, layers.size(), human(bytes), human(total));
    std::fflush(stderr);
  };

  for (size_t i = 0; i < layers.size(); ++i) {
    auto fd = store.open_blob(layers[i].digest);
    if (!fd) return cleanup_fail(FailureKind::corrupt, fd.message());
    LayerChecks checks;
    checks.label = fmt::format("layer {}/{} (blob {})", i + 1, layers.size(), layers[i].digest.str());
    checks.blob_digest = &layers[i].digest;
    checks.diff_id = &diff_ids[i];
    // Called on the decoding thread; this thread touches done and last_print only
    // between layers, when that thread has ended.
    if (options.progress) checks.progress = [&, i](uint64_t bytes) { print_progress(done + bytes, i, false); };
    FailureKind k = FailureKind::other;
    auto r = unpack_layer_checked(fd->get(), tmp, options.unpack, checks, &k);
    if (!r) {
      if (options.progress) fmt::print(stderr, "\n");
      std::string message = r.message();
      if (k == FailureKind::corrupt) message += "; the store is damaged: run envsnap check";
      return cleanup_fail(k, std::move(message));
    }
    done += static_cast<uint64_t>(layers[i].size);
    if (options.progress) print_progress(done, i, true);
  }
  if (options.progress) fmt::print(stderr, "\n");

  if (::rename(tmp.c_str(), dir.c_str()) != 0)
    return cleanup_fail(FailureKind::other, fmt::format("cannot rename {} to {}: {}", tmp.string(), dir.string(),
                                                        std::strerror(errno)));
  int pfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (pfd >= 0) {
    ::fsync(pfd);
    ::close(pfd);
  }
  return image->manifest;
}

}  // namespace envsnap::image
