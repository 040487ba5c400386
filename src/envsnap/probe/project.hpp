#pragma once
// The training code's state: git commit, branch, remote (credentials stripped),
// a dirty flag and a digest of the uncommitted change. Runs the host's git with
// options that keep repository configuration from running commands.

#include <string>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

struct ProjectInfo {
  std::string path;  // as recorded (in-root when the directory is inside the root)
  std::string commit, branch, remote, diff_digest;
  bool is_git = false;
  bool dirty = false;
};

// DIR is a host path; recorded_path is what the lock shows. Problems are warnings.
ProjectInfo probe_project(const std::string& dir, const std::string& recorded_path, Warnings& warnings);
nlohmann::json to_json(const ProjectInfo& project);

}  // namespace envsnap::probe
