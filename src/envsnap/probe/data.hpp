#pragma once
// Digests of training data and weights: file count, bytes and a Merkle-style
// digest (docs/lock-format.md, "data"). Files are hashed in parallel.

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

struct DataInfo {
  std::string path;  // as recorded
  std::string role;  // "data" or "weights"
  uint64_t files = 0;
  uint64_t bytes = 0;
  std::string digest;  // "sha256:..."
};

// Hashes the host path PATH (a directory or a single file). Unreadable entries are
// warnings naming them and are left out of the digest. An error when PATH is missing.
util::Result<DataInfo> probe_data(const std::string& path, const std::string& recorded_path, const std::string& role,
                                  Warnings& warnings, unsigned threads = 0);
nlohmann::json to_json(const DataInfo& data);

}  // namespace envsnap::probe
