#include "envsnap/util/rootfs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::util {

static std::string relative(std::string_view rel) {
  while (!rel.empty() && rel.front() == '/') rel.remove_prefix(1);
  return rel.empty() ? std::string(".") : std::string(rel);
}

std::string join(std::string_view a, std::string_view b) {
  while (!a.empty() && a.back() == '/') a.remove_suffix(1);
  while (!b.empty() && b.front() == '/') b.remove_prefix(1);
  if (a.empty()) return "/" + std::string(b);
  return std::string(a) + "/" + std::string(b);
}

Result<RootFs> RootFs::open(const std::filesystem::path& root) {
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return Error{fmt::format("cannot open root directory {}: {}", root.string(), std::strerror(errno))};
  RootFs fs;
  fs.m_path = root;
  fs.m_dirfd = std::make_shared<UniqueFd>(fd);
  return fs;
}

std::string RootFs::host_path(std::string_view rel) const {
  auto r = relative(rel);
  if (r == ".") return m_path.string();
  return join(m_path.string(), r);
}

Result<UniqueFd> RootFs::open_at(std::string_view rel, int flags) const {
  struct open_how how {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  auto r = relative(rel);
  long fd;
  do {
    fd = ::syscall(SYS_openat2, m_dirfd->get(), r.c_str(), &how, sizeof how);
  } while (fd < 0 && errno == EAGAIN);
  if (fd < 0) return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  return UniqueFd(static_cast<int>(fd));
}

Result<std::string> RootFs::read_file(std::string_view rel, size_t max_bytes) const {
  auto fd = open_at(rel, O_RDONLY | O_NONBLOCK);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0)
    return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  if (!S_ISREG(st.st_mode)) return Error{fmt::format("{}: not a regular file", printable(host_path(rel)))};
  if (static_cast<size_t>(st.st_size) > max_bytes)
    return Error{fmt::format("{}: larger than {} bytes", printable(host_path(rel)), max_bytes)};
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (true) {
    if (got == out.size()) out.resize(out.size() + 4096);
    auto n = ::read(fd->get(), out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got > max_bytes) return Error{fmt::format("{}: larger than {} bytes", printable(host_path(rel)), max_bytes)};
  }
  out.resize(got);
  return out;
}

Result<std::vector<DirEntry>> RootFs::list_dir(std::string_view rel) const {
  auto fd = open_at(rel, O_RDONLY | O_DIRECTORY);
  if (!fd) return fd.error();
  DIR* dir = ::fdopendir(fd->get());
  if (!dir) return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  fd->release();
  std::unique_ptr<DIR, int (*)(DIR*)> guard(dir, ::closedir);
  std::vector<DirEntry> out;
  errno = 0;
  while (auto* e = ::readdir(dir)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    FileType t = FileType::other;
    unsigned char dt = e->d_type;
    if (dt == DT_UNKNOWN) {
      struct stat st;
      if (::fstatat(::dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        dt = S_ISREG(st.st_mode) ? DT_REG : S_ISDIR(st.st_mode) ? DT_DIR : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
      }
    }
    if (dt == DT_REG) t = FileType::regular;
    else if (dt == DT_DIR) t = FileType::directory;
    else if (dt == DT_LNK) t = FileType::symlink;
    out.push_back({std::string(name), t});
  }
  if (errno != 0) return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return out;
}

Result<struct stat> RootFs::stat(std::string_view rel) const {
  auto fd = open_at(rel, O_PATH);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0)
    return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  return st;
}

Result<struct stat> RootFs::lstat(std::string_view rel) const {
  auto fd = open_at(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0)
    return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  return st;
}

Result<std::string> RootFs::read_link(std::string_view rel) const {
  auto fd = open_at(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  std::string buf(4096, '\0');
  auto n = ::readlinkat(fd->get(), "", buf.data(), buf.size());
  if (n < 0) return Error{fmt::format("{}: {}", printable(host_path(rel)), std::strerror(errno))};
  buf.resize(static_cast<size_t>(n));
  return buf;
}

bool RootFs::is_dir(std::string_view rel) const {
  auto st = stat(rel);
  return st && S_ISDIR(st->st_mode);
}

bool RootFs::is_file(std::string_view rel) const {
  auto st = stat(rel);
  return st && S_ISREG(st->st_mode);
}

}  // namespace envsnap::util
