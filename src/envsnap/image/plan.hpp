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

struct PlanOptions {
  std::vector<std::string> includes;   // --include GLOB (in-root, e.g. "/var/log/train/**")
  std::vector<std::string> excludes;   // --exclude GLOB
  std::vector<std::string> data_paths; // in-root paths of --data/--weights (left out)
  std::string project_path;            // in-root path of --project, or empty
  std::string store_path;              // in-root path of the envsnap store when inside the root, or empty
  uint64_t size_threshold = 64ull << 20;  // a Python distribution at least this big gets its own layer
};

struct PlannedLayer {
  std::string name;  // "base-os", "gpu", "python-torch", "python", "project", "rest"
  std::vector<FileEntry> entries;  // sorted by path, parents before children
  uint64_t bytes = 0;              // sum of regular file sizes
};

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
util::Result<Plan> plan_layers(const util::RootFs& root, const nlohmann::json& lock, const PlanOptions& options,
                               probe::Warnings& warnings);

}  // namespace envsnap::image
