#pragma once
// What a container needs from the host's NVIDIA driver, found the way nvidia-ctk
// finds it: the driver version from libcuda in the root's ld.so.cache (else from the
// usual library folders), every library carrying that version, the utilities, the
// GSP firmware, the persistenced socket and the device nodes. Files are read through
// util::RootFs, so a symlink in another root never leads out of it. A container sees
// each file at its path inside the driver root (host path = root + path).

#include <cstdint>
#include <string>
#include <vector>

#include "envsnap/probe/nvidia.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::gpu {

struct DeviceNode {
  std::string path;       // in the container, e.g. "/dev/nvidia0"
  std::string host_path;  // dev_root + path
  char type = 'c';        // 'c' or 'b'
  int64_t major = 0, minor = 0;
  uint32_t mode = 0;      // permission bits (st_mode & 07777)
  uint32_t uid = 0, gid = 0;
};

struct GpuNode {
  int index = 0;     // the minor number of /dev/nvidiaN
  std::string uuid;  // "GPU-..." when NVML was asked; empty otherwise
  DeviceNode node;
};

struct Mount {
  std::string host_path, container_path;
  std::vector<std::string> options;  // e.g. {"ro", "nosuid", "nodev", "bind"}
};

// A symlink the container needs beside a library: container_dir/name -> target,
// e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.1 -> libcuda.so.535.104.05.
struct SonameLink {
  std::string container_dir, name, target;
};

enum class UuidSource {
  nvml_for_live_root,  // ask NVML (in a forked child) only when driver_root is "/"
  nvml,                // always ask NVML (tests with a fake NVML and a fake root)
  none,                // names are indices only
};

struct DiscoverOptions {
  std::string driver_root = "/";
  std::string dev_root;  // empty: driver_root
  UuidSource uuids = UuidSource::nvml_for_live_root;
  probe::NvmlOptions nvml;
};

struct DriverDiscovery {
  std::string driver_root, dev_root;  // absolute, symlinks resolved
  std::string driver_version;         // e.g. "535.104.05"
  std::string found_by;               // "ld.so.cache" or "directory scan"
  std::vector<GpuNode> gpus;          // sorted by index
  std::vector<DeviceNode> control_nodes;  // nvidiactl, uvm, modeset, nvidia-caps/*, infiniband/*
  std::vector<Mount> mounts;          // libraries, binaries, firmware, sockets; sorted by container path
  std::vector<SonameLink> links;      // sonames that differ from their library's file name
  std::vector<std::string> library_dirs;  // container folders holding driver libraries, sorted
  std::vector<std::string> warnings;
};

// Options of the bind mounts of driver files, and of sockets (which also get noexec).
extern const std::vector<std::string> k_file_mount_options;
extern const std::vector<std::string> k_socket_mount_options;

// Library name stems (before ".so") that are taken from ld.so.cache wherever they live.
extern const std::vector<std::string> k_driver_library_stems;

// Finds the driver in options.driver_root and the device nodes under options.dev_root.
// An Error naming the root and where it looked when no libcuda.so.<version> is found;
// problems with single files are warnings. With UUIDs enabled it forks (NVML child):
// call before starting threads.
util::Result<DriverDiscovery> discover_driver(const DiscoverOptions& options);

}  // namespace envsnap::gpu
