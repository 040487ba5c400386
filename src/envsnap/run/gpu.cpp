#include "envsnap/run/gpu.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include "envsnap/gpu/cdi.hpp"
#include "envsnap/gpu/driver.hpp"

namespace envsnap::run {

util::Result<GpuPlan> plan_gpus(const std::string& flag, const std::string& driver_root) {
  GpuPlan plan;
  if (flag == "none") return plan;
  gpu::DiscoverOptions options;
  options.driver_root = driver_root.empty() ? "/" : driver_root;
  // NVML (a forked child) only when the user names GPUs by UUID.
  options.uuids = flag.find("GPU-") != std::string::npos ? gpu::UuidSource::nvml : gpu::UuidSource::none;
  auto driver = gpu::discover_driver(options);
  if (!driver) {
    if (flag == "auto") return plan;  // no driver: a CPU run
    return util::Error{fmt::format("--gpus {}: {}; give --gpus none to run without GPUs", flag, driver.message())};
  }
  plan.host = {true, driver->driver_version, driver->gpus.size()};
  if (flag == "auto" && driver->gpus.empty()) return plan;
  std::string selection = flag == "auto" ? "all" : flag;
  auto chosen = gpu::select_gpus(*driver, selection);
  if (!chosen) return chosen.error();
  if (chosen->gpus.empty()) return util::Error{fmt::format("--gpus {}: this host has no GPU device nodes (/dev/nvidia0...); "
                                                           "give --gpus none to run without GPUs",
                                                           flag)};
  std::vector<std::string> uuids, host_names;
  bool all_uuids = true;
  for (const auto& g : chosen->gpus) {
    plan.selected.push_back(std::to_string(g.index));
    host_names.push_back(g.uuid.empty() ? std::to_string(g.index) : g.uuid);
    all_uuids = all_uuids && !g.uuid.empty();
    uuids.push_back(g.uuid);
  }
  // Only the chosen GPUs' nodes exist in the container, so CUDA numbers them from 0.
  std::string cuda_visible;
  for (size_t i = 0; i < chosen->gpus.size(); ++i)
    cuda_visible += (i ? "," : "") + (all_uuids ? uuids[i] : std::to_string(i));
  std::string nvidia_visible;
  for (size_t i = 0; i < host_names.size(); ++i) nvidia_visible += (i ? "," : "") + host_names[i];
  plan.env = chosen->edits.env;
  plan.env.push_back("NVIDIA_VISIBLE_DEVICES=" + nvidia_visible);
  plan.env.push_back("CUDA_VISIBLE_DEVICES=" + cuda_visible);
  for (const auto& n : chosen->edits.device_nodes)
    plan.devices.push_back({n.path, n.type, n.major, n.minor, n.mode, n.uid, n.gid});
  for (const auto& m : chosen->edits.mounts) plan.mounts.push_back({m.host_path, m.container_path, true});
  // A soname (libcuda.so.1) is the library mounted once more under that name, as in the CDI spec.
  for (const auto& m : gpu::link_mounts(*driver)) plan.mounts.push_back({m.host_path, m.container_path, true});
  plan.ldconfig_dirs = driver->library_dirs;
  plan.ldconfig_path = host_ldconfig();
  plan.docker_args = {"--gpus=" + (selection == "all" ? std::string("all") : "device=" + nvidia_visible)};
  for (const auto& name : host_names) plan.podman_args.push_back("--device=nvidia.com/gpu=" + name);
  if (selection == "all") plan.podman_args = {"--device=nvidia.com/gpu=all"};
  return plan;
}

std::string host_ldconfig() {
  for (const char* p : {"/sbin/ldconfig", "/usr/sbin/ldconfig"})
    if (::access(p, X_OK) == 0) return p;
  return "";
}

HookSpec ldconfig_hook(const std::string& ldconfig, const std::string& rootfs, const std::vector<std::string>& dirs) {
  HookSpec h{ldconfig, {"ldconfig", "-X", "-r", rootfs}};
  h.args.insert(h.args.end(), dirs.begin(), dirs.end());
  return h;
}

}  // namespace envsnap::run
