#pragma once
// Read-only access to a directory tree as if it were "/": every path is resolved
// inside the root (openat2 RESOLVE_IN_ROOT), so an absolute or ".." symlink in a
// captured root never reaches the host's files. Paths are given relative to the
// root, with or without a leading '/'.

#include <sys/stat.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/util/fd.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::util {

enum class FileType { regular, directory, symlink, other };

struct DirEntry {
  std::string name;
  FileType type;
};

class RootFs {
public:
  // Opens ROOT; an error when it is missing or not a directory.
  static Result<RootFs> open(const std::filesystem::path& root);

  const std::filesystem::path& path() const { return m_path; }
  // ROOT joined with a root-relative path, for messages.
  std::string host_path(std::string_view rel) const;

  // Opens a file or directory, following symlinks inside the root.
  Result<UniqueFd> open_at(std::string_view rel, int flags) const;
  // Whole content of a regular file; refuses FIFOs, devices and files over max_bytes.
  Result<std::string> read_file(std::string_view rel, size_t max_bytes = 256u << 20) const;
  // Entries of a directory, sorted by name, without "." and "..".
  Result<std::vector<DirEntry>> list_dir(std::string_view rel) const;
  Result<struct stat> stat(std::string_view rel) const;   // follows symlinks
  Result<struct stat> lstat(std::string_view rel) const;  // does not follow the last one
  Result<std::string> read_link(std::string_view rel) const;
  bool exists(std::string_view rel) const { return stat(rel).ok(); }
  bool is_dir(std::string_view rel) const;
  bool is_file(std::string_view rel) const;

private:
  std::filesystem::path m_path;
  std::shared_ptr<UniqueFd> m_dirfd;
};

// Joins root-relative path parts with exactly one '/' between them.
std::string join(std::string_view a, std::string_view b);

}  // namespace envsnap::util
