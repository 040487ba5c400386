#pragma once
// The layering plan: which files of a root go into the image, and in which layer.
// Layers follow components (who owns a file): the base OS (dpkg/apk packages), the
// CUDA/GPU user-space libraries, each Python distribution above size_threshold in
// its own layer, the remaining Python, the project code, and the rest. A hard-link
// group stays in one layer. Host- and moment-specific paths, the NVIDIA driver's
// files, data/weights and secrets are left out; some files are sanitised in place.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/image/entry.hpp"
#include "envsnap/probe/context.hpp"

namespace envsnap::image {

// Globs are in-root ('**' any depth, '*' part of one component, '?' one character) and
// match a path or any of its ancestors. --include wins over the default exclusions and
// over --exclude and .envsnapignore; a secret is only packed when an --include names its
// exact path (no wildcard), and is then packed unsanitised. .envsnapignore files (at the
// root, and in the project, relative to it) hold one glob per line, '#' comments, and
// '!glob' re-includes what an earlier line left out, as .dockerignore does.
struct PlanOptions {
  std::vector<std::string> includes;   // --include GLOB (in-root, e.g. "/var/log/train/**")
  std::vector<std::string> excludes;   // --exclude GLOB
  std::vector<std::string> data_paths; // in-root paths of --data/--weights (left out)
  std::string project_path;            // in-root path of --project, or empty (packed even below a default exclusion)
  std::string store_path;              // in-root path of the envsnap store when inside the root, or empty
  uint64_t size_threshold = 32ull << 20;  // a Python distribution at least this big gets its own layer
};

struct PlannedLayer {
  std::string name;  // "base-os", "gpu", "python-torch", "python", "project", "rest"
  std::vector<FileEntry> entries;  // sorted by path, parents before children
  uint64_t bytes = 0;              // sum of regular file sizes
};

// A left-out path: a whole file or tree, or, for /proc, /sys, /dev, /run, /tmp, /var/tmp,
// /boot and mount points, the contents of a directory that is itself packed empty.
struct Exclusion {
  std::string path;    // in-root, leading '/'
  std::string reason;  // "pseudo-filesystem", "mount point", "cache", "secret: SSH keys", "NVIDIA driver", "data", ...
};

struct Sanitised {
  std::string path;
  std::string what;    // "passwords locked", "emptied", "URL credentials removed"
};

struct Plan {
  std::vector<PlannedLayer> layers;  // in image order, never empty ones
  std::vector<Exclusion> excluded;
  std::vector<Sanitised> sanitised;
};

// LOCK is the lock of the same root ("lock" object): it tells which Python
// environments, CUDA toolkits and distributions there are.
// Ownership, first match wins: the files of a Python distribution (RECORD,
// installed-files.txt or top_level.txt, plus, for one installed by dpkg, every file of its
// package and of the packages built from the same source, e.g. libtorch for python3-torch)
// go to python-<name> when they total size_threshold or more, else to "python"; then the
// nearest claimed directory (project -> "project", local CUDA toolkit -> "gpu", site
// directory -> "python"); then dpkg/apk-listed files ("gpu" for CUDA/cuDNN/NCCL/TensorRT
// packages, else "base-os"); then "rest". Each layer also holds the parent directories of
// its entries. Directories below another file system are left out (a changed st_dev of a
// directory; files are not checked, as overlayfs may give them their own st_dev).
util::Result<Plan> plan_layers(const util::RootFs& root, const nlohmann::json& lock, const PlanOptions& options,
                               probe::Warnings& warnings);

}  // namespace envsnap::image
