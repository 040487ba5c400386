#include "envsnap/image/archive.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <variant>

#include <fmt/format.h>

#include "envsnap/image/restore.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::image {
namespace {

namespace fs = std::filesystem;
using util::Error;
using util::Result;
using util::UniqueFd;

constexpr size_t kChunk = 1 << 20;
constexpr int64_t kInMemory = 4 << 20;  // import keeps members up to this size in memory until it knows their role
constexpr std::string_view kContainerdName = "io.containerd.image.name";
constexpr std::string_view kBlobDir = "blobs/sha256/";

std::string errno_text(int err) { return std::strerror(err); }

// "docker.io/library/x:1" -> "x:1", "docker.io/a/b:1" -> "a/b:1": the names docker shows.
std::string familiar(std::string name) {
  for (std::string_view prefix : {"docker.io/library/", "docker.io/"})
    if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size()) return name.substr(prefix.size());
  return name;
}

// "a/b:1" -> "docker.io/a/b:1", "x:1" -> "docker.io/library/x:1": containerd's full names.
std::string normalized(const std::string& name) {
  auto slash = name.find('/');
  if (slash == std::string::npos) return "docker.io/library/" + name;
  std::string_view first(name.data(), slash);
  if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos || first == "localhost")
    return name;
  return "docker.io/" + name;
}

// ---------------------------------------------------------------------------- export

struct WriteDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};

class TarWriter {
public:
  explicit TarWriter(struct archive* a) : m_a(a) {}

  Result<void> dir(const std::string& path) { return header(path, AE_IFDIR, 0755, 0); }

  Result<void> bytes(const std::string& path, std::string_view data) {
    if (auto r = header(path, AE_IFREG, 0644, static_cast<int64_t>(data.size())); !r) return r;
    if (!data.empty() && archive_write_data(m_a, data.data(), data.size()) < 0) return error();
    return {};
  }

  // Copies the store's blob D, checking its size and digest; *corrupt is set when they are wrong.
  Result<void> blob(const store::Store& store, const std::string& path, const oci::Descriptor& d, bool* corrupt) {
    auto fd = store.open_blob(d.digest);
    if (!fd) {
      *corrupt = true;
      return Error{fd.message()};
    }
    struct stat st {};
    if (::fstat(fd->get(), &st) != 0) return Error{fmt::format("cannot read blob {}: {}", d.digest.str(), errno_text(errno))};
    if (st.st_size != d.size) {
      *corrupt = true;
      return Error{fmt::format("blob {} has {} bytes, its descriptor says {}: {}; run envsnap check", d.digest.str(),
                               st.st_size, d.size, store.blob_path(d.digest).string())};
    }
    if (auto r = header(path, AE_IFREG, 0644, d.size); !r) return r;
    std::vector<char> buf(kChunk);
    util::Sha256 sha;
    int64_t left = d.size;
    while (left > 0) {
      ssize_t n = ::read(fd->get(), buf.data(), static_cast<size_t>(std::min<int64_t>(left, kChunk)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error{fmt::format("cannot read blob {}: {}", d.digest.str(), errno_text(errno))};
      if (n == 0) {
        *corrupt = true;
        return Error{fmt::format("blob {} is shorter than its descriptor says; run envsnap check", d.digest.str())};
      }
      sha.update(buf.data(), static_cast<size_t>(n));
      if (archive_write_data(m_a, buf.data(), static_cast<size_t>(n)) < 0) return error();
      left -= n;
    }
    std::string got = sha.hex();
    if (got != d.digest.hex()) {
      *corrupt = true;
      return Error{fmt::format("blob {} is corrupt (content hashes to sha256:{}): {}; run envsnap check", d.digest.str(),
                               got, store.blob_path(d.digest).string())};
    }
    return {};
  }

  Result<void> error() const { return Error{fmt::format("cannot write the archive: {}", archive_error_string(m_a))}; }

private:
  Result<void> header(const std::string& path, mode_t type, mode_t perm, int64_t size) {
    std::unique_ptr<struct archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(), archive_entry_free);
    archive_entry_copy_pathname(e.get(), path.c_str());
    archive_entry_set_filetype(e.get(), type);
    archive_entry_set_perm(e.get(), perm);
    archive_entry_set_mtime(e.get(), 0, 0);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    archive_entry_set_size(e.get(), size);
    if (archive_write_header(m_a, e.get()) != ARCHIVE_OK) return error();
    return {};
  }

  struct archive* m_a;
};

// The name REF stands for in the store ("name:tag"), or "" for an untagged digest.
std::string export_name(const store::Store& store, std::string_view ref, const oci::Digest& manifest) {
  auto images = store.list();
  if (!images) return "";
  auto parsed = oci::parse_reference(ref);
  if (parsed && !parsed->digest) {
    std::string want = parsed->str();
    for (auto& img : *images)
      if (img.name == want && img.manifest.digest == manifest) return want;
  }
  for (auto& img : *images)
    if (img.manifest.digest == manifest) return img.name;
  return "";
}

// ---------------------------------------------------------------------------- import

struct ReadDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};

struct Member {
  std::optional<std::string> bytes;  // small members, until they are stored
  oci::Digest digest;
  int64_t size = 0;
  std::string magic;  // the first bytes: tells a compressed layer from a plain tar
  bool stored = false;
};

struct ImportFailure {
  FailureKind kind;
  std::string message;
};

// A member path "blobs/sha256/<hex>" -> its digest.
std::optional<oci::Digest> blob_member_digest(const std::string& path) {
  if (path.rfind(kBlobDir, 0) != 0) return std::nullopt;
  auto d = oci::Digest::parse("sha256:" + path.substr(kBlobDir.size()));
  if (!d) return std::nullopt;
  return *d;
}

std::string layer_media_type(const std::string& magic) {
  if (magic.size() >= 2 && magic[0] == '\x1f' && magic[1] == '\x8b') return std::string(oci::media_layer_gzip);
  if (magic.size() >= 4 && magic.compare(0, 4, "\x28\xb5\x2f\xfd") == 0) return std::string(oci::media_layer_zstd);
  return std::string(oci::media_layer_tar);
}

std::string host_arch() {
  struct utsname u {};
  ::uname(&u);
  return oci::oci_arch(u.machine);
}

class Importer {
public:
  Importer(store::Store& store, const fs::path& file) : m_store(store), m_file(file.string()) {}

  Result<void> read();
  Result<std::vector<ImportedImage>> resolve(const std::string& tag);
  FailureKind kind() const { return m_kind; }

private:
  struct Candidate {
    oci::Descriptor manifest;
    std::vector<std::string> names;  // from the archive, best first
  };

  Error fail(FailureKind k, std::string message) {
    m_kind = k;
    return Error{std::move(message)};
  }
  Result<std::vector<std::string>> split(std::string_view raw, std::string_view path, std::string_view what);
  Result<void> read_member(struct archive* a, const std::string& path, int64_t size);
  Member* find(const std::string& path);
  Result<std::string> member_bytes(const std::string& path);
  Result<oci::Descriptor> ensure(const std::string& path, std::string media_type, const oci::Digest* expected);
  Result<oci::Descriptor> ensure_digest(const oci::Descriptor& d);
  Result<void> oci_candidates(const nlohmann::json& desc, std::vector<std::string> names, int depth,
                              std::vector<Candidate>& out);
  Result<std::vector<Candidate>> from_oci_layout();
  Result<std::vector<Candidate>> from_docker_archive();
  std::vector<std::string> repo_tags_for(const nlohmann::json& manifest);

  store::Store& m_store;
  std::string m_file;
  FailureKind m_kind = FailureKind::other;
  std::map<std::string, Member> m_members;
  std::map<std::string, std::string> m_aliases;  // symlinks and hard links between members
};

Result<std::vector<std::string>> Importer::split(std::string_view raw, std::string_view path, std::string_view what) {
  if (!path.empty() && path.front() == '/')
    return fail(FailureKind::other, fmt::format("{}: refusing member \"{}\": {} is an absolute path", m_file,
                                                util::printable(raw), what));
  std::vector<std::string> comps;
  for (auto c : util::split(path, '/')) {
    if (c.empty() || c == ".") continue;
    if (c == "..")
      return fail(FailureKind::other, fmt::format("{}: refusing member \"{}\": {} has a \"..\" component", m_file,
                                                  util::printable(raw), what));
    comps.emplace_back(c);
  }
  return comps;
}

std::string join(const std::vector<std::string>& comps) {
  std::string out;
  for (auto& c : comps) out += (out.empty() ? "" : "/") + c;
  return out;
}

Result<void> Importer::read_member(struct archive* a, const std::string& path, int64_t size) {
  auto read_error = [&] {
    return fail(FailureKind::corrupt, fmt::format("{}: the archive is truncated or corrupt (in member {}): {}", m_file,
                                                  util::printable(path), archive_error_string(a)));
  };
  Member m;
  auto expected = blob_member_digest(path);
  std::vector<char> buf(kChunk);
  if (size <= kInMemory) {
    std::string data;
    data.reserve(static_cast<size_t>(size));
    for (;;) {
      la_ssize_t n = archive_read_data(a, buf.data(), buf.size());
      if (n < 0) return read_error();
      if (n == 0) break;
      data.append(buf.data(), static_cast<size_t>(n));
    }
    m.digest = oci::Digest::of(data);
    m.size = static_cast<int64_t>(data.size());
    m.magic = data.substr(0, 4);
    m.bytes = std::move(data);
  } else {
    auto w = m_store.new_blob();
    if (!w) return fail(FailureKind::other, w.message());
    for (;;) {
      la_ssize_t n = archive_read_data(a, buf.data(), buf.size());
      if (n < 0) return read_error();
      if (n == 0) break;
      if (m.magic.size() < 4) m.magic.append(buf.data(), std::min<size_t>(4 - m.magic.size(), static_cast<size_t>(n)));
      if (auto r = w->write(buf.data(), static_cast<size_t>(n)); !r) return fail(FailureKind::other, r.message());
    }
    auto d = expected ? w->commit_expected("application/octet-stream", *expected) : w->commit("application/octet-stream");
    if (!d)
      return fail(expected ? FailureKind::corrupt : FailureKind::other,
                  fmt::format("{}: member {}: {}", m_file, util::printable(path), d.message()));
    m.digest = d->digest;
    m.size = d->size;
    m.stored = true;
  }
  if (expected && m.digest != *expected)
    return fail(FailureKind::corrupt, fmt::format("{}: member {} hashes to {}; the archive is corrupt", m_file,
                                                  util::printable(path), m.digest.str()));
  m_members[path] = std::move(m);
  return {};
}

Result<void> Importer::read() {
  std::unique_ptr<struct archive, ReadDeleter> a(archive_read_new());
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  if (archive_read_open_filename(a.get(), m_file.c_str(), kChunk) != ARCHIVE_OK)
    return fail(FailureKind::other, fmt::format("cannot read {}: {}", m_file, archive_error_string(a.get())));
  for (;;) {
    struct archive_entry* e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      return fail(FailureKind::corrupt, fmt::format("{}: the archive is truncated or corrupt: {}", m_file,
                                                    archive_error_string(a.get())));
    const char* raw_c = archive_entry_pathname(e);
    if (!raw_c) return fail(FailureKind::other, fmt::format("{}: a member has no readable path", m_file));
    std::string raw = raw_c;
    auto comps = split(raw, raw, "the path");
    if (!comps) return comps.error();
    std::string path = join(*comps);
    mode_t type = archive_entry_filetype(e);
    if (path.empty() || (type == AE_IFDIR && !archive_entry_hardlink(e))) continue;
    if (const char* hl = archive_entry_hardlink(e)) {
      auto target = split(raw, hl, fmt::format("the hard link target \"{}\"", util::printable(hl)));
      if (!target) return target.error();
      m_aliases[path] = join(*target);
      continue;
    }
    if (type == AE_IFLNK) {
      const char* t = archive_entry_symlink(e);
      if (!t) return fail(FailureKind::other, fmt::format("{}: member \"{}\" is a symlink without a target", m_file,
                                                          util::printable(raw)));
      std::string_view target = t;
      if (!target.empty() && target.front() == '/')
        return fail(FailureKind::other, fmt::format("{}: refusing member \"{}\": its symlink target \"{}\" is an absolute path",
                                                    m_file, util::printable(raw), util::printable(target)));
      std::vector<std::string> resolved(comps->begin(), comps->end() - 1);
      for (auto c : util::split(target, '/')) {
        if (c.empty() || c == ".") continue;
        if (c == "..") {
          if (resolved.empty())
            return fail(FailureKind::other, fmt::format("{}: refusing member \"{}\": its symlink target \"{}\" leaves the archive",
                                                        m_file, util::printable(raw), util::printable(target)));
          resolved.pop_back();
          continue;
        }
        resolved.emplace_back(c);
      }
      m_aliases[path] = join(resolved);
      continue;
    }
    if (type != AE_IFREG)
      return fail(FailureKind::other, fmt::format("{}: refusing member \"{}\": an image archive holds only files, "
                                                  "directories and links", m_file, util::printable(raw)));
    if (auto res = read_member(a.get(), path, archive_entry_size(e)); !res) return res;
  }
  return {};
}

Member* Importer::find(const std::string& path) {
  std::string p = path;
  for (int hops = 0; hops < 16; ++hops) {
    if (auto it = m_members.find(p); it != m_members.end()) return &it->second;
    auto a = m_aliases.find(p);
    if (a == m_aliases.end()) return nullptr;
    p = a->second;
  }
  return nullptr;
}

Result<std::string> Importer::member_bytes(const std::string& path) {
  Member* m = find(path);
  if (!m) return fail(FailureKind::other, fmt::format("{}: the archive has no member {}", m_file, util::printable(path)));
  if (m->bytes) return *m->bytes;
  auto b = m_store.read_blob(m->digest);
  if (!b) return fail(FailureKind::corrupt, b.message());
  return std::move(*b);
}

Result<oci::Descriptor> Importer::ensure(const std::string& path, std::string media_type, const oci::Digest* expected) {
  Member* m = find(path);
  if (!m) {
    if (expected && m_store.has_blob(*expected)) {
      oci::Descriptor d;
      d.media_type = std::move(media_type);
      d.digest = *expected;
      d.size = static_cast<int64_t>(fs::file_size(m_store.blob_path(*expected)));
      return d;
    }
    return fail(FailureKind::other, fmt::format("{}: the archive has no member {} (truncated?)", m_file,
                                                util::printable(path)));
  }
  if (expected && m->digest != *expected)
    return fail(FailureKind::corrupt, fmt::format("{}: member {} hashes to {}, not {}", m_file, util::printable(path),
                                                  m->digest.str(), expected->str()));
  if (!m->stored) {
    auto d = m_store.put_blob(*m->bytes, media_type);
    if (!d) return fail(FailureKind::other, d.message());
    m->stored = true;
  }
  oci::Descriptor d;
  d.media_type = std::move(media_type);
  d.digest = m->digest;
  d.size = m->size;
  return d;
}

Result<oci::Descriptor> Importer::ensure_digest(const oci::Descriptor& d) {
  auto r = ensure(std::string(kBlobDir) + d.digest.hex(), d.media_type, &d.digest);
  if (!r) return r;
  if (r->size != d.size)
    return fail(FailureKind::corrupt, fmt::format("{}: blob {} has {} bytes, its descriptor says {}", m_file,
                                                  d.digest.str(), r->size, d.size));
  return d;
}

std::vector<std::string> Importer::repo_tags_for(const nlohmann::json& manifest) {
  std::vector<std::string> out;
  Member* m = find("manifest.json");
  if (!m || !m->bytes || !manifest.contains("config") || !manifest["config"].is_object()) return out;
  auto docker = nlohmann::json::parse(*m->bytes, nullptr, false);
  auto cfg = manifest["config"].value("digest", std::string());
  if (!docker.is_array() || cfg.rfind("sha256:", 0) != 0) return out;
  for (auto& entry : docker) {
    if (!entry.is_object() || entry.value("Config", std::string()) != std::string(kBlobDir) + cfg.substr(7)) continue;
    if (entry.contains("RepoTags") && entry["RepoTags"].is_array())
      for (auto& t : entry["RepoTags"])
        if (t.is_string()) out.push_back(familiar(t.get<std::string>()));
  }
  return out;
}

Result<void> Importer::oci_candidates(const nlohmann::json& desc_json, std::vector<std::string> names, int depth,
                                      std::vector<Candidate>& out) {
  auto desc = oci::Descriptor::from_json(desc_json, m_file + ": index.json");
  if (!desc) return fail(FailureKind::other, desc.message());
  auto bytes = member_bytes(std::string(kBlobDir) + desc->digest.hex());
  if (!bytes) return fail(m_kind, fmt::format("{} (named by index.json)", bytes.message()));
  if (oci::Digest::of(*bytes) != desc->digest)
    return fail(FailureKind::corrupt, fmt::format("{}: blob {} does not hash to its digest", m_file, desc->digest.str()));
  auto doc = nlohmann::json::parse(*bytes, nullptr, false);
  if (!doc.is_object()) return fail(FailureKind::other, fmt::format("{}: blob {} is not JSON", m_file, desc->digest.str()));
  std::string media = desc->media_type.empty() ? doc.value("mediaType", std::string()) : desc->media_type;
  if (media == oci::media_index || media == oci::media_docker_list || (media.empty() && doc.contains("manifests"))) {
    if (depth > 2) return fail(FailureKind::other, fmt::format("{}: image indexes nest too deep", m_file));
    if (!doc.contains("manifests") || !doc["manifests"].is_array())
      return fail(FailureKind::other, fmt::format("{}: index {} has no manifests", m_file, desc->digest.str()));
    std::string arch = host_arch();
    std::vector<nlohmann::json> matching;
    for (auto& m : doc["manifests"]) {
      if (!m.is_object()) continue;
      auto p = m.value("platform", nlohmann::json::object());
      if (p.is_object() && p.value("os", std::string()) == "linux" && p.value("architecture", std::string()) == arch)
        matching.push_back(m);
    }
    if (matching.empty() && doc["manifests"].size() == 1) matching.push_back(doc["manifests"][0]);
    if (matching.empty())
      return fail(FailureKind::other, fmt::format("{}: index {} has no linux/{} image", m_file, desc->digest.str(), arch));
    for (auto& m : matching)
      if (auto r = oci_candidates(m, names, depth + 1, out); !r) return r;
    return {};
  }
  if (!doc.contains("config") || !doc.contains("layers") || !doc["layers"].is_array())
    return fail(FailureKind::other, fmt::format("{}: blob {} is not an image manifest", m_file, desc->digest.str()));
  auto config = oci::Descriptor::from_json(doc["config"], m_file + ": a manifest's config");
  if (!config) return fail(FailureKind::other, config.message());
  if (auto r = ensure_digest(*config); !r) return r.error();
  for (auto& l : doc["layers"]) {
    auto layer = oci::Descriptor::from_json(l, m_file + ": a manifest's layer");
    if (!layer) return fail(FailureKind::other, layer.message());
    if (auto r = ensure_digest(*layer); !r) return r.error();
  }
  oci::Descriptor manifest;
  manifest.media_type = media.empty() ? std::string(oci::media_manifest) : media;
  manifest.digest = desc->digest;
  manifest.size = static_cast<int64_t>(bytes->size());
  if (auto r = ensure(std::string(kBlobDir) + desc->digest.hex(), manifest.media_type, &desc->digest); !r) return r.error();
  for (auto& t : repo_tags_for(doc)) names.push_back(t);
  out.push_back({manifest, std::move(names)});
  return {};
}

Result<std::vector<Importer::Candidate>> Importer::from_oci_layout() {
  auto text = member_bytes("index.json");
  if (!text) return text.error();
  auto index = nlohmann::json::parse(*text, nullptr, false);
  if (!index.is_object() || !index.contains("manifests") || !index["manifests"].is_array())
    return fail(FailureKind::other, fmt::format("{}: index.json is not an OCI image index", m_file));
  std::vector<Candidate> out;
  for (auto& d : index["manifests"]) {
    std::vector<std::string> names;
    if (d.is_object() && d.contains("annotations") && d["annotations"].is_object()) {
      auto& ann = d["annotations"];
      std::string ref_name = ann.value(std::string(oci::annotation_ref_name), std::string());
      std::string containerd = ann.value(std::string(kContainerdName), std::string());
      // ref.name is often the tag alone ("v1", as docker writes it): only a full reference names the image.
      if (ref_name.find_first_of(":/") != std::string::npos) names.push_back(familiar(ref_name));
      if (!containerd.empty()) names.push_back(familiar(containerd));
    }
    if (auto r = oci_candidates(d, std::move(names), 0, out); !r) return r.error();
  }
  return out;
}

Result<std::vector<Importer::Candidate>> Importer::from_docker_archive() {
  auto text = member_bytes("manifest.json");
  if (!text) return text.error();
  auto docker = nlohmann::json::parse(*text, nullptr, false);
  if (!docker.is_array()) return fail(FailureKind::other, fmt::format("{}: manifest.json is not a JSON array", m_file));
  std::vector<Candidate> out;
  for (auto& entry : docker) {
    if (!entry.is_object() || !entry.contains("Config") || !entry["Config"].is_string() || !entry.contains("Layers") ||
        !entry["Layers"].is_array())
      return fail(FailureKind::other, fmt::format("{}: manifest.json has an entry without Config or Layers", m_file));
    auto path_of = [&](const nlohmann::json& j) -> Result<std::string> {
      if (!j.is_string()) return fail(FailureKind::other, fmt::format("{}: manifest.json names a non-string path", m_file));
      auto comps = split(j.get<std::string>(), j.get<std::string>(), "the path in manifest.json");
      if (!comps) return comps.error();
      return join(*comps);
    };
    auto config_path = path_of(entry["Config"]);
    if (!config_path) return config_path.error();
    auto expected_cfg = blob_member_digest(*config_path);
    auto config = ensure(*config_path, std::string(oci::media_config), expected_cfg ? &*expected_cfg : nullptr);
    if (!config) return config.error();
    auto config_bytes = member_bytes(*config_path);
    if (!config_bytes) return config_bytes.error();
    auto cfg = nlohmann::json::parse(*config_bytes, nullptr, false);
    std::vector<std::string> diff_ids;
    if (cfg.is_object() && cfg.contains("rootfs") && cfg["rootfs"].is_object() &&
        cfg["rootfs"].contains("diff_ids") && cfg["rootfs"]["diff_ids"].is_array())
      for (auto& d : cfg["rootfs"]["diff_ids"]) diff_ids.push_back(d.is_string() ? d.get<std::string>() : "");
    if (diff_ids.size() != entry["Layers"].size())
      return fail(FailureKind::other, fmt::format("{}: {} lists {} layers, its config {} diff_ids", m_file,
                                                  *config_path, entry["Layers"].size(), diff_ids.size()));
    nlohmann::json manifest = {{"schemaVersion", 2},
                               {"mediaType", oci::media_manifest},
                               {"config", config->to_json()},
                               {"layers", nlohmann::json::array()}};
    for (size_t i = 0; i < entry["Layers"].size(); ++i) {
      auto path = path_of(entry["Layers"][i]);
      if (!path) return path.error();
      Member* m = find(*path);
      if (!m) return fail(FailureKind::other, fmt::format("{}: the archive has no member {} (truncated?)", m_file, *path));
      std::string media = layer_media_type(m->magic);
      auto expected = blob_member_digest(*path);
      auto layer = ensure(*path, media, expected ? &*expected : nullptr);
      if (!layer) return layer.error();
      if (media == oci::media_layer_tar && layer->digest.str() != diff_ids[i])
        return fail(FailureKind::corrupt, fmt::format("{}: layer {} hashes to {}, but the config's diff_id is {}", m_file,
                                                      *path, layer->digest.str(), diff_ids[i]));
      manifest["layers"].push_back(layer->to_json());
    }
    auto desc = m_store.put_blob(manifest.dump(), std::string(oci::media_manifest));
    if (!desc) return fail(FailureKind::other, desc.message());
    std::vector<std::string> names;
    if (entry.contains("RepoTags") && entry["RepoTags"].is_array())
      for (auto& t : entry["RepoTags"])
        if (t.is_string()) names.push_back(familiar(t.get<std::string>()));
    out.push_back({*desc, std::move(names)});
  }
  return out;
}

Result<std::vector<ImportedImage>> Importer::resolve(const std::string& tag) {
  Result<std::vector<Candidate>> candidates = std::vector<Candidate>{};
  if (find("index.json"))
    candidates = from_oci_layout();
  else if (find("manifest.json"))
    candidates = from_docker_archive();
  else
    return fail(FailureKind::other, fmt::format("{} is neither an OCI image layout (no index.json) nor a "
                                                "docker-archive (no manifest.json)", m_file));
  if (!candidates) return candidates.error();
  if (candidates->empty()) return fail(FailureKind::other, fmt::format("{} holds no image", m_file));
  if (!tag.empty() && candidates->size() != 1)
    return fail(FailureKind::other, fmt::format("{} holds {} images; -t names one, so import it without -t",
                                                m_file, candidates->size()));
  std::vector<std::pair<oci::Reference, oci::Descriptor>> tags;
  for (auto& c : *candidates) {
    std::vector<std::string> names = tag.empty() ? c.names : std::vector<std::string>{tag};
    std::optional<oci::Reference> ref;
    std::string tried;
    for (auto& n : names) {
      auto parsed = oci::parse_reference(n);
      if (parsed && !parsed->digest) {
        ref = *parsed;
        break;
      }
      if (!tag.empty()) return fail(FailureKind::other, parsed ? fmt::format("-t {}: give NAME:TAG", tag) : parsed.message());
      tried += (tried.empty() ? "" : ", ") + n;
    }
    if (!ref)
      return fail(FailureKind::other,
                  fmt::format("{}: image {} has no usable name{}; give -t NAME:TAG", m_file, c.manifest.digest.str(),
                              tried.empty() ? "" : " (" + tried + ")"));
    tags.emplace_back(*ref, c.manifest);
  }
  std::vector<ImportedImage> out;
  for (auto& [ref, desc] : tags) {
    if (auto r = m_store.tag(ref, desc); !r) return fail(FailureKind::other, r.message());
    out.push_back({ref.str(), desc});
  }
  return out;
}

}  // namespace

bool wants_gzip(const fs::path& file) {
  std::string name = file.filename().string();
  auto ends = [&](std::string_view s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  return ends(".tar.gz") || ends(".tgz");
}

Result<oci::Descriptor> export_image(const store::Store& store, std::string_view ref, const fs::path& out,
                                     const ExportOptions& options, FailureKind* kind) {
  auto fail = [&](FailureKind k, std::string message) -> Result<oci::Descriptor> {
    if (kind) *kind = k;
    return Error{std::move(message)};
  };
  FailureKind read_kind = FailureKind::other;
  auto image = read_image(store, ref, &read_kind);
  if (!image) return fail(read_kind, image.message());
  auto config = oci::Descriptor::from_json(image->manifest_json["config"], "the manifest's config");
  if (!config) return fail(FailureKind::other, config.message());
  std::vector<oci::Descriptor> layers;
  for (auto& l : image->manifest_json["layers"]) {
    auto d = oci::Descriptor::from_json(l, "a layer of the manifest");
    if (!d) return fail(FailureKind::other, d.message());
    layers.push_back(std::move(*d));
  }
  std::string name = export_name(store, ref, image->manifest.digest);
  std::string manifest_media = image->manifest.media_type.empty()
                                   ? image->manifest_json.value("mediaType", std::string(oci::media_manifest))
                                   : image->manifest.media_type;

  // Every member, sorted by path: the tar's bytes depend only on the image.
  using Source = std::variant<std::string, oci::Descriptor, std::monostate>;  // bytes, a store blob, a directory
  std::map<std::string, Source> members;
  members["blobs"] = std::monostate{};
  members["blobs/sha256"] = std::monostate{};
  members[std::string(kBlobDir) + image->manifest.digest.hex()] = image->manifest_bytes;
  members[std::string(kBlobDir) + config->digest.hex()] = image->config_bytes;
  for (auto& l : layers) members.emplace(std::string(kBlobDir) + l.digest.hex(), l);
  members["oci-layout"] = std::string("{\"imageLayoutVersion\":\"1.0.0\"}");
  nlohmann::json desc = {{"mediaType", manifest_media},
                         {"digest", image->manifest.digest.str()},
                         {"size", static_cast<int64_t>(image->manifest_bytes.size())}};
  if (!name.empty())
    desc["annotations"] = {{std::string(oci::annotation_ref_name), name}, {std::string(kContainerdName), normalized(name)}};
  nlohmann::json index = {{"schemaVersion", 2}, {"mediaType", oci::media_index}, {"manifests", {desc}}};
  members["index.json"] = index.dump();
  if (options.format == ArchiveFormat::docker) {
    nlohmann::json entry = {{"Config", std::string(kBlobDir) + config->digest.hex()},
                            {"RepoTags", name.empty() ? nlohmann::json::array() : nlohmann::json::array({name})},
                            {"Layers", nlohmann::json::array()}};
    for (auto& l : layers) entry["Layers"].push_back(std::string(kBlobDir) + l.digest.hex());
    members["manifest.json"] = nlohmann::json::array({entry}).dump();
  }

  bool to_stdout = out == "-";
  std::string tmp;
  UniqueFd fd;
  if (to_stdout) {
    fd.reset(::dup(STDOUT_FILENO));
  } else {
    tmp = out.string() + ".tmp-XXXXXX";
    fd.reset(::mkstemp(tmp.data()));
    if (!fd) return fail(FailureKind::other, fmt::format("cannot write {}: {}", out.string(), errno_text(errno)));
    ::fchmod(fd.get(), 0644);
  }
  auto discard = [&](FailureKind k, std::string message) {
    if (!tmp.empty()) ::unlink(tmp.c_str());
    return fail(k, std::move(message));
  };

  std::unique_ptr<struct archive, WriteDeleter> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_bytes_in_last_block(a.get(), 1);  // end after the two zero blocks, as docker save does
  if (options.gzip) {
    archive_write_add_filter_gzip(a.get());
    archive_write_set_filter_option(a.get(), "gzip", "compression-level", "0");
    archive_write_set_filter_option(a.get(), "gzip", "timestamp", nullptr);
  }
  if (archive_write_open_fd(a.get(), fd.get()) != ARCHIVE_OK)
    return discard(FailureKind::other, fmt::format("cannot write {}: {}", out.string(), archive_error_string(a.get())));
  TarWriter writer(a.get());
  for (auto& [path, source] : members) {
    Result<void> r;
    bool corrupt = false;
    if (auto* bytes = std::get_if<std::string>(&source))
      r = writer.bytes(path, *bytes);
    else if (auto* blob = std::get_if<oci::Descriptor>(&source))
      r = writer.blob(store, path, *blob, &corrupt);
    else
      r = writer.dir(path);
    if (!r) {
      a.reset();
      return discard(corrupt ? FailureKind::corrupt : FailureKind::other,
                     corrupt ? r.message() : fmt::format("{}: {}", out.string(), r.message()));
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK)
    return discard(FailureKind::other, fmt::format("cannot write {}: {}", out.string(), archive_error_string(a.get())));
  a.reset();
  if (!to_stdout) {
    if (::fsync(fd.get()) != 0) return discard(FailureKind::other, fmt::format("cannot write {}: {}", out.string(), errno_text(errno)));
    fd.reset();
    if (::rename(tmp.c_str(), out.c_str()) != 0)
      return discard(FailureKind::other, fmt::format("cannot write {}: {}", out.string(), errno_text(errno)));
  }
  return image->manifest;
}

Result<std::vector<ImportedImage>> import_archive(store::Store& store, const fs::path& file, const std::string& tag,
                                                  FailureKind* kind) {
  // Held from the first blob until the tags are written, so that gc leaves our blobs alone.
  auto lock = store.lock_shared();
  if (!lock) {
    if (kind) *kind = FailureKind::other;
    return Error{lock.message()};
  }
  Importer importer(store, file);
  Result<std::vector<ImportedImage>> result = std::vector<ImportedImage>{};
  if (auto r = importer.read(); !r)
    result = r.error();
  else
    result = importer.resolve(tag);
  if (!result && kind) *kind = importer.kind();
  return result;
}

}  // namespace envsnap::image
