#include "envsnap/image/layer.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include <fmt/format.h>

#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::image {

namespace {

constexpr size_t read_chunk = size_t{1} << 20;

// Host-specific labels and NFSv4 ACLs do not belong in an image.
bool skipped_xattr(std::string_view name) { return name == "security.selinux" || name == "system.nfs4_acl"; }

struct TarOut {
  BlockCompressor* compressor;
  util::Sha256 sha;
  uint64_t size = 0;
  std::optional<util::Error> error;
};

la_ssize_t tar_write(struct archive*, void* client, const void* buf, size_t n) {
  auto* t = static_cast<TarOut*>(client);
  t->sha.update(buf, n);
  t->size += n;
  if (auto r = t->compressor->write(buf, n); !r) {
    t->error = r.error();
    return -1;
  }
  return static_cast<la_ssize_t>(n);
}

using Xattrs = std::vector<std::pair<std::string, std::string>>;

// FD is an open file (flistxattr) or, when BY_PATH, an O_PATH descriptor read
// through /proc/self/fd (which reaches the inode itself, symlinks included).
util::Result<Xattrs> read_xattrs(int fd, bool by_path, const std::string& where) {
  std::string proc = fmt::format("/proc/self/fd/{}", fd);
  auto list = [&](char* buf, size_t n) {
    return by_path ? ::listxattr(proc.c_str(), buf, n) : ::flistxattr(fd, buf, n);
  };
  auto get = [&](const char* name, void* buf, size_t n) {
    return by_path ? ::getxattr(proc.c_str(), name, buf, n) : ::fgetxattr(fd, name, buf, n);
  };
  auto failed = [&](const char* what) {
    return util::Error{fmt::format("{}: cannot read extended attributes ({}): {}", util::printable(where), what,
                                   std::strerror(errno))};
  };
  Xattrs out;
  std::string names;
  while (true) {
    ssize_t n = list(nullptr, 0);
    if (n < 0) {
      if (errno == ENOTSUP || errno == ENODATA) return out;
      return failed("list");
    }
    if (n == 0) return out;
    names.resize(static_cast<size_t>(n));
    n = list(names.data(), names.size());
    if (n < 0 && errno == ERANGE) continue;
    if (n < 0) return failed("list");
    names.resize(static_cast<size_t>(n));
    break;
  }
  for (size_t pos = 0; pos < names.size();) {
    std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    if (name.empty() || skipped_xattr(name)) continue;
    std::string value;
    while (true) {
      ssize_t n = get(name.c_str(), nullptr, 0);
      if (n < 0 && errno == ENODATA) break;  // removed meanwhile
      if (n < 0) return failed(name.c_str());
      value.resize(static_cast<size_t>(n));
      n = get(name.c_str(), value.data(), value.size());
      if (n < 0 && errno == ERANGE) continue;
      if (n < 0 && errno == ENODATA) break;
      if (n < 0) return failed(name.c_str());
      value.resize(static_cast<size_t>(n));
      out.emplace_back(std::move(name), std::move(value));
      break;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

class LayerWriter {
public:
  LayerWriter(const util::RootFs& root, const LayerOptions& options, const Progress& progress)
      : m_root(root), m_options(options), m_progress(progress), m_buf(read_chunk) {}

  util::Result<LayerStreamResult> run(const std::vector<FileEntry>& entries, Sink& sink) {
    BlockCompressor compressor(m_options.compression, m_options.threads, sink);
    TarOut out{&compressor, {}, 0, {}};
    m_out = &out;
    std::unique_ptr<struct archive, int (*)(struct archive*)> a(archive_write_new(), archive_write_free);
    m_archive = a.get();
    if (archive_write_set_format_pax_restricted(m_archive) != ARCHIVE_OK ||
        archive_write_set_format_option(m_archive, "pax", "hdrcharset", "BINARY") != ARCHIVE_OK ||
        archive_write_add_filter_none(m_archive) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(m_archive, 0) != ARCHIVE_OK ||
        archive_write_open(m_archive, &out, nullptr, tar_write, nullptr) != ARCHIVE_OK)
      return archive_failure("cannot start the layer's tar stream");
    std::unique_ptr<struct archive_entry, void (*)(struct archive_entry*)> e(archive_entry_new(), archive_entry_free);
    for (const auto& entry : entries)
      if (auto r = add(entry, e.get()); !r) return r.error();
    if (archive_write_close(m_archive) != ARCHIVE_OK) return archive_failure("cannot finish the layer's tar stream");
    if (auto r = compressor.finish(); !r) return r.error();
    LayerStreamResult result;
    result.diff_id = oci::Digest::from_hex(out.sha.hex());
    result.tar_size = out.size;
    result.compressed_size = compressor.compressed_size();
    return result;
  }

private:
  util::Error archive_failure(std::string_view what) {
    if (m_out->error) return *m_out->error;
    const char* msg = archive_error_string(m_archive);
    return util::Error{fmt::format("{}: {}", what, msg ? msg : "libarchive error")};
  }

  util::Error changed(const FileEntry& entry) {
    return util::Error{
        fmt::format("{}: changed while being captured; capture again when it is not being written", where(entry))};
  }

  std::string where(const FileEntry& entry) const { return util::printable(m_root.host_path(entry.path)); }

  util::Error sys_error(const FileEntry& entry, std::string_view what) {
    return util::Error{fmt::format("{}: {}: {}", where(entry), what, std::strerror(errno))};
  }

  util::Result<void> add(const FileEntry& entry, struct archive_entry* e) {
    const auto& st = entry.st;
    mode_t type = st.st_mode & S_IFMT;
    bool hardlink = !entry.hardlink_to.empty();
    bool regular_data = type == S_IFREG && !hardlink && !entry.content;

    // Regular files are opened for reading (their xattrs come from that descriptor);
    // everything else through an O_PATH descriptor that never follows the last link.
    auto fd = m_root.open_at(entry.path, regular_data ? (O_RDONLY | O_NOFOLLOW | O_NONBLOCK) : (O_PATH | O_NOFOLLOW));
    if (!fd) return fd.error();
    struct stat now {};
    if (::fstat(fd->get(), &now) != 0) return sys_error(entry, "cannot stat");
    if ((now.st_mode & S_IFMT) != type) return changed(entry);
    if (regular_data && now.st_size != st.st_size) return changed(entry);
    auto xattrs = read_xattrs(fd->get(), !regular_data, m_root.host_path(entry.path));
    if (!xattrs) return xattrs.error();

    archive_entry_clear(e);
    archive_entry_copy_pathname(e, entry.path.c_str());
    archive_entry_set_mode(e, st.st_mode & (S_IFMT | 07777));
    archive_entry_set_uid(e, st.st_uid);
    archive_entry_set_gid(e, st.st_gid);
    int64_t mtime = st.st_mtim.tv_sec;
    if (m_options.source_date_epoch && mtime > *m_options.source_date_epoch) mtime = *m_options.source_date_epoch;
    archive_entry_set_mtime(e, mtime, 0);
    // libarchive writes xattrs in the reverse order of adding them: add them backwards.
    for (auto it = xattrs->rbegin(); it != xattrs->rend(); ++it)
      archive_entry_xattr_add_entry(e, it->first.c_str(), it->second.data(), it->second.size());

    switch (type) {
      case S_IFREG:
        if (hardlink) {
          archive_entry_copy_hardlink(e, entry.hardlink_to.c_str());
          archive_entry_set_size(e, 0);
        } else {
          archive_entry_set_size(e, entry.content ? static_cast<int64_t>(entry.content->size()) : st.st_size);
        }
        break;
      case S_IFDIR:
      case S_IFIFO:
        break;
      case S_IFLNK: {
        std::string target = entry.link_target;
        if (target.empty()) {
          auto t = m_root.read_link(entry.path);
          if (!t) return t.error();
          target = std::move(*t);
        }
        archive_entry_copy_symlink(e, target.c_str());
        break;
      }
      case S_IFCHR:
      case S_IFBLK:
        archive_entry_set_rdev(e, st.st_rdev);
        break;
      default:
        return util::Error{fmt::format("{}: a socket cannot be stored in a layer", where(entry))};
    }

    if (archive_write_header(m_archive, e) != ARCHIVE_OK)
      return archive_failure(fmt::format("{}: cannot write the tar header", where(entry)));
    if (type != S_IFREG || hardlink) return {};
    if (entry.content) return write_data(entry, entry.content->data(), entry.content->size());
    return copy_file(entry, fd->get(), static_cast<uint64_t>(st.st_size));
  }

  util::Result<void> write_data(const FileEntry& entry, const void* data, size_t n) {
    auto w = archive_write_data(m_archive, data, n);
    if (w < 0 || static_cast<size_t>(w) != n)
      return archive_failure(fmt::format("{}: cannot write to the tar stream", where(entry)));
    m_read += n;
    if (m_progress) m_progress(m_read);
    return {};
  }

  util::Result<void> copy_file(const FileEntry& entry, int fd, uint64_t size) {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint64_t left = size;
    while (left > 0) {
      ssize_t n = ::read(fd, m_buf.data(), static_cast<size_t>(std::min<uint64_t>(left, m_buf.size())));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return sys_error(entry, "cannot read");
      if (n == 0) return changed(entry);
      if (auto r = write_data(entry, m_buf.data(), static_cast<size_t>(n)); !r) return r;
      left -= static_cast<uint64_t>(n);
    }
    char extra;
    ssize_t n;
    do n = ::read(fd, &extra, 1);
    while (n < 0 && errno == EINTR);
    if (n < 0) return sys_error(entry, "cannot read");
    if (n > 0) return changed(entry);
    return {};
  }

  const util::RootFs& m_root;
  const LayerOptions& m_options;
  const Progress& m_progress;
  std::vector<char> m_buf;
  struct archive* m_archive = nullptr;
  TarOut* m_out = nullptr;
  uint64_t m_read = 0;
};

}  // namespace

util::Result<LayerStreamResult> write_layer_stream(const util::RootFs& root, const std::vector<FileEntry>& entries,
                                                   const LayerOptions& options, Sink& out, const Progress& progress) {
  return LayerWriter(root, options, progress).run(entries, out);
}

const char* media_type(Compression c) {
  return c == Compression::gzip ? oci::media_layer_gzip.data() : oci::media_layer_zstd.data();
}

}  // namespace envsnap::image
