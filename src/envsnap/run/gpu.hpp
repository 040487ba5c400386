#pragma once
// --gpus for a run: the host's driver found as `envsnap cdi` finds it (gpu/driver.hpp),
// the GPUs chosen, and the edits the bundle gets: device nodes, read-only bind
// mounts of the driver's files, CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES, and an
// ldconfig createContainer hook so the driver's sonames resolve in the container.

#include <string>
#include <vector>

#include "envsnap/run/bundle.hpp"
#include "envsnap/run/checks.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::run {

struct GpuPlan {
  HostGpus host;
  std::vector<std::string> selected;  // GPU names ("0", "1"...) the run gets; empty: none
  std::vector<std::string> env;
  std::vector<DeviceNodeSpec> devices;
  std::vector<BindMount> mounts;
  std::vector<std::string> ldconfig_dirs;  // container folders of the driver's libraries
  std::string ldconfig_path;               // the host's ldconfig; empty when it has none
  std::vector<std::string> docker_args;    // --gpus=... for docker
  std::vector<std::string> podman_args;    // --device=nvidia.com/gpu=... for podman (CDI)
};

// The createContainer hook that rebuilds the container's ld.so.cache with the driver's
// folders added (LDCONFIG -X -r ROOTFS DIR...). It runs after the bind mounts, before
// pivot_root and with every capability, so LDCONFIG is always the host's, never the
// image's (which would be image code running as host root).
HookSpec ldconfig_hook(const std::string& ldconfig, const std::string& rootfs, const std::vector<std::string>& dirs);

// The host's ldconfig (/sbin or /usr/sbin); empty when there is none.
std::string host_ldconfig();

// FLAG: auto (all GPUs when a driver is found, else none), none, all, N (the first N),
// or device=I,J / device=UUID,... ; DRIVER_ROOT: where the driver is looked for.
util::Result<GpuPlan> plan_gpus(const std::string& flag, const std::string& driver_root);

}  // namespace envsnap::run
