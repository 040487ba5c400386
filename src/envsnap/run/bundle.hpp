#pragma once
// The OCI runtime bundle's config.json for one run (runtime-spec 1.0.2, what runc
// 1.1 and crun 1.8 read). A pure function of BundleSpec, so its rules are unit-tested
// and the e2e tests validate the real file against ../shared/schemas/oci-runtime.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/run/spec.hpp"

namespace envsnap::run {

struct DeviceNodeSpec {
  std::string path;  // in the container
  char type = 'c';   // c or b
  int64_t major = 0, minor = 0;
  uint32_t file_mode = 0666, uid = 0, gid = 0;
};

struct BindMount {
  std::string source, destination;
  bool read_only = true;
};

struct HookSpec {
  std::string path;
  std::vector<std::string> args;
};

struct BundleSpec {
  std::string rootfs = "rootfs";          // relative to the bundle
  std::vector<std::string> args;          // the whole command line, init first
  std::vector<std::string> env;
  std::string cwd = "/";
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> additional_gids;
  bool terminal = false;
  std::string hostname;
  bool host_network = true;               // false: a private network namespace (for -p)
  bool host_ipc = false;                  // --ipc host: the host's IPC namespace and /dev/shm
  uint64_t shm_bytes = 0;
  std::string init_path;                  // host path of a static init mounted at /dev/init
  std::vector<Volume> volumes;            // -v
  std::vector<BindMount> host_files;      // /etc/resolv.conf, /etc/hosts ... (read-only)
  std::vector<Ulimit> rlimits;
  std::vector<DeviceNodeSpec> devices;    // GPU nodes, created and allowed in the cgroup
  std::vector<BindMount> device_mounts;   // driver libraries, binaries, firmware (read-only)
  std::vector<HookSpec> create_container_hooks;
};

// The config.json document.
nlohmann::json bundle_config(const BundleSpec& spec);

// Where the init is mounted in the container.
inline constexpr const char* init_mount_path = "/dev/init";

}  // namespace envsnap::run
