#pragma once
// Checks before a run: can this snapshot work on this host's driver and GPUs? Each
// rule looks at the snapshot's lock and at what was found on the host and may add a
// finding; `run` refuses on an error unless --force. The rules are a list so the
// compatibility knowledge of later issues (doctor) can add to it.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace envsnap::run {

struct HostGpus {
  bool driver_found = false;
  std::string driver_version;  // e.g. 535.104.05; empty when unknown
  size_t gpu_count = 0;
};

struct Finding {
  bool error = false;  // false: a warning
  std::string message; // what is wrong and what to do
};

struct CheckInput {
  const nlohmann::json& lock;  // the snapshot's lock (may be empty: an image not made by envsnap)
  const HostGpus& host;
  bool gpus_requested = false;  // --gpus other than none
  bool gpus_refused = false;    // --gpus none given explicitly
};

// Every finding of every rule, in rule order.
std::vector<Finding> check_host(const CheckInput& input);

// The oldest driver that runs CUDA MAJOR.x through minor-version compatibility
// (13: 580, 12: 525.60.13, 11: 450.80.02); empty for an unknown major.
std::string minimum_driver_for_cuda(int major);

// Compares dotted version numbers numerically ("535.104.05" < "580"); -1, 0 or 1.
int compare_versions(const std::string& a, const std::string& b);

// The CUDA versions the snapshot needs a driver for (torch builds, toolkits), "M.m".
std::vector<std::string> required_cuda(const nlohmann::json& lock);

}  // namespace envsnap::run
