#include "envsnap/gpu/driver.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "envsnap/gpu/elf.hpp"
#include "envsnap/gpu/ldcache.hpp"
#include "envsnap/probe/context.hpp"
#include "envsnap/util/rootfs.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::gpu {

const std::vector<std::string> k_file_mount_options = {"ro", "nosuid", "nodev", "bind"};
const std::vector<std::string> k_socket_mount_options = {"ro", "nosuid", "nodev", "bind", "noexec"};

// libnvidia-container's utility, compute and video lists, plus what newer drivers split
// out of libcuda (gpucomp, nvvm) and the confidential-computing pkcs11 modules.
const std::vector<std::string> k_driver_library_stems = {
    "libcuda",           "libcudadebugger",        "libnvidia-ml",         "libnvidia-cfg",
    "libnvidia-opencl",  "libnvidia-ptxjitcompiler", "libnvidia-fatbinaryloader",
    "libnvidia-compiler", "libnvidia-nvvm",         "libnvidia-gpucomp",    "libnvidia-allocator",
    "libnvidia-pkcs11",  "libnvidia-pkcs11-openssl3", "libnvidia-encode",   "libnvidia-opticalflow",
    "libnvcuvid",        "libvdpau_nvidia",
};

namespace {

namespace fs = std::filesystem;

// Where distributions, the NVIDIA installer, Kubernetes' driver containers and WSL put
// the driver libraries; 64-bit folders first (32-bit files are skipped by ELF class).
constexpr std::string_view k_library_dirs[] = {
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",    "/lib64",                     "/usr/local/nvidia/lib64",
    "/usr/lib/wsl/lib",          "/usr/lib",                   "/lib",
    "/usr/local/nvidia/lib",
};
constexpr std::string_view k_binary_dirs[] = {"/usr/bin", "/usr/sbin", "/usr/local/nvidia/bin",
                                              "/usr/local/bin", "/bin", "/sbin"};
constexpr std::string_view k_binaries[] = {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
                                           "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"};
constexpr std::string_view k_firmware_dirs[] = {"/lib/firmware/nvidia", "/usr/lib/firmware/nvidia"};
constexpr std::string_view k_persistenced_sockets[] = {"/var/run/nvidia-persistenced/socket",
                                                        "/run/nvidia-persistenced/socket"};
constexpr std::string_view k_control_nodes[] = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                                                "/dev/nvidia-modeset"};

std::string dirname(std::string_view path) {
  auto slash = path.rfind('/');
  if (slash == std::string_view::npos || slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string basename(std::string_view path) {
  auto slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// The absolute host path that an open descriptor refers to.
util::Result<std::string> fd_path(int fd) {
  std::string buf(4096, '\0');
  auto link = fmt::format("/proc/self/fd/{}", fd);
  auto n = ::readlink(link.c_str(), buf.data(), buf.size());
  if (n < 0) return util::Error{fmt::format("{}: {}", link, std::strerror(errno))};
  buf.resize(static_cast<size_t>(n));
  return buf;
}

// A root opened for reading, with its real host path for building host paths.
class Root {
public:
  static util::Result<Root> open(const std::string& path, std::string_view what) {
    auto fs = util::RootFs::open(path);
    if (!fs) return util::Error{fmt::format("{} {}", what, fs.message())};
    auto fd = fs->open_at(".", O_PATH | O_DIRECTORY);
    if (!fd) return fd.error();
    auto real = fd_path(fd->get());
    if (!real) return real.error();
    if (!util::is_utf8(*real)) return util::Error{fmt::format("{} {}: the path is not UTF-8", what, util::printable(*real))};
    return Root(std::move(*fs), std::move(*real));
  }

  const util::RootFs& fs() const { return m_fs; }
  const std::string& real() const { return m_real; }
  std::string host(std::string_view path) const { return m_real == "/" ? std::string(path) : util::join(m_real, path); }
  std::string shown(std::string_view path) const { return util::printable(host(path)); }

  // The root-relative path ("/usr/lib/...") of `path` with every symlink resolved
  // inside the root; an Error when it does not exist.
  util::Result<std::string> canonical(std::string_view path) const {
    auto fd = m_fs.open_at(path, O_PATH);
    if (!fd) return fd.error();
    auto real = fd_path(fd->get());
    if (!real) return real.error();
    if (m_real == "/") return *real;
    if (*real == m_real) return std::string("/");
    if (real->starts_with(m_real) && (*real)[m_real.size()] == '/') return real->substr(m_real.size());
    return util::Error{fmt::format("{} resolves to {}, outside {}", shown(path), *real, m_real)};
  }

private:
  Root(util::RootFs fs, std::string real) : m_fs(std::move(fs)), m_real(std::move(real)) {}
  util::RootFs m_fs;
  std::string m_real;
};

bool ends_with_version(std::string_view name, std::string_view version) {
  auto suffix = fmt::format(".so.{}", version);
  return name.size() > suffix.size() && name.ends_with(suffix);
}

// The stem of a library name: "libnvidia-ml.so.1" -> "libnvidia-ml".
std::string_view stem(std::string_view name) {
  auto so = name.find(".so");
  return so == std::string_view::npos ? name : name.substr(0, so);
}

class Discoverer {
public:
  Discoverer(const Root& root, const Root& dev, DriverDiscovery& out) : m_root(root), m_dev(dev), m_out(out) {}

  void warn(std::string message) { m_out.warnings.push_back(std::move(message)); }

  // JSON (and so a CDI spec) holds UTF-8 only; a driver file never has another name.
  bool utf8(std::string_view path, const Root& root) {
    if (util::is_utf8(path)) return true;
    warn(fmt::format("{}: the name is not UTF-8; left out", root.shown(path)));
    return false;
  }

  void add_mount(const std::string& real, std::string container_path, const std::vector<std::string>& options) {
    if (!utf8(real, m_root) || !utf8(container_path, m_root)) return;
    m_out.mounts.push_back({m_root.host(real), std::move(container_path), options});
  }

  std::vector<LdCacheEntry> read_ldcache() {
    constexpr std::string_view path = "/etc/ld.so.cache";
    if (!m_root.fs().exists(path)) return {};
    auto bytes = m_root.fs().read_file(path);
    if (!bytes) {
      warn(bytes.message());
      return {};
    }
    auto entries = parse_ldcache(*bytes, m_root.shown(path));
    if (!entries) {
      warn(entries.message());
      return {};
    }
    std::vector<LdCacheEntry> native;
    for (auto& e : *entries)
      if (e.is_native()) native.push_back(std::move(e));
    return native;
  }

  // The driver version and libcuda's folder from the first native libcuda in the cache.
  bool version_from_ldcache(const std::vector<LdCacheEntry>& entries) {
    for (const auto& e : entries) {
      if (stem(e.key) != "libcuda") continue;
      auto real = m_root.canonical(e.value);
      if (!real) continue;
      auto version = probe::parse_driver_soname(basename(*real));
      if (version.empty()) continue;
      m_out.driver_version = version;
      m_out.found_by = "ld.so.cache";
      m_cuda_dir = dirname(*real);
      return true;
    }
    return false;
  }

  // Each library folder that exists, once (as its real path), in search order.
  std::vector<std::string> library_folders() {
    std::vector<std::string> out;
    for (auto dir : k_library_dirs) {
      auto real = m_root.canonical(dir);
      if (!real || !m_root.fs().is_dir(*real)) continue;
      if (std::find(out.begin(), out.end(), *real) == out.end()) out.push_back(*real);
    }
    return out;
  }

  bool version_from_scan() {
    std::map<std::string, std::string, bool (*)(const std::string&, const std::string&)> found(
        [](const std::string& a, const std::string& b) { return util::compare_versions(a, b) < 0; });
    std::vector<std::string> where;
    for (const auto& dir : library_folders()) {
      auto entries = m_root.fs().list_dir(dir);
      if (!entries) continue;
      for (const auto& e : *entries) {
        if (!e.name.starts_with("libcuda.so.")) continue;
        auto version = probe::parse_driver_soname(e.name);
        auto path = util::join(dir, e.name);
        if (version.empty() || !native_library(path)) continue;
        found.emplace(version, dir);
        where.push_back(m_root.shown(path));
      }
    }
    if (found.empty()) return false;
    if (found.size() > 1)
      warn(fmt::format("libcuda of {} driver versions under {}: {}; using the newest, {}", found.size(),
                       m_root.real(), fmt::join(where, ", "), found.rbegin()->first));
    m_out.driver_version = found.rbegin()->first;
    m_out.found_by = "directory scan";
    m_cuda_dir = found.rbegin()->second;
    return true;
  }

  bool native_library(const std::string& path) {
    auto info = read_elf_info(m_root.fs(), path);
    return info && info->machine == native_machine();
  }

  // Adds the library at `path` (resolved inside the root) once, with its soname link.
  void add_library(const std::string& path) {
    auto real = m_root.canonical(path);
    if (!real) {
      warn(real.message());
      return;
    }
    if (!m_seen.insert(*real).second) return;
    auto info = read_elf_info(m_root.fs(), *real);
    if (!info) {
      warn(info.message());
      return;
    }
    if (info->machine != native_machine() || !utf8(*real, m_root)) return;
    auto dir = dirname(*real), name = basename(*real);
    add_mount(*real, *real, k_file_mount_options);
    m_dirs.insert(dir);
    const auto& soname = info->soname;
    if (!soname.empty() && soname != name && soname != "." && soname != ".." &&
        soname.find('/') == std::string::npos && util::is_utf8(soname))
      m_out.links.push_back({dir, soname, name});
  }

  void libraries(const std::vector<LdCacheEntry>& entries) {
    const auto& version = m_out.driver_version;
    // Like nvidia-ctk: everything carrying the driver version beside libcuda.
    if (auto list = m_root.fs().list_dir(m_cuda_dir)) {
      for (const auto& e : *list)
        if (e.type != util::FileType::directory && ends_with_version(e.name, version))
          add_library(util::join(m_cuda_dir, e.name));
    } else {
      warn(list.message());
    }
    // Like libnvidia-container: the known libraries wherever the cache puts them.
    for (const auto& e : entries) {
      if (std::find(k_driver_library_stems.begin(), k_driver_library_stems.end(), stem(e.key)) ==
          k_driver_library_stems.end())
        continue;
      auto real = m_root.canonical(e.value);
      if (real && ends_with_version(basename(*real), version)) add_library(*real);
    }
    // And in the usual folders, for roots whose cache does not list them.
    for (const auto& dir : library_folders()) {
      for (const auto& s : k_driver_library_stems) {
        auto path = util::join(dir, fmt::format("{}.so.{}", s, version));
        auto st = m_root.fs().stat(path);
        if (st && S_ISREG(st->st_mode)) add_library(path);
      }
    }
    m_out.library_dirs.assign(m_dirs.begin(), m_dirs.end());
  }

  void binaries() {
    for (auto name : k_binaries) {
      for (auto dir : k_binary_dirs) {
        auto path = util::join(dir, name);
        auto st = m_root.fs().stat(path);
        if (!st || !S_ISREG(st->st_mode)) continue;
        auto real = m_root.canonical(path);
        if (!real) continue;
        add_mount(*real, path, k_file_mount_options);
        break;
      }
    }
  }

  void firmware() {
    std::set<std::string> seen;
    for (auto base : k_firmware_dirs) {
      auto dir = util::join(base, m_out.driver_version);
      auto real = m_root.canonical(dir);
      if (!real || !m_root.fs().is_dir(*real) || !seen.insert(*real).second) continue;
      auto list = m_root.fs().list_dir(*real);
      if (!list) {
        warn(list.message());
        continue;
      }
      for (const auto& e : *list) {
        if (!e.name.ends_with(".bin")) continue;
        auto file = m_root.canonical(util::join(*real, e.name));
        if (!file || !m_root.fs().is_file(*file)) continue;
        add_mount(*file, util::join(dir, e.name), k_file_mount_options);
      }
    }
  }

  void sockets() {
    std::set<std::string> seen;
    for (auto path : k_persistenced_sockets) {
      auto real = m_root.canonical(path);
      if (!real) continue;
      auto st = m_root.fs().stat(*real);
      if (!st || !S_ISSOCK(st->st_mode) || !seen.insert(*real).second) continue;
      add_mount(*real, std::string(path), k_socket_mount_options);
    }
  }

  std::optional<DeviceNode> node(std::string_view path) {
    auto st = m_dev.fs().lstat(path);
    if (!st || !utf8(path, m_dev)) return std::nullopt;
    if (!S_ISCHR(st->st_mode) && !S_ISBLK(st->st_mode)) {
      warn(fmt::format("{} is not a device node; left out", m_dev.shown(path)));
      return std::nullopt;
    }
    DeviceNode n;
    n.path = std::string(path);
    n.host_path = m_dev.host(path);
    n.type = S_ISCHR(st->st_mode) ? 'c' : 'b';
    n.major = major(st->st_rdev);
    n.minor = minor(st->st_rdev);
    n.mode = st->st_mode & 07777;
    n.uid = st->st_uid;
    n.gid = st->st_gid;
    return n;
  }

  void nodes_in(std::string_view dir) {
    if (!m_dev.fs().lstat(dir)) return;
    auto list = m_dev.fs().list_dir(dir);
    if (!list) {
      warn(list.message());
      return;
    }
    for (const auto& e : *list)
      if (auto n = node(util::join(dir, e.name))) m_out.control_nodes.push_back(std::move(*n));
  }

  void device_nodes() {
    for (auto path : k_control_nodes)
      if (auto n = node(path)) m_out.control_nodes.push_back(std::move(*n));
    nodes_in("/dev/nvidia-caps");
    nodes_in("/dev/infiniband");
    auto list = m_dev.fs().list_dir("/dev");
    if (!list) return;
    for (const auto& e : *list) {
      std::string_view name = e.name;
      if (!name.starts_with("nvidia") || name.size() == 6) continue;
      if (!std::all_of(name.begin() + 6, name.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
      auto n = node(util::join("/dev", name));
      if (!n) continue;
      m_out.gpus.push_back({static_cast<int>(n->minor), "", std::move(*n)});
    }
    std::sort(m_out.gpus.begin(), m_out.gpus.end(),
              [](const GpuNode& a, const GpuNode& b) { return a.index < b.index; });
  }

private:
  const Root& m_root;
  const Root& m_dev;
  DriverDiscovery& m_out;
  std::string m_cuda_dir;
  std::set<std::string> m_seen;
  std::set<std::string> m_dirs;
};

// "00000000:3B:00.0" (NVML) -> "0000:3b:00.0" (the folder name under /proc/driver/nvidia/gpus).
std::string proc_bus_id(std::string_view nvml) {
  auto colon = nvml.find(':');
  if (colon == std::string_view::npos) return util::to_lower(nvml);
  auto domain = nvml.substr(0, colon);
  while (domain.size() > 4 && domain.front() == '0') domain.remove_prefix(1);
  return util::to_lower(fmt::format("{}{}", domain, nvml.substr(colon)));
}

// The "Device Minor:" of a GPU in /proc/driver/nvidia/gpus/<bus>/information; -1 when unknown.
int proc_minor(const std::string& bus) {
  std::ifstream in(fmt::format("/proc/driver/nvidia/gpus/{}/information", bus));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("Device Minor:")) continue;
    auto value = util::trim(std::string_view(line).substr(13));
    try {
      return std::stoi(std::string(value));
    } catch (const std::exception&) {
      return -1;
    }
  }
  return -1;
}

void add_uuids(const Root& root, const DiscoverOptions& options, DriverDiscovery& out) {
  probe::Warnings warnings;
  probe::Context ctx{root.fs(), probe::Liveness::live_system, warnings};
  auto info = probe::probe_nvidia(ctx, options.nvml);
  for (auto& w : warnings.items()) out.warnings.push_back(std::move(w));
  if (info.source != "nvml") return;
  if (!info.driver.empty() && info.driver != out.driver_version)
    out.warnings.push_back(fmt::format("NVML reports driver {} but the libraries under {} are {}; "
                                       "reboot or reload the kernel module after a driver upgrade",
                                       info.driver, root.real(), out.driver_version));
  bool live = root.real() == "/";
  for (const auto& g : info.gpus) {
    // NVML's index is usually the minor number; the running system's /proc says for sure.
    int minor = live && !g.pci_bus_id.empty() ? proc_minor(proc_bus_id(g.pci_bus_id)) : -1;
    if (minor < 0) minor = g.index;
    for (auto& node : out.gpus)
      if (node.index == minor) node.uuid = g.uuid;
  }
}

}  // namespace

util::Result<DriverDiscovery> discover_driver(const DiscoverOptions& options) {
  auto root = Root::open(options.driver_root, "driver root:");
  if (!root) return root.error();
  auto dev = Root::open(options.dev_root.empty() ? options.driver_root : options.dev_root, "device root:");
  if (!dev) return dev.error();

  DriverDiscovery out;
  out.driver_root = root->real();
  out.dev_root = dev->real();
  Discoverer d(*root, *dev, out);
  auto entries = d.read_ldcache();
  if (!d.version_from_ldcache(entries) && !d.version_from_scan()) {
    std::vector<std::string> dirs(std::begin(k_library_dirs), std::end(k_library_dirs));
    return util::Error{fmt::format("no NVIDIA driver found under {} (looked for libcuda.so.<version> in {} "
                                   "and in {}); give the driver's root with --driver-root",
                                   root->real(), root->shown("/etc/ld.so.cache"), fmt::join(dirs, ", "))};
  }
  d.libraries(entries);
  d.binaries();
  d.firmware();
  d.sockets();
  d.device_nodes();
  std::sort(out.mounts.begin(), out.mounts.end(),
            [](const Mount& a, const Mount& b) { return a.container_path < b.container_path; });
  std::sort(out.links.begin(), out.links.end(), [](const SonameLink& a, const SonameLink& b) {
    return std::tie(a.container_dir, a.name) < std::tie(b.container_dir, b.name);
  });

  bool ask_nvml = options.uuids == UuidSource::nvml ||
                  (options.uuids == UuidSource::nvml_for_live_root && root->real() == "/");
  if (ask_nvml && !out.gpus.empty()) add_uuids(*root, options, out);
  return out;
}

}  // namespace envsnap::gpu
