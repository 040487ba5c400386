#pragma once
// The NVIDIA driver and GPUs: what a restore must provide. On the live system NVML
// is asked (dlopen'ed in a forked child, never linked), then /proc, then the driver
// library file names; for another root only the file names are read.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

struct Gpu {
  int index = 0;
  std::string name, uuid, compute_capability;
  uint64_t memory_bytes = 0;
  std::string mig_mode, pci_bus_id;
};

struct NvidiaInfo {
  std::string source = "none";  // nvml, proc, soname or none
  std::string driver;
  std::string cuda_driver;
  std::vector<Gpu> gpus;
};

struct NvmlOptions {
  std::string library;  // empty: $ENVSNAP_NVML_LIBRARY, else "libnvidia-ml.so.1"
  std::chrono::milliseconds timeout{10000};
};

// Live system: NVML in a child with options.timeout, then /proc/driver/nvidia/version,
// then driver sonames in the root; another root: sonames only. Never throws: each
// failure is a warning naming the library or path, and the next fallback is used.
// Forks: call before any threads start.
NvidiaInfo probe_nvidia(const Context& ctx, const NvmlOptions& options);

// The "nvidia" section of the lock (docs/lock-format.md); empty facts are absent keys.
nlohmann::json to_json(const NvidiaInfo& info);

// The driver version in the text of /proc/driver/nvidia/version; empty when none.
std::string parse_proc_driver_version(std::string_view proc_text);

// The driver version in a library file name such as "libnvidia-ml.so.535.104.05" or
// "libcuda.so.535.104.05"; empty for other names (including "libcuda.so.1").
std::string parse_driver_soname(std::string_view file_name);

}  // namespace envsnap::probe
