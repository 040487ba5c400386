#include "envsnap/run/bundle.hpp"

#include <fmt/format.h>

namespace envsnap::run {

using nlohmann::json;

namespace {

// docker's default capability set: enough for package managers and servers, nothing
// that reaches the host (no SYS_ADMIN, SYS_MODULE, NET_ADMIN...).
const std::vector<std::string> kCapabilities = {
    "CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FSETID",     "CAP_FOWNER",     "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID",      "CAP_SETUID",     "CAP_SETFCAP",    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"};

const std::vector<std::string> kMaskedPaths = {
    "/proc/asound",      "/proc/acpi",          "/proc/kcore",         "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list",  "/proc/timer_stats",   "/proc/sched_debug",
    "/proc/scsi",        "/sys/firmware",       "/sys/devices/virtual/powercap"};

const std::vector<std::string> kReadonlyPaths = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                                 "/proc/sysrq-trigger"};

json mount(std::string destination, std::string type, std::string source, std::vector<std::string> options) {
  return json{{"destination", std::move(destination)},
              {"type", std::move(type)},
              {"source", std::move(source)},
              {"options", std::move(options)}};
}

json bind_mount(const std::string& source, const std::string& destination, bool read_only, bool recursive) {
  std::vector<std::string> options = {recursive ? "rbind" : "bind", "rprivate", read_only ? "ro" : "rw"};
  if (read_only) {
    options.push_back("nosuid");
    options.push_back("nodev");
  }
  return mount(destination, "bind", source, std::move(options));
}

}  // namespace

json bundle_config(const BundleSpec& spec) {
  json process = {
      {"terminal", spec.terminal},
      {"user", {{"uid", spec.uid}, {"gid", spec.gid}}},
      {"args", spec.args},
      {"env", spec.env},
      {"cwd", spec.cwd},
      {"capabilities",
       {{"bounding", kCapabilities},
        {"effective", kCapabilities},
        {"permitted", kCapabilities}}},
      {"noNewPrivileges", false},
  };
  if (!spec.additional_gids.empty()) process["user"]["additionalGids"] = spec.additional_gids;
  json rlimits = json::array();
  for (const auto& u : spec.rlimits) rlimits.push_back({{"type", u.name}, {"soft", u.soft}, {"hard", u.hard}});
  if (!rlimits.empty()) process["rlimits"] = rlimits;

  json mounts = json::array();
  mounts.push_back(mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}));
  mounts.push_back(mount("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}));
  mounts.push_back(mount("/dev/pts", "devpts", "devpts",
                         {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}));
  if (spec.host_ipc)
    mounts.push_back(bind_mount("/dev/shm", "/dev/shm", false, false));
  else
    mounts.push_back(mount("/dev/shm", "tmpfs", "shm",
                           {"nosuid", "noexec", "nodev", "mode=1777", fmt::format("size={}", spec.shm_bytes)}));
  mounts.push_back(mount("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"}));
  // A fresh read-only sysfs, also with the host's network: a recursive bind of the host's
  // /sys would leave the mounts below it (debugfs, tracefs, bpf...) writable.
  mounts.push_back(mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}));
  mounts.push_back(mount("/sys/fs/cgroup", "cgroup", "cgroup", {"nosuid", "noexec", "nodev", "relatime", "ro"}));
  if (!spec.init_path.empty()) mounts.push_back(bind_mount(spec.init_path, init_mount_path, true, false));
  for (const auto& f : spec.host_files) mounts.push_back(bind_mount(f.source, f.destination, f.read_only, false));
  for (const auto& m : spec.device_mounts) mounts.push_back(bind_mount(m.source, m.destination, m.read_only, false));
  for (const auto& v : spec.volumes) mounts.push_back(bind_mount(v.source, v.destination, v.read_only, true));

  json namespaces = json::array({{{"type", "pid"}}, {{"type", "mount"}}, {{"type", "uts"}}});
  if (!spec.host_ipc) namespaces.push_back({{"type", "ipc"}});
  if (!spec.host_network) namespaces.push_back({{"type", "network"}});

  json device_rules = json::array({{{"allow", false}, {"access", "rwm"}}});
  json devices = json::array();
  for (const auto& d : spec.devices) {
    std::string type(1, d.type);
    devices.push_back({{"path", d.path},
                       {"type", type},
                       {"major", d.major},
                       {"minor", d.minor},
                       {"fileMode", d.file_mode},
                       {"uid", d.uid},
                       {"gid", d.gid}});
    device_rules.push_back({{"allow", true}, {"type", type}, {"major", d.major}, {"minor", d.minor}, {"access", "rwm"}});
  }

  json linux = {
      {"namespaces", namespaces},
      {"maskedPaths", kMaskedPaths},
      {"readonlyPaths", kReadonlyPaths},
      {"resources", {{"devices", device_rules}}},
  };
  if (!devices.empty()) linux["devices"] = devices;

  json config = {
      {"ociVersion", "1.0.2"},
      {"process", process},
      {"root", {{"path", spec.rootfs}, {"readonly", false}}},
      {"hostname", spec.hostname},
      {"mounts", mounts},
      {"linux", linux},
  };
  if (!spec.create_container_hooks.empty()) {
    json hooks = json::array();
    for (const auto& h : spec.create_container_hooks) hooks.push_back({{"path", h.path}, {"args", h.args}});
    config["hooks"] = {{"createContainer", hooks}};
  }
  return config;
}

}  // namespace envsnap::run
