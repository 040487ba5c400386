#include "envsnap/probe/nvidia.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "envsnap/util/process.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace {

// The subset of nvml.h used here, declared by hand so that nothing links NVML.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct nvmlPciInfo_t {
  char busIdLegacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  char busId[32];
};
constexpr nvmlReturn_t nvml_success = 0;
constexpr nvmlReturn_t nvml_error_not_supported = 3;
constexpr unsigned int nvml_mig_disable = 0;
constexpr unsigned int nvml_mig_enable = 1;
constexpr unsigned int nvml_driver_version_buffer = 80;
constexpr unsigned int nvml_name_buffer = 96;
constexpr unsigned int nvml_uuid_buffer = 96;

struct NvmlApi {
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*driver_version)(char*, unsigned int) = nullptr;
  nvmlReturn_t (*cuda_driver_version)(int*) = nullptr;
  nvmlReturn_t (*device_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*compute_capability)(nvmlDevice_t, int*, int*) = nullptr;
  nvmlReturn_t (*memory_info)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*mig_mode)(nvmlDevice_t, unsigned int*, unsigned int*) = nullptr;
  nvmlReturn_t (*pci_info)(nvmlDevice_t, nvmlPciInfo_t*) = nullptr;
};

template <class F>
void bind(void* handle, F& fn, const char* symbol) {
  fn = reinterpret_cast<F>(::dlsym(handle, symbol));
}

std::string describe(const NvmlApi& api, nvmlReturn_t rc) {
  const char* text = api.error_string ? api.error_string(rc) : nullptr;
  if (!text) return fmt::format("error {}", rc);
  return fmt::format("{} (error {})", util::printable(text), rc);
}

// A fixed-size C string from NVML, cut at its terminator, made printable.
std::string from_buffer(const char* buf, size_t size) {
  return util::printable(std::string_view(buf, ::strnlen(buf, size)));
}

std::string cuda_version_string(int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); }

// Runs in the forked child: loads NVML and reports everything as JSON, an "error"
// key when NVML cannot be used at all.
nlohmann::json query_nvml(const std::string& library) {
  using nlohmann::json;
  void* handle = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* err = ::dlerror();
    return json{{"error", fmt::format("cannot load it: {}", util::printable(err ? err : "dlopen failed"))}};
  }
  NvmlApi api;
  bind(handle, api.init, "nvmlInit_v2");
  bind(handle, api.shutdown, "nvmlShutdown");
  bind(handle, api.error_string, "nvmlErrorString");
  bind(handle, api.driver_version, "nvmlSystemGetDriverVersion");
  bind(handle, api.cuda_driver_version, "nvmlSystemGetCudaDriverVersion_v2");
  if (!api.cuda_driver_version) bind(handle, api.cuda_driver_version, "nvmlSystemGetCudaDriverVersion");
  bind(handle, api.device_count, "nvmlDeviceGetCount_v2");
  bind(handle, api.handle_by_index, "nvmlDeviceGetHandleByIndex_v2");
  bind(handle, api.name, "nvmlDeviceGetName");
  bind(handle, api.uuid, "nvmlDeviceGetUUID");
  bind(handle, api.compute_capability, "nvmlDeviceGetCudaComputeCapability");
  bind(handle, api.memory_info, "nvmlDeviceGetMemoryInfo");
  bind(handle, api.mig_mode, "nvmlDeviceGetMigMode");
  bind(handle, api.pci_info, "nvmlDeviceGetPciInfo_v3");

  if (!api.init || !api.device_count || !api.handle_by_index)
    return json{{"error", "it lacks nvmlInit_v2, nvmlDeviceGetCount_v2 or nvmlDeviceGetHandleByIndex_v2"}};
  if (auto rc = api.init(); rc != nvml_success)
    return json{{"error", fmt::format("nvmlInit_v2 failed: {}", describe(api, rc))}};

  json out = json::object();
  json warnings = json::array();
  auto missing = [&](const char* fn) { warnings.push_back(fmt::format("it lacks {}", fn)); };
  auto failed = [&](const std::string& what, nvmlReturn_t rc) {
    warnings.push_back(fmt::format("{} failed: {}", what, describe(api, rc)));
  };

  if (!api.driver_version) {
    missing("nvmlSystemGetDriverVersion");
  } else {
    char buf[nvml_driver_version_buffer] = {};
    if (auto rc = api.driver_version(buf, sizeof buf); rc == nvml_success)
      out["driver"] = from_buffer(buf, sizeof buf);
    else
      failed("nvmlSystemGetDriverVersion", rc);
  }
  if (!api.cuda_driver_version) {
    missing("nvmlSystemGetCudaDriverVersion_v2");
  } else {
    int v = 0;
    if (auto rc = api.cuda_driver_version(&v); rc == nvml_success)
      out["cuda_driver"] = cuda_version_string(v);
    else
      failed("nvmlSystemGetCudaDriverVersion_v2", rc);
  }

  unsigned int count = 0;
  if (auto rc = api.device_count(&count); rc != nvml_success) {
    if (api.shutdown) api.shutdown();
    return json{{"error", fmt::format("nvmlDeviceGetCount_v2 failed: {}", describe(api, rc))}};
  }
  json gpus = json::array();
  for (unsigned int i = 0; i < count; ++i) {
    nvmlDevice_t dev = nullptr;
    if (auto rc = api.handle_by_index(i, &dev); rc != nvml_success) {
      failed(fmt::format("nvmlDeviceGetHandleByIndex_v2({})", i), rc);
      continue;
    }
    json g = {{"index", i}};
    if (api.name) {
      char buf[nvml_name_buffer] = {};
      if (auto rc = api.name(dev, buf, sizeof buf); rc == nvml_success) g["name"] = from_buffer(buf, sizeof buf);
      else failed(fmt::format("nvmlDeviceGetName({})", i), rc);
    }
    if (api.uuid) {
      char buf[nvml_uuid_buffer] = {};
      if (auto rc = api.uuid(dev, buf, sizeof buf); rc == nvml_success) g["uuid"] = from_buffer(buf, sizeof buf);
      else failed(fmt::format("nvmlDeviceGetUUID({})", i), rc);
    }
    if (api.compute_capability) {
      int major = 0, minor = 0;
      if (auto rc = api.compute_capability(dev, &major, &minor); rc == nvml_success)
        g["compute_capability"] = fmt::format("{}.{}", major, minor);
      else
        failed(fmt::format("nvmlDeviceGetCudaComputeCapability({})", i), rc);
    }
    if (api.memory_info) {
      nvmlMemory_t mem{};
      if (auto rc = api.memory_info(dev, &mem); rc == nvml_success) g["memory_bytes"] = static_cast<uint64_t>(mem.total);
      else failed(fmt::format("nvmlDeviceGetMemoryInfo({})", i), rc);
    }
    if (api.mig_mode) {
      unsigned int current = 0, pending = 0;
      auto rc = api.mig_mode(dev, &current, &pending);
      if (rc == nvml_error_not_supported) g["mig_mode"] = "unsupported";
      else if (rc != nvml_success) failed(fmt::format("nvmlDeviceGetMigMode({})", i), rc);
      else if (current == nvml_mig_enable) g["mig_mode"] = "enabled";
      else if (current == nvml_mig_disable) g["mig_mode"] = "disabled";
      else warnings.push_back(fmt::format("nvmlDeviceGetMigMode({}) gave an unknown mode {}", i, current));
    }
    if (api.pci_info) {
      nvmlPciInfo_t pci{};
      if (auto rc = api.pci_info(dev, &pci); rc == nvml_success) g["pci_bus_id"] = from_buffer(pci.busId, sizeof pci.busId);
      else failed(fmt::format("nvmlDeviceGetPciInfo_v3({})", i), rc);
    }
    gpus.push_back(std::move(g));
  }
  for (const char* fn : {"nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetCudaComputeCapability",
                         "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMigMode", "nvmlDeviceGetPciInfo_v3"}) {
    if (!::dlsym(handle, fn)) missing(fn);
  }
  if (api.shutdown) api.shutdown();
  out["gpus"] = std::move(gpus);
  out["warnings"] = std::move(warnings);
  return out;
}

std::string child_main(const std::string& library) {
  try {
    return query_nvml(library).dump();
  } catch (const std::exception& e) {
    return nlohmann::json{{"error", util::printable(e.what())}}.dump();
  } catch (...) {
    return R"({"error":"unknown exception"})";
  }
}

std::string resolve_library(const NvmlOptions& options) {
  if (!options.library.empty()) return options.library;
  if (const char* env = std::getenv("ENVSNAP_NVML_LIBRARY"); env && *env) return env;
  return "libnvidia-ml.so.1";
}

template <class T>
T get_or(const nlohmann::json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  return it->template get<T>();
}

// NVML through a child process; false (with a warning) when it gave nothing usable.
bool probe_nvml(const Context& ctx, const NvmlOptions& options, NvidiaInfo& info) {
  std::string library = resolve_library(options);
  auto prefix = fmt::format("NVML ({})", util::printable(library));
  auto fallback = "; using /proc/driver/nvidia/version and driver library names instead";
  auto raw = util::run_in_child([&library] { return child_main(library); }, options.timeout);
  if (!raw) {
    ctx.warnings.add(fmt::format("{}: {}{}", prefix, raw.message(), fallback));
    return false;
  }
  auto doc = nlohmann::json::parse(*raw, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    ctx.warnings.add(fmt::format("{}: the child sent unreadable output{}", prefix, fallback));
    return false;
  }
  try {
    if (auto err = doc.find("error"); err != doc.end()) {
      ctx.warnings.add(fmt::format("{}: {}{}", prefix, err->get<std::string>(), fallback));
      return false;
    }
    NvidiaInfo got;
    got.source = "nvml";
    got.driver = get_or<std::string>(doc, "driver", "");
    got.cuda_driver = get_or<std::string>(doc, "cuda_driver", "");
    for (const auto& g : doc.value("gpus", nlohmann::json::array())) {
      Gpu gpu;
      gpu.index = g.at("index").get<int>();
      gpu.name = get_or<std::string>(g, "name", "");
      gpu.uuid = get_or<std::string>(g, "uuid", "");
      gpu.compute_capability = get_or<std::string>(g, "compute_capability", "");
      gpu.memory_bytes = get_or<uint64_t>(g, "memory_bytes", 0);
      gpu.mig_mode = get_or<std::string>(g, "mig_mode", "");
      gpu.pci_bus_id = get_or<std::string>(g, "pci_bus_id", "");
      got.gpus.push_back(std::move(gpu));
    }
    std::sort(got.gpus.begin(), got.gpus.end(), [](const Gpu& a, const Gpu& b) { return a.index < b.index; });
    for (const auto& w : doc.value("warnings", nlohmann::json::array()))
      ctx.warnings.add(fmt::format("{}: {}", prefix, w.get<std::string>()));
    info = std::move(got);
    return true;
  } catch (const std::exception& e) {
    ctx.warnings.add(fmt::format("{}: the child sent malformed output ({}){}", prefix, e.what(), fallback));
    return false;
  }
}

bool probe_proc(const Context& ctx, NvidiaInfo& info) {
  constexpr std::string_view path = "/proc/driver/nvidia/version";
  auto text = ctx.root.read_file(path, 1u << 20);
  if (!text) return false;  // no kernel module loaded: the usual case without a GPU
  auto version = parse_proc_driver_version(*text);
  if (version.empty()) {
    ctx.warnings.add(fmt::format("{}: no driver version in it", ctx.root.host_path(path)));
    return false;
  }
  info.source = "proc";
  info.driver = std::move(version);
  return true;
}

// Where distributions, the NVIDIA installer and the container toolkit put the driver libraries.
constexpr std::string_view driver_lib_dirs[] = {
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
    "/lib/x86_64-linux-gnu",     "/lib/aarch64-linux-gnu",     "/lib64",     "/lib",
    "/usr/local/nvidia/lib64",   "/usr/local/nvidia/lib",      "/usr/lib/wsl/lib",
};

bool probe_sonames(const Context& ctx, NvidiaInfo& info) {
  std::set<std::string> seen_dirs;
  std::vector<std::string> versions;
  std::vector<std::string> where;
  for (auto dir : driver_lib_dirs) {
    auto st = ctx.root.stat(dir);
    if (!st || !S_ISDIR(st->st_mode)) continue;
    // /lib is often a symlink to /usr/lib: list each real directory once.
    if (!seen_dirs.insert(fmt::format("{}:{}", st->st_dev, st->st_ino)).second) continue;
    auto entries = ctx.root.list_dir(dir);
    if (!entries) {
      ctx.warnings.add(entries.message());
      continue;
    }
    for (const auto& e : *entries) {
      if (e.type == util::FileType::directory) continue;
      auto v = parse_driver_soname(e.name);
      if (v.empty()) continue;
      versions.push_back(v);
      where.push_back(util::printable(util::join(dir, e.name)));
    }
  }
  if (versions.empty()) return false;
  std::sort(versions.begin(), versions.end(),
            [](const std::string& a, const std::string& b) { return util::compare_versions(a, b) < 0; });
  versions.erase(std::unique(versions.begin(), versions.end()), versions.end());
  if (versions.size() > 1) {
    std::sort(where.begin(), where.end());
    ctx.warnings.add(fmt::format("NVIDIA driver libraries of {} versions in {}: {}; recording the newest, {}",
                                 versions.size(), ctx.root.path().string(), fmt::join(where, ", "),
                                 versions.back()));
  }
  info.source = "soname";
  info.driver = versions.back();
  return true;
}

bool is_version(std::string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  bool dot = false;
  char prev = 0;
  for (char c : s) {
    if (c == '.') {
      if (prev == '.') return false;
      dot = true;
    } else if (c < '0' || c > '9') {
      return false;
    }
    prev = c;
  }
  return dot;
}

}  // namespace

std::string parse_proc_driver_version(std::string_view proc_text) {
  for (auto line : util::lines(proc_text)) {
    if (!line.starts_with("NVRM version:")) continue;
    for (auto token : util::split(line, ' ')) {
      token = util::trim(token);
      if (is_version(token)) return std::string(token);
    }
  }
  return {};
}

std::string parse_driver_soname(std::string_view file_name) {
  for (std::string_view prefix : {"libnvidia-ml.so.", "libcuda.so."}) {
    if (!file_name.starts_with(prefix)) continue;
    auto rest = file_name.substr(prefix.size());
    if (is_version(rest)) return std::string(rest);
  }
  return {};
}

NvidiaInfo probe_nvidia(const Context& ctx, const NvmlOptions& options) {
  NvidiaInfo info;
  try {
    if (ctx.live()) {
      if (probe_nvml(ctx, options, info)) return info;
      if (probe_proc(ctx, info)) return info;
    }
    probe_sonames(ctx, info);
  } catch (const std::exception& e) {
    ctx.warnings.add(fmt::format("NVIDIA probe of {} failed: {}", ctx.root.path().string(), e.what()));
  }
  return info;
}

nlohmann::json to_json(const NvidiaInfo& info) {
  nlohmann::json j = {{"source", info.source}};
  if (!info.driver.empty()) j["driver"] = info.driver;
  if (!info.cuda_driver.empty()) j["cuda_driver"] = info.cuda_driver;
  if (info.source == "nvml") {
    auto gpus = nlohmann::json::array();
    for (const auto& g : info.gpus) {
      nlohmann::json o = {{"index", g.index}};
      if (!g.name.empty()) o["name"] = g.name;
      if (!g.uuid.empty()) o["uuid"] = g.uuid;
      if (!g.compute_capability.empty()) o["compute_capability"] = g.compute_capability;
      if (g.memory_bytes != 0) o["memory_bytes"] = g.memory_bytes;
      if (!g.mig_mode.empty()) o["mig_mode"] = g.mig_mode;
      if (!g.pci_bus_id.empty()) o["pci_bus_id"] = g.pci_bus_id;
      gpus.push_back(std::move(o));
    }
    j["gpus"] = std::move(gpus);
  }
  return j;
}

}  // namespace envsnap::probe
