#pragma once
// Differences between two locks, ranked by how likely each is to change training
// results: 1 the GPU stack (driver, CUDA, cuDNN, NCCL, the torch build), 2 numeric
// libraries and numerics-relevant variables, 3 other Python packages, 4 system
// packages, 5 project code, 6 data.

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace envsnap::lock {

struct Change {
  int rank = 0;
  std::string category;  // gpu, numeric, python, system, project, data
  std::string section;   // nvidia, cuda, torch, python, dpkg, apk, system, env, project, data
  std::string name;
  std::string where;     // environment path, toolkit path, data path; may be empty
  std::string change;    // added, removed, changed
  std::optional<std::string> old_value, new_value;
};

// Compares the "lock" objects of two documents; sorted by rank, section, name, where.
std::vector<Change> diff_locks(const nlohmann::json& a, const nlohmann::json& b);
nlohmann::json to_json(const std::vector<Change>& changes);
// One line per change: "  [2 numeric] python numpy (/usr/lib/...): 1.24.2 -> 1.25.0".
std::string format_changes(const std::vector<Change>& changes);
// The rank of a Python distribution by its name (torch builds 1, numerics 2, else 3).
int python_distribution_rank(std::string_view name);

}  // namespace envsnap::lock
