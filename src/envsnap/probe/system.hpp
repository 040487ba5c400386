#pragma once
// The operating system of a root: os-release, machine architecture, glibc version,
// installed dpkg and apk packages, and (for the live system only) the host's
// kernel, CPU, memory and /dev/shm size.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

struct Package {
  std::string name, version, arch;
  bool operator==(const Package&) const = default;
};

struct HostInfo {
  std::string kernel, cpu;
  int cpus = 0;
  uint64_t memory_bytes = 0, shm_bytes = 0;
};

struct SystemInfo {
  std::map<std::string, std::string> os;
  std::string arch, glibc;
  std::vector<Package> dpkg, apk;
  std::optional<HostInfo> host;
};

// Reads everything from ctx.root; host only when ctx.live(). Never throws: a file
// that cannot be read or parsed becomes a warning naming its path.
SystemInfo probe_system(const Context& ctx);

// The "system" section of the lock (docs/lock-format.md); empty facts are absent keys.
nlohmann::json to_json(const SystemInfo& info);

// Installed packages ("install|hold ok installed") of a dpkg status file, sorted by
// name, then arch, then version. Each bad stanza is skipped with one warning naming path.
std::vector<Package> parse_dpkg_status(std::string_view text, std::string_view path, Warnings& warnings);

// Packages of an apk database (/lib/apk/db/installed), sorted like parse_dpkg_status.
std::vector<Package> parse_apk_installed(std::string_view text);

// The keys id, version_id, version_codename and pretty_name of an os-release file,
// values unquoted by the shell's rules.
std::map<std::string, std::string> parse_os_release(std::string_view text);

}  // namespace envsnap::probe
