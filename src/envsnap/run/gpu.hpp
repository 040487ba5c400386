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
  std::vector<std::string> docker_args;    // --gpus=... for docker
  std::vector<std::string> podman_args;    // --device=nvidia.com/gpu=... for podman (CDI)
};

// The createContainer hook that rebuilds the container's ld.so.cache with the driver's
// folders added (ldconfig -X -r ROOTFS DIR...): the host's ldconfig, else the image's
// (Debian's is static). Runs after the bind mounts, before the command.
HookSpec ldconfig_hook(const std::string& rootfs, const std::vector<std::string>& dirs);

// FLAG: auto (all GPUs when a driver is found, else none), none, all, N (the first N),
// or device=I,J / device=UUID,... ; DRIVER_ROOT: where the driver is looked for.
util::Result<GpuPlan> plan_gpus(const std::string& flag, const std::string& driver_root);

}  // namespace envsnap::run
