#include "envsnap/store/store.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "envsnap/util/sha256.hpp"

namespace envsnap::store {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view layout_json = R"({"imageLayoutVersion":"1.0.0"})";

std::string errno_text(int err) { return std::strerror(err); }

bool is_hex64(std::string_view s) {
  if (s.size() != 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool is_hex(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string random_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    auto n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // getrandom cannot fail on Linux >= 3.17 without GRND_NONBLOCK; fall back to the clock.
      auto t = std::chrono::steady_clock::now().time_since_epoch().count() ^ (static_cast<long>(::getpid()) << 32);
      std::memcpy(raw.data(), &t, std::min(sizeof t, bytes));
      break;
    }
    got += static_cast<size_t>(n);
  }
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

util::Result<void> write_all(int fd, const void* data, size_t size, const std::string& path) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    auto n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return util::Error{fmt::format("cannot write {}: {}", path, errno_text(errno))};
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return {};
}

util::Result<void> fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return util::Error{fmt::format("cannot open {}: {}", dir.string(), errno_text(errno))};
  util::UniqueFd guard(fd);
  if (::fsync(fd) != 0 && errno != EINVAL)
    return util::Error{fmt::format("cannot fsync {}: {}", dir.string(), errno_text(errno))};
  return {};
}

util::Result<void> make_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return util::Error{fmt::format("cannot create {}: {}", dir.string(), ec.message())};
  return {};
}

// Writes bytes to a temporary file in tmp_dir, fsyncs it, renames it to dest and fsyncs dest's directory.
util::Result<void> write_file_atomic(const fs::path& tmp_dir, const fs::path& dest, std::string_view bytes) {
  if (auto r = make_dirs(tmp_dir); !r) return r;
  fs::path tmp = tmp_dir / (dest.filename().string() + "." + random_hex(8));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return util::Error{fmt::format("cannot create {}: {}", tmp.string(), errno_text(errno))};
  util::UniqueFd guard(fd);
  auto fail = [&](util::Error e) -> util::Result<void> {
    ::unlink(tmp.c_str());
    return e;
  };
  if (auto r = write_all(fd, bytes.data(), bytes.size(), tmp.string()); !r) return fail(r.error());
  if (::fsync(fd) != 0) return fail({fmt::format("cannot fsync {}: {}", tmp.string(), errno_text(errno))});
  guard.reset();
  if (::rename(tmp.c_str(), dest.c_str()) != 0)
    return fail({fmt::format("cannot replace {}: {}", dest.string(), errno_text(errno))});
  return fsync_dir(dest.parent_path());
}

util::Result<std::string> read_whole(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return util::Error{fmt::format("cannot read {}: {}", path.string(), errno_text(errno))};
  util::UniqueFd guard(fd);
  std::string out;
  char buf[65536];
  while (true) {
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return util::Error{fmt::format("cannot read {}: {}", path.string(), errno_text(errno))};
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

util::Result<util::UniqueFd> take_flock(const fs::path& path, int op) {
  if (auto r = make_dirs(path.parent_path()); !r) {
    // A read-only store can still be locked when the lock file exists.
    if (!fs::exists(path)) return util::Error{fmt::format("cannot lock the store: {}", r.message())};
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 && (errno == EACCES || errno == EROFS) && op == LOCK_SH) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return util::Error{fmt::format("cannot lock the store: cannot open {}: {}", path.string(), errno_text(errno))};
  util::UniqueFd guard(fd);
  while (::flock(fd, op) != 0) {
    if (errno == EINTR) continue;
    return util::Error{fmt::format("cannot lock the store: flock {}: {}", path.string(), errno_text(errno))};
  }
  return guard;
}

bool is_manifest_type(std::string_view mt) { return mt == oci::media_manifest || mt == oci::media_docker_manifest; }
bool is_index_type(std::string_view mt) { return mt == oci::media_index || mt == oci::media_docker_list; }

std::string media_type_of(const nlohmann::json& doc, const std::string& fallback) {
  if (doc.is_object() && doc.contains("mediaType") && doc["mediaType"].is_string())
    return doc["mediaType"].get<std::string>();
  if (!fallback.empty()) return fallback;
  if (doc.is_object() && doc.contains("manifests")) return std::string(oci::media_index);
  if (doc.is_object() && doc.contains("layers")) return std::string(oci::media_manifest);
  return {};
}

std::string ref_name_of(const nlohmann::json& entry) {
  if (!entry.is_object() || !entry.contains("annotations") || !entry["annotations"].is_object()) return {};
  auto& a = entry["annotations"];
  auto it = a.find(std::string(oci::annotation_ref_name));
  if (it == a.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

uint64_t tree_bytes(const fs::path& p) {
  std::error_code ec;
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) return 0;
  if (!S_ISDIR(st.st_mode)) return S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
  uint64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    struct stat s;
    if (::lstat(it->path().c_str(), &s) == 0 && S_ISREG(s.st_mode)) total += static_cast<uint64_t>(s.st_size);
  }
  return total;
}

}  // namespace

fs::path default_store_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* s = std::getenv("ENVSNAP_STORE"); s && *s) return s;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return fs::path(x) / "envsnap";
  const char* home = std::getenv("HOME");
  std::string h = home && *home ? home : "";
  if (h.empty())
    if (auto* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) h = pw->pw_dir;
  return fs::path(h.empty() ? "/" : h) / ".local/share/envsnap";
}

// ---------------------------------------------------------------- BlobWriter

struct BlobWriter::Impl {
  fs::path store;
  fs::path tmp;
  util::UniqueFd fd;
  util::Sha256 sha;
  uint64_t size = 0;
  uint64_t flushed = 0;  // bytes handed to writeback so far
  bool done = false;
  std::string failed;

  ~Impl() {
    if (!done && !tmp.empty()) ::unlink(tmp.c_str());
  }
  util::Result<oci::Descriptor> finish(std::string media_type, const oci::Digest* expected);
};

BlobWriter::BlobWriter(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
BlobWriter::BlobWriter(BlobWriter&&) noexcept = default;
BlobWriter& BlobWriter::operator=(BlobWriter&&) noexcept = default;
BlobWriter::~BlobWriter() = default;

uint64_t BlobWriter::size() const { return m_impl ? m_impl->size : 0; }

util::Result<void> BlobWriter::write(const void* data, size_t size) {
  if (!m_impl || m_impl->done) return util::Error{"blob writer already committed"};
  if (!m_impl->failed.empty()) return util::Error{m_impl->failed};
  auto r = write_all(m_impl->fd.get(), data, size, m_impl->tmp.string());
  if (!r) {
    m_impl->failed = r.message();
    return r;
  }
  m_impl->sha.update(data, size);
  m_impl->size += size;
  // Start writeback as the blob grows, so the fsync in commit() waits for the last
  // stretch only, not for gigabytes of dirty pages. Advisory: errors surface in fsync.
  constexpr uint64_t writeback_step = 32u << 20;
  if (m_impl->size - m_impl->flushed >= writeback_step) {
    ::sync_file_range(m_impl->fd.get(), static_cast<off64_t>(m_impl->flushed),
                      static_cast<off64_t>(m_impl->size - m_impl->flushed), SYNC_FILE_RANGE_WRITE);
    m_impl->flushed = m_impl->size;
  }
  return {};
}

util::Result<oci::Descriptor> BlobWriter::commit(std::string media_type) {
  if (!m_impl || m_impl->done) return util::Error{"blob writer already committed"};
  return m_impl->finish(std::move(media_type), nullptr);
}

util::Result<oci::Descriptor> BlobWriter::commit_expected(std::string media_type, const oci::Digest& expected) {
  if (!m_impl || m_impl->done) return util::Error{"blob writer already committed"};
  return m_impl->finish(std::move(media_type), &expected);
}

util::Result<oci::Descriptor> BlobWriter::Impl::finish(std::string media_type, const oci::Digest* expected) {
  Impl& im = *this;
  auto discard = [&](std::string msg) -> util::Result<oci::Descriptor> {
    im.fd.reset();
    ::unlink(im.tmp.c_str());
    im.done = true;
    return util::Error{std::move(msg)};
  };
  if (!im.failed.empty()) return discard(im.failed);
  auto digest = oci::Digest::from_hex(im.sha.hex());
  if (expected && *expected != digest)
    return discard(fmt::format("blob content hashes to {}, expected {} ({} bytes); nothing was stored", digest.str(),
                               expected->str(), im.size));
  if (::fsync(im.fd.get()) != 0) return discard(fmt::format("cannot fsync {}: {}", im.tmp.string(), errno_text(errno)));
  im.fd.reset();
  fs::path dir = im.store / "blobs" / "sha256";
  if (auto r = make_dirs(dir); !r) return discard(r.message());
  fs::path dest = dir / digest.hex();
  if (::renameat2(AT_FDCWD, im.tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_NOREPLACE) != 0) {
    int err = errno;
    if (err == EEXIST) {
      ::unlink(im.tmp.c_str());  // already stored: blobs are immutable, keep the existing one
    } else if (err == EINVAL || err == ENOSYS || err == ENOTSUP) {
      struct stat st;
      if (::stat(dest.c_str(), &st) == 0) {
        ::unlink(im.tmp.c_str());
      } else if (::rename(im.tmp.c_str(), dest.c_str()) != 0) {
        return discard(fmt::format("cannot store {}: {}", dest.string(), errno_text(errno)));
      }
    } else {
      return discard(fmt::format("cannot store {}: {}", dest.string(), errno_text(err)));
    }
  }
  im.done = true;
  if (auto r = fsync_dir(dir); !r) return util::Error{r.message()};
  oci::Descriptor d;
  d.media_type = std::move(media_type);
  d.digest = digest;
  d.size = static_cast<int64_t>(im.size);
  return d;
}

// ---------------------------------------------------------------- Store

util::Result<Store> Store::open(const fs::path& dir, OpenMode mode) {
  Store s;
  s.m_path = dir;
  auto no_store = [&](std::string why) {
    return util::Error{fmt::format("no store at {}{}; capture something first or give --store", dir.string(), why)};
  };
  std::error_code ec;
  auto st = fs::status(dir, ec);
  bool exists = fs::exists(st);
  if (exists && !fs::is_directory(st))
    return util::Error{fmt::format("{} is not a directory; give --store a new or empty directory", dir.string())};
  fs::path layout = dir / "oci-layout";
  if (exists && fs::exists(layout, ec)) {
    auto text = read_whole(layout);
    if (!text) return util::Error{text.message()};
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || j.value("imageLayoutVersion", "") != "1.0.0")
      return util::Error{fmt::format("{} is not an OCI layout file with imageLayoutVersion 1.0.0; "
                                     "give --store another directory",
                                     layout.string())};
    return s;
  }
  if (mode == OpenMode::must_exist) return no_store(exists ? " (no oci-layout file there)" : "");
  if (exists) {
    static const std::set<std::string> partial = {"blobs", "index.json", ".envsnap"};
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
      if (!partial.count(it->path().filename().string()))
        return util::Error{fmt::format("{} exists and is not an envsnap store (no oci-layout file, and it is not "
                                       "empty); give --store a new or empty directory",
                                       dir.string())};
    if (ec) return util::Error{fmt::format("cannot read {}: {}", dir.string(), ec.message())};
  }
  if (auto r = make_dirs(dir / "blobs" / "sha256"); !r) return util::Error{r.message()};
  auto lock = take_flock(dir / ".envsnap" / "lock", LOCK_EX);
  if (!lock) return util::Error{lock.message()};
  if (fs::exists(layout, ec)) return s;
  fs::path tmp = dir / ".envsnap" / "tmp";
  if (!fs::exists(dir / "index.json", ec)) {
    nlohmann::json idx = {{"schemaVersion", 2}, {"mediaType", oci::media_index}, {"manifests", nlohmann::json::array()}};
    if (auto r = write_file_atomic(tmp, dir / "index.json", idx.dump(2) + "\n"); !r) return util::Error{r.message()};
  }
  if (auto r = write_file_atomic(tmp, layout, layout_json); !r) return util::Error{r.message()};
  return s;
}

fs::path Store::cache_dir(std::string_view name) const {
  fs::path p = m_path / ".envsnap" / std::string(name);
  std::error_code ec;
  fs::create_directories(p, ec);
  return p;
}

util::Result<std::string> Store::read_record(std::string_view kind, std::string_view name) const {
  return read_whole(m_path / ".envsnap" / std::string(kind) / std::string(name));
}

util::Result<void> Store::write_record(std::string_view kind, std::string_view name, std::string_view bytes) const {
  return write_file_atomic(m_path / ".envsnap" / "tmp", cache_dir(kind) / std::string(name), bytes);
}

bool Store::has_blob(const oci::Digest& d) const {
  struct stat st;
  return ::stat(blob_path(d).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

fs::path Store::blob_path(const oci::Digest& d) const { return m_path / "blobs" / "sha256" / d.hex(); }

util::Result<BlobWriter> Store::new_blob() {
  fs::path dir = m_path / ".envsnap" / "tmp";
  if (auto r = make_dirs(dir); !r) return util::Error{r.message()};
  for (int attempt = 0; attempt < 16; ++attempt) {
    fs::path tmp = dir / ("blob-" + random_hex(12));
    int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return util::Error{fmt::format("cannot create {}: {}", tmp.string(), errno_text(errno))};
    }
    util::UniqueFd guard(fd);
    // The lock tells gc the file is in use; gc may have removed it before we locked it.
    while (::flock(fd, LOCK_EX) != 0 && errno == EINTR) {
    }
    struct stat a, b;
    if (::fstat(fd, &a) != 0 || ::stat(tmp.c_str(), &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) continue;
    auto impl = std::make_unique<BlobWriter::Impl>();
    impl->store = m_path;
    impl->tmp = tmp;
    impl->fd = std::move(guard);
    return BlobWriter(std::move(impl));
  }
  return util::Error{fmt::format("cannot create a temporary file in {}", dir.string())};
}

util::Result<oci::Descriptor> Store::put_blob(std::string_view bytes, std::string media_type) {
  auto w = new_blob();
  if (!w) return util::Error{w.message()};
  if (auto r = w->write(bytes); !r) return util::Error{r.message()};
  return w->commit(std::move(media_type));
}

util::Result<std::string> Store::read_blob(const oci::Digest& d) const {
  fs::path p = blob_path(d);
  if (!has_blob(d))
    return util::Error{fmt::format("blob {} is missing from the store at {} (no {}); run envsnap check", d.str(),
                                   m_path.string(), p.string())};
  auto bytes = read_whole(p);
  if (!bytes) return bytes;
  auto actual = util::sha256_hex(*bytes);
  if (actual != d.hex())
    return util::Error{fmt::format("blob {} is corrupt (content hashes to sha256:{}): {}; run envsnap check", d.str(),
                                   actual, p.string())};
  return bytes;
}

util::Result<util::UniqueFd> Store::open_blob(const oci::Digest& d) const {
  fs::path p = blob_path(d);
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return util::Error{fmt::format("blob {} is missing from the store at {} (no {}); run envsnap check", d.str(),
                                     m_path.string(), p.string())};
    return util::Error{fmt::format("cannot open {}: {}", p.string(), errno_text(errno))};
  }
  return util::UniqueFd(fd);
}

bool Store::remove_if_corrupt(const oci::Digest& d) const {
  auto fd = open_blob(d);
  if (!fd) return false;
  auto actual = util::sha256_file(fd->get(), blob_path(d).string());
  if (!actual || *actual == d.hex()) return false;  // intact, or unreadable: not proven corrupt
  struct stat hashed{};
  if (::fstat(fd->get(), &hashed) != 0) return false;
  // Another writer may have replaced the corrupt file with a good one meanwhile: move
  // the path aside, and delete only the very file that was hashed.
  fs::path tmp_dir = m_path / ".envsnap" / "tmp";
  if (auto r = make_dirs(tmp_dir); !r) return false;
  fs::path aside = tmp_dir / fmt::format("corrupt-{}-{}", d.hex(), ::getpid());
  if (::rename(blob_path(d).c_str(), aside.c_str()) != 0) return false;
  struct stat moved{};
  if (::lstat(aside.c_str(), &moved) == 0 && moved.st_dev == hashed.st_dev && moved.st_ino == hashed.st_ino) {
    ::unlink(aside.c_str());
    return true;
  }
  // Not the file we hashed: put it back unless a blob is at the path again.
  if (::renameat2(AT_FDCWD, aside.c_str(), AT_FDCWD, blob_path(d).c_str(), RENAME_NOREPLACE) != 0) ::unlink(aside.c_str());
  return false;
}

util::Result<StoreLock> Store::lock_exclusive() const {
  auto fd = take_flock(m_path / ".envsnap" / "gc.lock", LOCK_EX);
  if (!fd) return util::Error{fd.message()};
  return StoreLock(std::move(*fd));
}

util::Result<StoreLock> Store::lock_shared() const {
  auto fd = take_flock(m_path / ".envsnap" / "gc.lock", LOCK_SH);
  if (!fd) return util::Error{fd.message()};
  return StoreLock(std::move(*fd));
}

namespace {

util::Result<nlohmann::json> load_index(const fs::path& store) {
  fs::path p = store / "index.json";
  struct stat st;
  if (::stat(p.c_str(), &st) != 0 && errno == ENOENT)
    return nlohmann::json{{"schemaVersion", 2}, {"mediaType", oci::media_index}, {"manifests", nlohmann::json::array()}};
  auto text = read_whole(p);
  if (!text) return util::Error{text.message()};
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return util::Error{fmt::format("{} is not valid JSON; repair it or restore it from a backup", p.string())};
  if (!j.contains("manifests")) j["manifests"] = nlohmann::json::array();
  if (!j["manifests"].is_array())
    return util::Error{fmt::format("{}: \"manifests\" is not an array; repair it", p.string())};
  return j;
}

struct IndexEntry {
  std::string ref_name;
  oci::Descriptor desc;
};

util::Result<std::vector<IndexEntry>> index_entries(const fs::path& store) {
  auto idx = load_index(store);
  if (!idx) return util::Error{idx.message()};
  std::vector<IndexEntry> out;
  std::string where = (store / "index.json").string();
  for (auto& m : (*idx)["manifests"]) {
    auto d = oci::Descriptor::from_json(m, where);
    if (!d) return util::Error{d.message()};
    out.push_back({ref_name_of(m), std::move(*d)});
  }
  return out;
}

// Runs fn on index.json under the exclusive index lock and writes the result atomically.
util::Result<void> update_index(const fs::path& store, const std::function<util::Result<void>(nlohmann::json&)>& fn) {
  auto lock = take_flock(store / ".envsnap" / "lock", LOCK_EX);
  if (!lock) return util::Error{lock.message()};
  auto idx = load_index(store);
  if (!idx) return util::Error{idx.message()};
  if (auto r = fn(*idx); !r) return r;
  if (!idx->contains("schemaVersion")) (*idx)["schemaVersion"] = 2;
  if (!idx->contains("mediaType")) (*idx)["mediaType"] = oci::media_index;
  return write_file_atomic(store / ".envsnap" / "tmp", store / "index.json", idx->dump(2) + "\n");
}

}  // namespace

util::Result<std::vector<TaggedImage>> Store::list() const {
  auto entries = index_entries(m_path);
  if (!entries) return util::Error{entries.message()};
  std::vector<TaggedImage> out;
  for (auto& e : *entries)
    if (!e.ref_name.empty()) out.push_back({e.ref_name, e.desc});
  std::stable_sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
  return out;
}

util::Result<oci::Descriptor> Store::resolve(std::string_view ref) const {
  auto entries = index_entries(m_path);
  if (!entries) return util::Error{entries.message()};
  std::string text(ref);
  for (auto& e : *entries)
    if (!e.ref_name.empty() && e.ref_name == text) return e.desc;

  auto by_digest = [&](const oci::Digest& d) -> util::Result<oci::Descriptor> {
    for (auto& e : *entries)
      if (e.desc.digest == d) return e.desc;
    struct stat st;
    if (::stat(blob_path(d).c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return util::Error{fmt::format("no image {} in the store at {}; envsnap ls lists them", d.str(), m_path.string())};
    if (st.st_size > (4 << 20))  // manifests are small; do not read a layer to find that out
      return util::Error{fmt::format("{} in the store at {} is not an image manifest", d.str(), m_path.string())};
    auto bytes = read_blob(d);
    if (!bytes) return util::Error{bytes.message()};
    auto j = nlohmann::json::parse(*bytes, nullptr, false);
    std::string mt = j.is_discarded() ? std::string() : media_type_of(j, "");
    if (!is_manifest_type(mt) && !is_index_type(mt))
      return util::Error{fmt::format("{} in the store at {} is not an image manifest", d.str(), m_path.string())};
    oci::Descriptor out;
    out.media_type = mt;
    out.digest = d;
    out.size = static_cast<int64_t>(bytes->size());
    return out;
  };

  if (text.starts_with("sha256:")) {
    auto d = oci::Digest::parse(text);
    if (!d) return util::Error{d.message()};
    return by_digest(*d);
  }

  auto parsed = oci::parse_reference(text);
  if (parsed && parsed->digest) return by_digest(*parsed->digest);
  std::string wanted = parsed ? parsed->str() : text;
  if (parsed) {
    for (auto& e : *entries)
      if (e.ref_name == wanted) return e.desc;
  }

  if (is_hex(text) && text.size() >= 7 && text.size() <= 64) {
    std::set<oci::Digest> hits;
    for (auto& e : *entries)
      if (e.desc.digest.hex().starts_with(text)) hits.insert(e.desc.digest);
    if (hits.size() == 1) return by_digest(*hits.begin());
    if (hits.size() > 1) {
      std::string list;
      for (auto& h : hits) list += (list.empty() ? "" : ", ") + h.str();
      return util::Error{fmt::format("'{}' is ambiguous in the store at {}: it matches {}; give more digits", text,
                                     m_path.string(), list)};
    }
  }

  if (!parsed && !(is_hex(text) && text.size() >= 7))
    return util::Error{parsed.message()};
  std::set<std::string> names;
  for (auto& e : *entries)
    if (!e.ref_name.empty()) names.insert(e.ref_name);
  std::string known;
  size_t shown = 0;
  for (auto& n : names)
    if (shown++ < 10) known += (known.empty() ? "" : ", ") + n;
  if (names.size() > 10) known += fmt::format(" and {} more", names.size() - 10);
  return util::Error{fmt::format("no image '{}' in the store at {}; {}", wanted, m_path.string(),
                                 known.empty() ? "the store has no tagged images"
                                               : "it has " + known + " (envsnap ls lists them)")};
}

util::Result<nlohmann::json> Store::read_manifest(const oci::Descriptor& d) const {
  auto bytes = read_blob(d.digest);
  if (!bytes) return util::Error{bytes.message()};
  if (d.size > 0 && static_cast<int64_t>(bytes->size()) != d.size)
    return util::Error{fmt::format("manifest {} has {} bytes, its descriptor says {}: {}", d.digest.str(),
                                   bytes->size(), d.size, blob_path(d.digest).string())};
  auto j = nlohmann::json::parse(*bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return util::Error{fmt::format("manifest {} is not a JSON object: {}", d.digest.str(), blob_path(d.digest).string())};
  return j;
}

util::Result<nlohmann::json> Store::read_config(const nlohmann::json& manifest) const {
  if (!manifest.is_object() || !manifest.contains("config"))
    return util::Error{"the manifest has no config descriptor (is it an image index?)"};
  auto d = oci::Descriptor::from_json(manifest["config"], "manifest config");
  if (!d) return util::Error{d.message()};
  auto bytes = read_blob(d->digest);
  if (!bytes) return util::Error{bytes.message()};
  auto j = nlohmann::json::parse(*bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return util::Error{fmt::format("config {} is not a JSON object: {}", d->digest.str(), blob_path(d->digest).string())};
  return j;
}

util::Result<void> Store::tag(const oci::Reference& ref, const oci::Descriptor& manifest) {
  if (ref.digest || ref.tag.empty())
    return util::Error{fmt::format("cannot tag '{}': give NAME:TAG, not a digest", ref.str())};
  if (!has_blob(manifest.digest))
    return util::Error{fmt::format("cannot tag {}: manifest {} is not in the store at {}", ref.str(),
                                   manifest.digest.str(), m_path.string())};
  std::string name = ref.name + ":" + ref.tag;
  return update_index(m_path, [&](nlohmann::json& idx) -> util::Result<void> {
    auto& ms = idx["manifests"];
    nlohmann::json kept = nlohmann::json::array();
    for (auto& m : ms)
      if (ref_name_of(m) != name) kept.push_back(m);
    oci::Descriptor d = manifest;
    if (d.media_type.empty()) d.media_type = oci::media_manifest;
    d.annotations[std::string(oci::annotation_ref_name)] = name;
    kept.push_back(d.to_json());
    ms = std::move(kept);
    return {};
  });
}

util::Result<void> Store::untag(std::string_view ref) {
  std::string text(ref);
  auto parsed = oci::parse_reference(text);
  return update_index(m_path, [&](nlohmann::json& idx) -> util::Result<void> {
    std::vector<std::pair<std::string, oci::Digest>> tags;  // per manifests[] entry; empty name: keep
    for (auto& m : idx["manifests"]) {
      auto d = oci::Descriptor::from_json(m, (m_path / "index.json").string());
      if (!d) return util::Error{d.message()};
      tags.emplace_back(ref_name_of(m), d->digest);
    }
    auto any = [&](auto pred) {
      return std::any_of(tags.begin(), tags.end(), [&](auto& t) { return !t.first.empty() && pred(t); });
    };
    // An exact ref.name, then NAME[:TAG], then NAME@DIGEST (that name's tags on the digest),
    // then a digest or prefix (every tag of the manifest).
    std::function<bool(const std::pair<std::string, oci::Digest>&)> match;
    std::string name = parsed && !parsed->digest ? parsed->str() : std::string();
    if (any([&](auto& t) { return t.first == text; })) {
      match = [&](auto& t) { return t.first == text; };
    } else if (!name.empty() && any([&](auto& t) { return t.first == name; })) {
      match = [&](auto& t) { return t.first == name; };
    } else if (parsed && parsed->digest) {
      std::string prefix = parsed->name + ":";
      match = [&, d = *parsed->digest](auto& t) { return t.second == d && t.first.starts_with(prefix); };
    } else {
      auto target = resolve(text);
      if (!target) return target.error();
      match = [d = target->digest](auto& t) { return t.second == d; };
    }
    if (!any(match)) {
      return util::Error{fmt::format("no image '{}' is tagged in the store at {}; envsnap ls lists them",
                                     name.empty() ? text : name, m_path.string())};
    }
    nlohmann::json kept = nlohmann::json::array();
    for (size_t i = 0; i < tags.size(); ++i)
      if (tags[i].first.empty() || !match(tags[i])) kept.push_back(idx["manifests"][i]);
    idx["manifests"] = std::move(kept);
    return {};
  });
}

namespace {

struct Marked {
  std::set<std::string> blobs;     // hex
  std::set<std::string> diff_ids;  // hex
};

// Marks d and everything it references; an error when a manifest cannot be read.
util::Result<void> mark(const Store& s, const oci::Descriptor& d, Marked& m, int depth) {
  if (!m.blobs.insert(d.digest.hex()).second) return {};
  if (depth > 8) return util::Error{fmt::format("{}: image indexes nest too deeply", d.digest.str())};
  if (!s.has_blob(d.digest)) return {};
  auto j = s.read_manifest(d);
  if (!j) return util::Error{j.message()};
  std::string mt = media_type_of(*j, d.media_type);
  if (is_index_type(mt)) {
    if (j->contains("manifests") && (*j)["manifests"].is_array())
      for (auto& sub : (*j)["manifests"]) {
        auto sd = oci::Descriptor::from_json(sub, d.digest.str());
        if (!sd) return util::Error{sd.message()};
        if (auto r = mark(s, *sd, m, depth + 1); !r) return r;
      }
    return {};
  }
  if (!is_manifest_type(mt)) return {};
  if (j->contains("config")) {
    auto c = oci::Descriptor::from_json((*j)["config"], d.digest.str());
    if (!c) return util::Error{c.message()};
    m.blobs.insert(c->digest.hex());
    if (s.has_blob(c->digest)) {
      auto cfg = s.read_config(*j);
      if (cfg && cfg->contains("rootfs") && (*cfg)["rootfs"].is_object() && (*cfg)["rootfs"].contains("diff_ids") &&
          (*cfg)["rootfs"]["diff_ids"].is_array())
        for (auto& id : (*cfg)["rootfs"]["diff_ids"])
          if (id.is_string())
            if (auto dd = oci::Digest::parse(id.get<std::string>())) m.diff_ids.insert(dd->hex());
    }
  }
  if (j->contains("layers") && (*j)["layers"].is_array())
    for (auto& l : (*j)["layers"]) {
      auto ld = oci::Descriptor::from_json(l, d.digest.str());
      if (!ld) return util::Error{ld.message()};
      m.blobs.insert(ld->digest.hex());
    }
  return {};
}

}  // namespace

util::Result<GcReport> Store::gc() {
  auto store_lock = lock_exclusive();
  if (!store_lock) return util::Error{store_lock.message()};
  auto index_lock = take_flock(m_path / ".envsnap" / "lock", LOCK_EX);
  if (!index_lock) return util::Error{index_lock.message()};
  auto entries = index_entries(m_path);
  if (!entries) return util::Error{entries.message()};
  Marked marked;
  for (auto& e : *entries)
    if (auto r = mark(*this, e.desc, marked, 0); !r)
      return util::Error{fmt::format("gc stopped, nothing was removed: {}", r.message())};

  GcReport rep;
  std::error_code ec;
  fs::path blobs = m_path / "blobs" / "sha256";
  for (auto it = fs::directory_iterator(blobs, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!is_hex64(name) || marked.blobs.count(name)) continue;
    struct stat st;
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (::unlink(it->path().c_str()) != 0)
      return util::Error{fmt::format("cannot remove {}: {}", it->path().string(), errno_text(errno))};
    rep.blobs_removed++;
    rep.bytes_removed += static_cast<uint64_t>(st.st_size);
  }
  if (ec && ec != std::errc::no_such_file_or_directory)
    return util::Error{fmt::format("cannot read {}: {}", blobs.string(), ec.message())};
  if (rep.blobs_removed > 0) (void)fsync_dir(blobs);

  ec.clear();
  fs::path tmp = m_path / ".envsnap" / "tmp";
  for (auto it = fs::directory_iterator(tmp, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) continue;
    util::UniqueFd guard(fd);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) continue;  // a writer is still using it
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (::unlink(it->path().c_str()) == 0) {
      rep.temp_files_removed++;
      rep.temp_bytes_removed += static_cast<uint64_t>(st.st_size);
    }
  }

  ec.clear();
  fs::path cache = m_path / ".envsnap" / "cache";
  for (auto kind = fs::directory_iterator(cache, ec); !ec && kind != fs::directory_iterator(); kind.increment(ec)) {
    if (!kind->is_directory()) continue;
    std::error_code ec2;
    std::vector<fs::path> doomed;
    for (auto it = fs::directory_iterator(kind->path(), ec2); !ec2 && it != fs::directory_iterator(); it.increment(ec2)) {
      std::string name = it->path().filename().string();
      bool stale_temp = name.rfind("tmp-", 0) == 0;
      if (stale_temp || (is_hex64(name) && !marked.blobs.count(name) && !marked.diff_ids.count(name)))
        doomed.push_back(it->path());
    }
    for (auto& p : doomed) {
      // A run holds a shared flock on each unpacked layer it uses, an unpack on its
      // temporary directory: those are busy, not garbage.
      util::UniqueFd busy(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
      if (busy && ::flock(busy.get(), LOCK_EX | LOCK_NB) != 0) continue;
      uint64_t bytes = tree_bytes(p);
      std::error_code ec3;
      // Unpacked trees may hold read-only directories: make them writable before removing.
      for (auto it = fs::recursive_directory_iterator(p, ec3); !ec3 && it != fs::recursive_directory_iterator();
           it.increment(ec3))
        if (it->is_directory(ec3) && !it->is_symlink(ec3)) ::chmod(it->path().c_str(), 0700);
      ::chmod(p.c_str(), 0700);
      ec3.clear();
      fs::remove_all(p, ec3);
      if (ec3) return util::Error{fmt::format("cannot remove {}: {}", p.string(), ec3.message())};
      rep.cache_bytes_removed += bytes;
    }
  }

  // Capture's records go once the blobs they name are gone: .envsnap/layers/<key>.json
  // (the blob a layer was packed into) and .envsnap/captures/<root>.json (the blobs of
  // a root's last capture). No writer is running (gc.lock is exclusive), so temporary
  // record files are leftovers.
  for (const char* records : {"layers", "captures"}) {
    ec.clear();
    std::vector<fs::path> doomed;
    for (auto it = fs::directory_iterator(m_path / ".envsnap" / records, ec); !ec && it != fs::directory_iterator();
         it.increment(ec)) {
      std::error_code ec2;
      if (!it->is_regular_file(ec2)) continue;
      std::string name = it->path().filename().string();
      if (name.find(".json.tmp") != std::string::npos) {
        doomed.push_back(it->path());
        continue;
      }
      if (!name.ends_with(".json")) continue;
      auto text = read_whole(it->path());
      auto j = nlohmann::json::parse(text ? *text : std::string(), nullptr, false);
      std::vector<std::string> digests;
      if (j.is_object() && j.contains("blob") && j["blob"].is_object())
        digests.push_back(j["blob"].value("digest", ""));
      if (j.is_object() && j.contains("blobs") && j["blobs"].is_array())
        for (const auto& b : j["blobs"])
          if (b.is_object()) digests.push_back(b.value("digest", ""));
      bool in_use = false;
      for (const auto& digest : digests)
        if (digest.starts_with("sha256:") && marked.blobs.count(digest.substr(7))) in_use = true;
      if (!in_use) doomed.push_back(it->path());
    }
    for (const auto& p : doomed) {
      struct stat st{};
      if (::lstat(p.c_str(), &st) == 0 && ::unlink(p.c_str()) == 0)
        rep.cache_bytes_removed += static_cast<uint64_t>(st.st_size);
    }
  }
  return rep;
}

util::Result<CheckReport> Store::check() const {
  std::optional<StoreLock> lock;
  if (auto l = lock_shared()) lock = std::move(*l);
  CheckReport rep;
  std::vector<std::string> problems;
  fs::path blobs = m_path / "blobs" / "sha256";
  std::vector<fs::path> files;
  std::error_code ec;
  for (auto it = fs::directory_iterator(blobs, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    files.push_back(it->path());
  if (ec && ec != std::errc::no_such_file_or_directory)
    return util::Error{fmt::format("cannot read {}: {}", blobs.string(), ec.message())};
  std::sort(files.begin(), files.end());

  std::mutex mu;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    while (true) {
      size_t i = next++;
      if (i >= files.size()) return;
      const fs::path& p = files[i];
      std::string name = p.filename().string();
      std::string problem;
      struct stat st;
      if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        problem = fmt::format("{}: not a regular file", p.string());
      } else if (!is_hex64(name)) {
        problem = fmt::format("{}: not named by a sha256 digest (64 lowercase hex digits)", p.string());
      } else {
        int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          problem = fmt::format("{}: cannot read: {}", p.string(), errno_text(errno));
        } else {
          util::UniqueFd guard(fd);
          auto h = util::sha256_file(fd, p.string());
          if (!h)
            problem = fmt::format("{}: cannot read: {}", p.string(), h.message());
          else if (*h != name)
            problem = fmt::format("{}: corrupt: content hashes to sha256:{}", p.string(), *h);
        }
      }
      std::lock_guard g(mu);
      rep.blobs_checked++;
      if (!problem.empty()) problems.push_back(problem);
    }
  };
  unsigned n = std::max(1u, std::min(std::thread::hardware_concurrency(), 8u));
  n = static_cast<unsigned>(std::min<size_t>(n, std::max<size_t>(files.size(), 1)));
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < n; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();

  auto entries = index_entries(m_path);
  if (!entries) {
    problems.push_back(entries.message());
  } else {
    std::set<std::string> seen;
    std::function<void(const oci::Descriptor&, const std::string&, int)> visit =
        [&](const oci::Descriptor& d, const std::string& what, int depth) {
          fs::path p = blob_path(d.digest);
          if (!seen.insert(d.digest.hex()).second) return;
          struct stat st;
          if (::stat(p.c_str(), &st) != 0) {
            problems.push_back(fmt::format("{}: missing ({})", p.string(), what));
            return;
          }
          if (st.st_size != d.size) {
            problems.push_back(fmt::format("{}: {} bytes, {} says {}", p.string(), st.st_size, what, d.size));
            return;
          }
          std::string mt = d.media_type;
          if (!is_manifest_type(mt) && !is_index_type(mt)) return;
          if (depth > 8) return;
          auto bytes = read_blob(d.digest);
          if (!bytes) return;  // reported by the re-hash above
          auto j = nlohmann::json::parse(*bytes, nullptr, false);
          if (j.is_discarded() || !j.is_object()) {
            problems.push_back(fmt::format("{}: not a JSON manifest ({})", p.string(), what));
            return;
          }
          mt = media_type_of(j, mt);
          auto sub = [&](const nlohmann::json& x, const std::string& role) {
            auto sd = oci::Descriptor::from_json(x, p.string());
            if (!sd) {
              problems.push_back(sd.message());
              return;
            }
            visit(*sd, fmt::format("{} of {}", role, d.digest.str()), depth + 1);
          };
          if (is_index_type(mt) && j.contains("manifests") && j["manifests"].is_array())
            for (auto& x : j["manifests"]) sub(x, "manifest");
          if (is_manifest_type(mt)) {
            if (j.contains("config")) sub(j["config"], "config");
            if (j.contains("layers") && j["layers"].is_array())
              for (auto& x : j["layers"]) sub(x, "layer");
          }
        };
    for (auto& e : *entries)
      visit(e.desc, e.ref_name.empty() ? "index.json" : "index.json entry " + e.ref_name, 0);
  }
  std::sort(problems.begin(), problems.end());
  rep.problems = std::move(problems);
  return rep;
}

}  // namespace envsnap::store
