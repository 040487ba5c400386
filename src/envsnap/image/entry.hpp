#pragma once
// One file-system entry of a planned layer: what the layer writer turns into a tar
// entry. Paths are root-relative without a leading '/' ("usr/bin/python3");
// directories are entries too.

#include <sys/stat.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace envsnap::image {

struct FileEntry {
  std::string path;                 // "usr/lib/x.so"; raw bytes (may be non-UTF-8)
  struct stat st {};                // lstat of the entry in the root
  std::string link_target;          // symlinks
  std::string hardlink_to;          // set when an earlier entry of the same layer is the same inode
  std::optional<std::string> content;  // sanitised replacement content (e.g. /etc/shadow); size from it
};

}  // namespace envsnap::image
