#include "envsnap/image/unpack.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <isa-l/igzip_lib.h>
#include <linux/openat2.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "envsnap/util/fd.hpp"
#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::image {
namespace {

namespace fs = std::filesystem;
using util::Error;
using util::Result;
using util::UniqueFd;

constexpr size_t kBufSize = 1 << 20;
constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaque = ".wh..wh..opq";

std::string errno_text(int err) { return std::strerror(err); }

int sys_openat2(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.resolve = resolve;
  for (int attempt = 0;; ++attempt) {
    long fd = ::syscall(SYS_openat2, dirfd, path.empty() ? "." : path.c_str(), &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    // EAGAIN: a concurrent rename raced the in-root resolution; retrying is what the kernel asks.
    if ((errno == EAGAIN || errno == EINTR) && attempt < 16) continue;
    return -1;
  }
}

// Opens PATH (relative, may be "") inside ROOT, every symlink resolved as if ROOT were '/'.
int open_in_root(int root, const std::string& path, uint64_t flags) {
  return sys_openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

Result<void> remove_tree_at(int dirfd, const char* name);

Result<void> remove_children(int fd, const std::string& where) {
  int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return Error{fmt::format("cannot read directory {}: {}", where, errno_text(errno))};
  DIR* dir = ::fdopendir(dup_fd);
  if (!dir) {
    ::close(dup_fd);
    return Error{fmt::format("cannot read directory {}: {}", where, errno_text(errno))};
  }
  std::vector<std::string> names;
  while (auto* d = ::readdir(dir)) {
    std::string_view n = d->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  ::closedir(dir);
  for (auto& n : names)
    if (auto r = remove_tree_at(fd, n.c_str()); !r) return r;
  return {};
}

Result<void> remove_tree_at(int dirfd, const char* name) {
  struct stat st {};
  if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return Error{fmt::format("cannot remove {}: {}", util::printable(name), errno_text(errno))};
  }
  if (S_ISDIR(st.st_mode)) {
    if ((st.st_mode & 0700) != 0700) ::fchmodat(dirfd, name, (st.st_mode & 07777) | 0700, 0);
    UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return Error{fmt::format("cannot remove {}: {}", util::printable(name), errno_text(errno))};
    if (auto r = remove_children(fd.get(), name); !r) return r;
    if (::unlinkat(dirfd, name, AT_REMOVEDIR) != 0)
      return Error{fmt::format("cannot remove {}: {}", util::printable(name), errno_text(errno))};
    return {};
  }
  if (::unlinkat(dirfd, name, 0) != 0 && errno != ENOENT)
    return Error{fmt::format("cannot remove {}: {}", util::printable(name), errno_text(errno))};
  return {};
}

// Decompresses the blob read from an fd (gzip, zstd or plain, told by its magic
// bytes), hashing the bytes read and the uncompressed tar it hands to libarchive.
class Decoder {
public:
  Decoder(int fd, std::function<void(uint64_t)> progress) : m_fd(fd), m_progress(std::move(progress)) {
    m_in.resize(kBufSize);
    m_out.resize(kBufSize);
  }
  ~Decoder() {
    if (m_zstd) ZSTD_freeDStream(m_zstd);
  }

  // The next chunk of the uncompressed tar: its size, 0 at the end, -1 on failure (see error()).
  ssize_t next(const void** out) {
    if (m_failed) return -1;
    if (m_done) return 0;
    if (!m_started && !start()) return -1;
    for (;;) {
      if (m_in_pos == m_in_len && !m_eof && !fill()) return -1;
      size_t avail = m_in_len - m_in_pos;
      if (m_kind == Kind::plain) {
        if (avail == 0) {
          m_done = true;
          return 0;
        }
        *out = m_in.data() + m_in_pos;
        m_in_pos = m_in_len;
        return emit(*out, avail);
      }
      size_t consumed = 0, produced = 0;
      if (m_kind == Kind::gzip) {
        if (m_member_done) {
          if (avail == 0) {
            m_done = true;
            return 0;
          }
          isal_inflate_reset(&m_gz);
          m_gz.crc_flag = ISAL_GZIP;
          m_member_done = false;
        }
        m_gz.next_in = m_in.data() + m_in_pos;
        m_gz.avail_in = static_cast<uint32_t>(avail);
        m_gz.next_out = m_out.data();
        m_gz.avail_out = static_cast<uint32_t>(m_out.size());
        int r = isal_inflate(&m_gz);
        consumed = avail - m_gz.avail_in;
        produced = m_out.size() - m_gz.avail_out;
        m_in_pos += consumed;
        if (r < 0) return fail_corrupt(fmt::format("the gzip stream is corrupt (ISA-L error {})", r));
        if (m_gz.block_state == ISAL_BLOCK_FINISH) m_member_done = true;
        if (produced == 0 && consumed == 0 && !m_member_done) {
          if (m_eof) return fail_corrupt("the gzip stream is truncated");
          if (!fill()) return -1;
          continue;
        }
      } else {
        ZSTD_inBuffer in{m_in.data() + m_in_pos, avail, 0};
        ZSTD_outBuffer outb{m_out.data(), m_out.size(), 0};
        size_t r = ZSTD_decompressStream(m_zstd, &outb, &in);
        if (ZSTD_isError(r)) return fail_corrupt(fmt::format("the zstd stream is corrupt: {}", ZSTD_getErrorName(r)));
        consumed = in.pos;
        produced = outb.pos;
        m_in_pos += consumed;
        // 0 once a frame is decoded and flushed; a call without progress says nothing new.
        if (produced > 0 || consumed > 0) m_zstd_hint = r;
        if (produced == 0 && consumed == 0) {
          if (m_eof) {
            if (m_zstd_hint != 0) return fail_corrupt("the zstd stream is truncated");
            m_done = true;
            return 0;
          }
          if (!fill()) return -1;
          continue;
        }
      }
      if (produced > 0) {
        *out = m_out.data();
        return emit(m_out.data(), produced);
      }
    }
  }

  bool failed() const { return m_failed; }
  bool corrupt() const { return m_corrupt; }
  const std::string& error() const { return m_error; }
  std::string tar_hex() { return m_tar_hash.hex(); }
  std::string blob_hex() { return m_blob_hash.hex(); }
  uint64_t blob_bytes() const { return m_blob_bytes; }
  uint64_t tar_bytes() const { return m_tar_bytes; }

private:
  enum class Kind { plain, gzip, zstd };

  bool start() {
    m_started = true;
    while (m_in_len < 4 && !m_eof)
      if (!fill()) return false;
    const unsigned char* b = m_in.data();
    if (m_in_len >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
      m_kind = Kind::gzip;
      isal_inflate_init(&m_gz);
      m_gz.crc_flag = ISAL_GZIP;
    } else if (m_in_len >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd) {
      m_kind = Kind::zstd;
      m_zstd = ZSTD_createDStream();
      ZSTD_initDStream(m_zstd);
    }
    return true;
  }

  // Appends what the fd has to the input buffer (moving unread bytes to its front).
  bool fill() {
    if (m_in_pos > 0) {
      std::memmove(m_in.data(), m_in.data() + m_in_pos, m_in_len - m_in_pos);
      m_in_len -= m_in_pos;
      m_in_pos = 0;
    }
    for (;;) {
      ssize_t n = ::read(m_fd, m_in.data() + m_in_len, m_in.size() - m_in_len);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        m_failed = true;
        m_error = fmt::format("cannot read the blob: {}", errno_text(errno));
        return false;
      }
      if (n == 0) {
        m_eof = true;
        return true;
      }
      m_blob_hash.update(m_in.data() + m_in_len, static_cast<size_t>(n));
      m_in_len += static_cast<size_t>(n);
      m_blob_bytes += static_cast<uint64_t>(n);
      if (m_progress) m_progress(m_blob_bytes);
      return true;
    }
  }

  ssize_t emit(const void* data, size_t n) {
    m_tar_hash.update(data, n);
    m_tar_bytes += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t fail_corrupt(std::string why) {
    m_failed = m_corrupt = true;
    m_error = std::move(why);
    return -1;
  }

  int m_fd;
  std::function<void(uint64_t)> m_progress;
  std::vector<unsigned char> m_in, m_out;
  size_t m_in_pos = 0, m_in_len = 0;
  bool m_eof = false, m_started = false, m_done = false, m_failed = false, m_corrupt = false;
  Kind m_kind = Kind::plain;
  inflate_state m_gz{};
  bool m_member_done = false;
  ZSTD_DStream* m_zstd = nullptr;
  size_t m_zstd_hint = 0;
  std::string m_error;
  util::Sha256 m_tar_hash, m_blob_hash;
  uint64_t m_blob_bytes = 0, m_tar_bytes = 0;
};

// A Decoder run on its own thread, a few chunks ahead of libarchive: reading,
// inflating and both hashes then take a core of their own while the entries are
// written. Same interface as Decoder; the hashes and the error are read once next()
// has returned 0 or -1 (the thread has finished by then).
class ThreadedDecoder {
public:
  ThreadedDecoder(int fd, std::function<void(uint64_t)> progress) : m_decoder(fd, std::move(progress)) {
    m_thread = std::thread([this] { produce(); });
  }
  ~ThreadedDecoder() {
    {
      std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_cv.notify_all();
    if (m_thread.joinable()) m_thread.join();
  }

  ssize_t next(const void** out) {
    std::unique_lock lock(m_mutex);
    if (m_current) {  // libarchive is done with the chunk it was given last
      m_free.push_back(std::move(*m_current));
      m_current.reset();
      m_cv.notify_all();
    }
    m_cv.wait(lock, [&] { return !m_ready.empty() || m_end; });
    if (m_ready.empty()) {
      lock.unlock();
      if (m_thread.joinable()) m_thread.join();
      if (m_end_result < 0) m_handed_failure = true;
      return m_end_result;
    }
    m_current = std::move(m_ready.front());
    m_ready.pop_front();
    *out = m_current->data();
    return static_cast<ssize_t>(m_current->size());
  }
  // Reads what libarchive left (padding after the end-of-archive blocks) so the digests cover everything.
  bool drain() {
    const void* p = nullptr;
    ssize_t n;
    while ((n = next(&p)) > 0) {
    }
    return n == 0;
  }
  // Whether libarchive was handed a decoding failure: only then is a failure the
  // decoder's, however far ahead its thread has got. Read on the consumer's thread.
  bool failed() const { return m_handed_failure; }
  bool corrupt() const { return m_handed_failure && m_thread_error.empty() && m_decoder.corrupt(); }
  const std::string& error() const { return m_thread_error.empty() ? m_decoder.error() : m_thread_error; }
  std::string tar_hex() { return m_decoder.tar_hex(); }
  std::string blob_hex() { return m_decoder.blob_hex(); }

private:
  static constexpr size_t kAhead = 8;  // chunks decoded ahead of the writer

  void produce() {
    try {
      produce_chunks();
    } catch (const std::exception& e) {  // out of memory, or a progress callback that threw
      std::lock_guard lock(m_mutex);
      m_thread_error = fmt::format("decoding stopped: {}", e.what());
      m_end = true;
      m_end_result = -1;
      m_cv.notify_all();
    }
  }

  void produce_chunks() {
    for (;;) {
      const void* p = nullptr;
      ssize_t n = m_decoder.next(&p);
      std::unique_lock lock(m_mutex);
      if (n <= 0) {
        m_end = true;
        m_end_result = n;
        m_cv.notify_all();
        return;
      }
      m_cv.wait(lock, [&] { return m_stop || m_ready.size() < kAhead; });
      if (m_stop) return;
      std::vector<unsigned char> chunk;
      if (!m_free.empty()) {
        chunk = std::move(m_free.back());
        m_free.pop_back();
      }
      lock.unlock();
      chunk.assign(static_cast<const unsigned char*>(p), static_cast<const unsigned char*>(p) + n);
      lock.lock();
      m_ready.push_back(std::move(chunk));
      m_cv.notify_all();
    }
  }

  Decoder m_decoder;
  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<std::vector<unsigned char>> m_ready;  // guarded by m_mutex
  std::vector<std::vector<unsigned char>> m_free;  // guarded by m_mutex
  std::optional<std::vector<unsigned char>> m_current;
  bool m_end = false, m_stop = false;  // guarded by m_mutex
  ssize_t m_end_result = 0;            // guarded by m_mutex
  std::string m_thread_error;          // guarded by m_mutex; read after the thread ended
  bool m_handed_failure = false;       // consumer's thread only
  std::thread m_thread;
};

la_ssize_t read_callback(struct archive* a, void* client, const void** buf) {
  auto* dec = static_cast<ThreadedDecoder*>(client);
  ssize_t n = dec->next(buf);
  if (n < 0) archive_set_error(a, EIO, "%s", dec->error().c_str());
  return n;
}

struct ArchiveDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};

std::string join(const std::vector<std::string>& comps, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (i) out += '/';
    out += comps[i];
  }
  return out;
}

// A failure and its kind, so that the caller can tell corrupt content from the rest.
struct Failure {
  FailureKind kind;
  std::string message;
};

class Unpacker {
public:
  Unpacker(int root, const UnpackOptions& options, std::string label)
      : m_root(root), m_options(options), m_label(std::move(label)),
        m_chown(options.ownership == Ownership::keep_numeric && ::geteuid() == 0) {}

  // Writes one archive entry; data is read from A.
  Result<void> entry(struct archive* a, struct archive_entry* e);
  // Applies directories' modes and mtimes once their content is written.
  Result<void> finish();
  // True when the last failure came from reading the archive rather than the file system.
  bool read_failed() const { return m_read_failed; }

private:
  Error refuse(std::string_view raw, std::string_view why) const {
    return Error{fmt::format("{}: refusing entry \"{}\": {}", m_label, util::printable(raw), why)};
  }
  Error fail(std::string_view raw, std::string_view what, int err) const {
    return Error{fmt::format("{}: entry \"{}\": {}: {}", m_label, util::printable(raw), what, errno_text(err))};
  }
  Result<std::vector<std::string>> split(std::string_view raw, std::string_view path, std::string_view what) const;
  Result<UniqueFd> open_parent(const std::vector<std::string>& comps, std::string_view raw, bool create);
  Result<void> clear_slot(int parent, const std::string& name, bool keep_dir, std::string_view raw);
  Result<void> whiteout(const std::vector<std::string>& comps, std::string_view raw);
  Result<void> opaque(int dirfd, const std::string& prefix, std::string_view raw);
  Result<void> overlay_whiteout(const std::vector<std::string>& comps, std::string_view raw);
  Result<void> write_data(struct archive* a, int fd, std::string_view raw, int64_t size);
  Result<void> set_xattrs(struct archive_entry* e, int fd, const std::string& proc_path, std::string_view raw);
  Result<void> set_owner(int parent, const std::string& name, struct archive_entry* e, std::string_view raw);

  int m_root;
  UnpackOptions m_options;
  std::string m_label;
  bool m_chown;
  bool m_read_failed = false;
  std::set<std::string> m_seen;  // paths this layer wrote (a whiteout in it hides only lower layers)
  struct DirMeta {
    std::string path;
    std::string raw;
    mode_t mode;
    timespec times[2];
  };
  std::vector<DirMeta> m_dirs;
};

Result<std::vector<std::string>> Unpacker::split(std::string_view raw, std::string_view path,
                                                 std::string_view what) const {
  if (!path.empty() && path.front() == '/') return refuse(raw, fmt::format("{} is an absolute path", what));
  std::vector<std::string> comps;
  for (auto c : util::split(path, '/')) {
    if (c.empty() || c == ".") continue;
    if (c == "..") return refuse(raw, fmt::format("{} has a \"..\" component", what));
    comps.emplace_back(c);
  }
  return comps;
}

Result<UniqueFd> Unpacker::open_parent(const std::vector<std::string>& comps, std::string_view raw, bool create) {
  size_t n = comps.empty() ? 0 : comps.size() - 1;
  UniqueFd fd(open_in_root(m_root, join(comps, n), O_PATH | O_DIRECTORY));
  if (fd) return fd;
  if (errno != ENOENT || !create) return fail(raw, "cannot open its parent directory", errno);
  UniqueFd cur(open_in_root(m_root, "", O_PATH | O_DIRECTORY));
  if (!cur) return fail(raw, "cannot open the target", errno);
  for (size_t i = 0; i < n; ++i) {
    std::string prefix = join(comps, i + 1);
    UniqueFd next(open_in_root(m_root, prefix, O_PATH | O_DIRECTORY));
    if (!next && errno == ENOENT) {
      if (::mkdirat(cur.get(), comps[i].c_str(), 0755) != 0)
        return fail(raw, fmt::format("cannot create parent directory {} (a symlink that leads nowhere inside the target?)",
                                     util::printable(prefix)),
                    errno);
      m_seen.insert(prefix);
      next.reset(open_in_root(m_root, prefix, O_PATH | O_DIRECTORY));
    }
    if (!next) return fail(raw, fmt::format("cannot open parent directory {}", util::printable(prefix)), errno);
    cur = std::move(next);
  }
  return cur;
}

// Makes room for a new entry NAME in PARENT: removes a non-directory, or a directory
// unless the new entry is a directory too (then the two merge).
Result<void> Unpacker::clear_slot(int parent, const std::string& name, bool keep_dir, std::string_view raw) {
  struct stat st {};
  if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return fail(raw, "cannot inspect the existing entry", errno);
  }
  if (S_ISDIR(st.st_mode)) {
    if (keep_dir) return {};
    if (auto r = remove_tree_at(parent, name.c_str()); !r)
      return Error{fmt::format("{}: entry \"{}\": {}", m_label, util::printable(raw), r.message())};
    return {};
  }
  if (::unlinkat(parent, name.c_str(), 0) != 0) return fail(raw, "cannot replace the existing entry", errno);
  return {};
}

Result<void> Unpacker::opaque(int dirfd, const std::string& prefix, std::string_view raw) {
  UniqueFd fd(::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return fail(raw, "cannot open the opaque directory", errno);
  DIR* dir = ::fdopendir(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!dir) return fail(raw, "cannot read the opaque directory", errno);
  std::vector<std::pair<std::string, bool>> children;
  while (auto* d = ::readdir(dir)) {
    std::string_view n = d->d_name;
    if (n == "." || n == "..") continue;
    children.emplace_back(std::string(n), d->d_type == DT_DIR);
  }
  ::closedir(dir);
  for (auto& [name, is_dir] : children) {
    std::string path = prefix.empty() ? name : prefix + "/" + name;
    if (m_seen.count(path)) {
      if (!is_dir) continue;
      UniqueFd sub(::openat(fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub) continue;
      if (auto r = opaque(sub.get(), path, raw); !r) return r;
      continue;
    }
    if (auto r = remove_tree_at(fd.get(), name.c_str()); !r)
      return Error{fmt::format("{}: entry \"{}\": {}", m_label, util::printable(raw), r.message())};
  }
  return {};
}

Result<void> Unpacker::whiteout(const std::vector<std::string>& comps, std::string_view raw) {
  const std::string& last = comps.back();
  auto parent = open_parent(comps, raw, false);
  if (!parent) return {};  // nothing below to hide
  std::string dir_path = join(comps, comps.size() - 1);
  if (last == kOpaque) return opaque(parent->get(), dir_path, raw);
  if (last.rfind(".wh..wh.", 0) == 0) return {};  // other AUFS metadata: nothing to apply
  std::string name = last.substr(kWhiteoutPrefix.size());
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    return refuse(raw, "the whiteout names no entry of its directory");
  std::string path = dir_path.empty() ? name : dir_path + "/" + name;
  if (m_seen.count(path)) return {};  // written by this very layer: a whiteout hides lower layers only
  if (auto r = remove_tree_at(parent->get(), name.c_str()); !r)
    return Error{fmt::format("{}: entry \"{}\": {}", m_label, util::printable(raw), r.message())};
  return {};
}

Result<void> Unpacker::overlay_whiteout(const std::vector<std::string>& comps, std::string_view raw) {
  const std::string& last = comps.back();
  if (last != kOpaque && last.rfind(".wh..wh.", 0) == 0) return {};  // other AUFS metadata
  auto parent = open_parent(comps, raw, true);
  if (!parent) return parent.error();
  if (last == kOpaque) {
    UniqueFd dir(::openat(parent->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir || ::fsetxattr(dir.get(), "trusted.overlay.opaque", "y", 1, 0) != 0)
      return fail(raw, "cannot mark the directory opaque (trusted.overlay.opaque needs root)", errno);
    return {};
  }
  std::string name = last.substr(kWhiteoutPrefix.size());
  if (name.empty() || name == "." || name == "..") return refuse(raw, "the whiteout names no entry of its directory");
  if (auto r = clear_slot(parent->get(), name, false, raw); !r) return r;
  if (::mknodat(parent->get(), name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0)
    return fail(raw, "cannot create the overlay whiteout (a 0/0 character device needs root)", errno);
  return {};
}

Result<void> Unpacker::write_data(struct archive* a, int fd, std::string_view raw, int64_t size) {
  const void* buf = nullptr;
  size_t len = 0;
  la_int64_t offset = 0;
  int64_t end = 0;
  for (;;) {
    int r = archive_read_data_block(a, &buf, &len, &offset);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {
      m_read_failed = true;
      return Error{fmt::format("{}: entry \"{}\": {}", m_label, util::printable(raw), archive_error_string(a))};
    }
    const char* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::pwrite(fd, p + done, len - done, offset + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(raw, "cannot write", errno);
      done += static_cast<size_t>(n);
    }
    end = std::max<int64_t>(end, offset + static_cast<int64_t>(len));
  }
  if (size > end && ::ftruncate(fd, size) != 0) return fail(raw, "cannot write", errno);
  return {};
}

Result<void> Unpacker::set_xattrs(struct archive_entry* e, int fd, const std::string& proc_path, std::string_view raw) {
  const char* name = nullptr;
  const void* value = nullptr;
  size_t size = 0;
  archive_entry_xattr_reset(e);
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
    int r = fd >= 0 ? ::fsetxattr(fd, name, value, size, 0) : ::lsetxattr(proc_path.c_str(), name, value, size, 0);
    if (r == 0) continue;
    int err = errno;
    // A rootless unpack cannot set trusted./security. attributes; a file system without
    // SELinux support has no use for its label. Everything else must be kept.
    if (!m_chown && (err == EPERM || err == EACCES || err == ENOTSUP)) continue;
    if (err == ENOTSUP && std::string_view(name) == "security.selinux") continue;
    return fail(raw, fmt::format("cannot set extended attribute {}", name), err);
  }
  return {};
}

Result<void> Unpacker::set_owner(int parent, const std::string& name, struct archive_entry* e, std::string_view raw) {
  if (!m_chown) return {};
  if (::fchownat(parent, name.c_str(), static_cast<uid_t>(archive_entry_uid(e)), static_cast<gid_t>(archive_entry_gid(e)),
                 AT_SYMLINK_NOFOLLOW) != 0)
    return fail(raw, "cannot set the owner", errno);
  return {};
}

void entry_times(struct archive_entry* e, timespec times[2]) {
  if (archive_entry_mtime_is_set(e)) {
    times[1].tv_sec = archive_entry_mtime(e);
    times[1].tv_nsec = archive_entry_mtime_nsec(e);
  } else {
    times[1].tv_sec = 0;
    times[1].tv_nsec = UTIME_OMIT;
  }
  if (archive_entry_atime_is_set(e)) {
    times[0].tv_sec = archive_entry_atime(e);
    times[0].tv_nsec = archive_entry_atime_nsec(e);
  } else {
    times[0] = times[1];
  }
}

Result<void> Unpacker::entry(struct archive* a, struct archive_entry* e) {
  const char* raw_c = archive_entry_pathname(e);
  if (!raw_c) raw_c = archive_entry_pathname_utf8(e);
  if (!raw_c) return Error{fmt::format("{}: an entry has no readable path", m_label)};
  std::string raw = raw_c;
  auto comps_r = split(raw, raw, "the path");
  if (!comps_r) return comps_r.error();
  auto comps = std::move(comps_r.value());
  const char* hardlink = archive_entry_hardlink(e);
  mode_t type = archive_entry_filetype(e);

  if (!comps.empty() && m_options.whiteouts == Whiteouts::apply && comps.back().rfind(kWhiteoutPrefix, 0) == 0)
    return whiteout(comps, raw);
  if (!comps.empty() && m_options.whiteouts == Whiteouts::overlay && comps.back().rfind(kWhiteoutPrefix, 0) == 0)
    return overlay_whiteout(comps, raw);

  if (!hardlink && (type == AE_IFCHR || type == AE_IFBLK)) return refuse(raw, "device nodes are not unpacked");
  if (!hardlink && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK && type != AE_IFIFO)
    return refuse(raw, fmt::format("unsupported entry type {:o}", static_cast<unsigned>(type)));

  timespec times[2];
  entry_times(e, times);
  mode_t perm = archive_entry_perm(e) & 07777;

  if (comps.empty()) {
    if (hardlink || type != AE_IFDIR) return refuse(raw, "the target's root can only be a directory");
    UniqueFd fd(open_in_root(m_root, "", O_RDONLY | O_DIRECTORY));
    if (!fd) return fail(raw, "cannot open the target", errno);
    if (m_chown && ::fchown(fd.get(), static_cast<uid_t>(archive_entry_uid(e)), static_cast<gid_t>(archive_entry_gid(e))) != 0)
      return fail(raw, "cannot set the owner", errno);
    if (auto r = set_xattrs(e, fd.get(), "", raw); !r) return r;
    m_dirs.push_back({"", raw, perm, {times[0], times[1]}});
    return {};
  }

  std::string path = join(comps, comps.size());
  const std::string& name = comps.back();
  auto parent_r = open_parent(comps, raw, true);
  if (!parent_r) return parent_r.error();
  int parent = parent_r->get();
  std::string proc_path = fmt::format("/proc/self/fd/{}/{}", parent, name);

  if (hardlink) {
    auto src_r = split(raw, hardlink, fmt::format("the hard link target \"{}\"", util::printable(hardlink)));
    if (!src_r) return src_r.error();
    auto& src = src_r.value();
    if (src.empty()) return refuse(raw, "the hard link has no target");
    if (src == comps) return {};
    auto src_parent = open_parent(src, raw, false);
    if (!src_parent) return src_parent.error();
    struct stat st {};
    if (::fstatat(src_parent->get(), src.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      return fail(raw, fmt::format("hard link target \"{}\"", util::printable(hardlink)), errno);
    if (S_ISDIR(st.st_mode)) return refuse(raw, "a hard link to a directory");
    if (auto r = clear_slot(parent, name, false, raw); !r) return r;
    if (::linkat(src_parent->get(), src.back().c_str(), parent, name.c_str(), 0) != 0)
      return fail(raw, fmt::format("cannot link to \"{}\"", util::printable(hardlink)), errno);
    m_seen.insert(path);
    return {};
  }

  if (auto r = clear_slot(parent, name, type == AE_IFDIR, raw); !r) return r;
  m_seen.insert(path);

  switch (type) {
    case AE_IFREG: {
      UniqueFd fd(::openat(parent, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!fd) return fail(raw, "cannot create", errno);
      if (auto r = write_data(a, fd.get(), raw, archive_entry_size(e)); !r) return r;
      if (m_chown && ::fchown(fd.get(), static_cast<uid_t>(archive_entry_uid(e)), static_cast<gid_t>(archive_entry_gid(e))) != 0)
        return fail(raw, "cannot set the owner", errno);
      if (::fchmod(fd.get(), perm) != 0) return fail(raw, "cannot set the mode", errno);
      if (auto r = set_xattrs(e, fd.get(), "", raw); !r) return r;
      if (::futimens(fd.get(), times) != 0) return fail(raw, "cannot set the mtime", errno);
      return {};
    }
    case AE_IFDIR: {
      if (::mkdirat(parent, name.c_str(), 0700) != 0 && errno != EEXIST) return fail(raw, "cannot create", errno);
      UniqueFd fd(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) return fail(raw, "cannot open the directory", errno);
      if (m_chown && ::fchown(fd.get(), static_cast<uid_t>(archive_entry_uid(e)), static_cast<gid_t>(archive_entry_gid(e))) != 0)
        return fail(raw, "cannot set the owner", errno);
      if (auto r = set_xattrs(e, fd.get(), "", raw); !r) return r;
      m_dirs.push_back({path, raw, perm, {times[0], times[1]}});
      return {};
    }
    case AE_IFLNK: {
      const char* target = archive_entry_symlink(e);
      if (!target) target = archive_entry_symlink_utf8(e);
      if (!target) return refuse(raw, "the symlink has no target");
      if (::symlinkat(target, parent, name.c_str()) != 0) return fail(raw, "cannot create the symlink", errno);
      if (auto r = set_owner(parent, name, e, raw); !r) return r;
      if (auto r = set_xattrs(e, -1, proc_path, raw); !r) return r;
      if (::utimensat(parent, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) return fail(raw, "cannot set the mtime", errno);
      return {};
    }
    case AE_IFIFO: {
      if (::mknodat(parent, name.c_str(), S_IFIFO | 0600, 0) != 0) return fail(raw, "cannot create the FIFO", errno);
      if (auto r = set_owner(parent, name, e, raw); !r) return r;
      if (::fchmodat(parent, name.c_str(), perm, 0) != 0) return fail(raw, "cannot set the mode", errno);
      if (auto r = set_xattrs(e, -1, proc_path, raw); !r) return r;
      if (::utimensat(parent, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) return fail(raw, "cannot set the mtime", errno);
      return {};
    }
    default:
      return refuse(raw, "unsupported entry type");
  }
}

Result<void> Unpacker::finish() {
  // Children before parents, so that a read-only parent does not stop its child's update.
  for (auto it = m_dirs.rbegin(); it != m_dirs.rend(); ++it) {
    UniqueFd fd(open_in_root(m_root, it->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    if (!fd) continue;  // removed or replaced by a later entry of this layer
    if (::fchmod(fd.get(), it->mode) != 0) return fail(it->raw, "cannot set the mode", errno);
    if (::futimens(fd.get(), it->times) != 0) return fail(it->raw, "cannot set the mtime", errno);
  }
  return {};
}

}  // namespace

Result<void> remove_tree(const fs::path& path) {
  fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) {
    if (errno == ENOENT) return {};
    return Error{fmt::format("cannot remove {}: {}", path.string(), errno_text(errno))};
  }
  auto r = remove_tree_at(dir.get(), path.filename().c_str());
  if (!r) return Error{fmt::format("cannot remove {}: {}", path.string(), r.message())};
  return {};
}

Result<void> unpack_layer_checked(int fd, const fs::path& target, const UnpackOptions& options,
                                  const LayerChecks& checks, FailureKind* kind) {
  std::string label = checks.label;
  if (label.empty()) label = checks.diff_id ? "layer " + checks.diff_id->str() : "layer";
  auto failure = [&](FailureKind k, std::string message) -> Result<void> {
    if (kind) *kind = k;
    return Error{std::move(message)};
  };

  UniqueFd root(::open(target.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) return failure(FailureKind::other, fmt::format("cannot open {}: {}", target.string(), errno_text(errno)));

  ThreadedDecoder decoder(fd, checks.progress);
  std::unique_ptr<struct archive, ArchiveDeleter> a(archive_read_new());
  archive_read_support_format_tar(a.get());
  archive_read_support_format_empty(a.get());
  if (archive_read_open(a.get(), &decoder, nullptr, read_callback, nullptr) != ARCHIVE_OK) {
    if (decoder.failed())
      return failure(decoder.corrupt() ? FailureKind::corrupt : FailureKind::other,
                     fmt::format("{}: {}", label, decoder.error()));
    return failure(FailureKind::corrupt, fmt::format("{}: not a tar archive: {}", label, archive_error_string(a.get())));
  }

  Unpacker unpacker(root.get(), options, label);
  for (;;) {
    struct archive_entry* e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {
      if (decoder.failed())
        return failure(decoder.corrupt() ? FailureKind::corrupt : FailureKind::other,
                       fmt::format("{}: {}", label, decoder.error()));
      return failure(FailureKind::corrupt,
                     fmt::format("{}: the tar stream is corrupt or truncated: {}", label, archive_error_string(a.get())));
    }
    if (auto res = unpacker.entry(a.get(), e); !res) {
      if (decoder.failed())
        return failure(decoder.corrupt() ? FailureKind::corrupt : FailureKind::other,
                       fmt::format("{}: {}", label, decoder.error()));
      return failure(unpacker.read_failed() ? FailureKind::corrupt : FailureKind::other, res.message());
    }
  }
  if (!decoder.drain())
    return failure(decoder.corrupt() ? FailureKind::corrupt : FailureKind::other, fmt::format("{}: {}", label, decoder.error()));
  if (checks.blob_digest) {
    std::string got = decoder.blob_hex();
    if (got != checks.blob_digest->hex())
      return failure(FailureKind::corrupt, fmt::format("{}: the blob's content hashes to sha256:{}, not {}", label, got,
                                                       checks.blob_digest->str()));
  }
  if (checks.diff_id) {
    std::string got = decoder.tar_hex();
    if (got != checks.diff_id->hex())
      return failure(FailureKind::corrupt, fmt::format("{}: the uncompressed layer hashes to sha256:{}, not its diff_id {}",
                                                       label, got, checks.diff_id->str()));
  }
  if (auto r = unpacker.finish(); !r) return failure(FailureKind::other, r.message());
  return {};
}

Result<void> unpack_layer(int fd, const fs::path& target, const UnpackOptions& options,
                          const oci::Digest* expected_diff_id) {
  LayerChecks checks;
  checks.diff_id = expected_diff_id;
  return unpack_layer_checked(fd, target, options, checks);
}

}  // namespace envsnap::image
