#pragma once
// Builds a lock by running every probe over a root. Reads files only; the one
// process it forks is the NVML child (live system only), and host git for --project.

#include <chrono>
#include <string>
#include <vector>

#include "envsnap/lock/lock.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::lock {

struct CaptureOptions {
  std::string root = "/";
  std::vector<std::string> python_paths;  // --python, root-relative
  std::string project;                    // --project, host path
  std::vector<std::string> data;          // --data, host paths
  std::vector<std::string> weights;       // --weights, host paths
  std::vector<std::string> env;           // --env K=V
  std::vector<std::string> env_files;     // --env-file
  std::chrono::milliseconds nvml_timeout{10000};
};

// Captures ROOT. An error (exit 2) when ROOT, a --data path or an env file is unusable;
// problems inside the root are warnings in captured.warnings.
util::Result<LockDocument> capture_lock(const CaptureOptions& options);

// PATH as the lock records it: "/x/y" inside ROOT when PATH lies under ROOT, else
// PATH made absolute on the host.
std::string recorded_path(const std::string& root, const std::string& path);

}  // namespace envsnap::lock
