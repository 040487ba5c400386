#include "envsnap/lock/show.hpp"

#include <fmt/format.h>

#include "envsnap/lock/diff.hpp"

namespace envsnap::lock {

using Json = nlohmann::json;

static std::string s(const Json& j, const char* key, const char* fallback = "") {
  if (j.is_object() && j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
  return fallback;
}

static std::string join(const Json& list) {
  std::string out;
  for (auto& x : list) out += (out.empty() ? "" : " ") + x.get<std::string>();
  return out;
}

static std::string gib(uint64_t bytes) { return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1ull << 30)); }

std::string summarize(const LockDocument& doc) {
  const Json& l = doc.lock;
  std::string o;
  auto row = [&o](std::string_view label, const std::string& value) { o += fmt::format("  {:<14} {}\n", label, value); };

  o += fmt::format("lock {}\n", doc.digest);
  if (doc.captured.is_object())
    o += fmt::format("captured {} from {} by envsnap {}\n", s(doc.captured, "at"), s(doc.captured, "root"),
                     s(doc.captured, "envsnap"));

  o += "\nGPU stack\n";
  const Json& n = l.value("nvidia", Json::object());
  if (auto d = s(n, "driver"); !d.empty())
    row("NVIDIA driver", fmt::format("{} (from {}){}", d, s(n, "source"),
                                     s(n, "cuda_driver").empty() ? "" : ", supports CUDA " + s(n, "cuda_driver")));
  else
    row("NVIDIA driver", "none found");
  for (auto& g : n.value("gpus", Json::array()))
    row(fmt::format("GPU {}", g.value("index", 0)),
        fmt::format("{}, compute {}, {}, MIG {}, {}", s(g, "name"), s(g, "compute_capability"),
                    gib(g.value("memory_bytes", uint64_t{0})), s(g, "mig_mode"), s(g, "pci_bus_id")));
  const Json& c = l.value("cuda", Json::object());
  for (auto [section, label] : {std::pair{"toolkits", "CUDA"}, std::pair{"cudnn", "cuDNN"},
                                std::pair{"nccl", "NCCL"}, std::pair{"tensorrt", "TensorRT"}}) {
    auto items = c.value(section, Json::array());
    if (items.empty() && std::string_view(section) != "tensorrt") row(label, "none found");
    for (auto& t : items)
      row(label, fmt::format("{}  {} ({}{})", s(t, "version"), s(t, "path"), s(t, "kind").empty() ? "" : s(t, "kind") + ", ",
                             s(t, "source")));
  }
  auto torch = l.value("torch", Json::array());
  if (torch.empty()) row("PyTorch", "none found");
  for (auto& t : torch) {
    std::string build = s(t, "build");
    std::string detail = build == "cpu" ? "cpu build, no GPU code" : fmt::format("{} build", build);
    if (!s(t, "cuda").empty()) detail += ", CUDA " + s(t, "cuda");
    if (!s(t, "cudnn").empty()) detail += ", cuDNN " + s(t, "cudnn");
    row("PyTorch", fmt::format("{}  {} ({})", s(t, "version"), s(t, "path"), detail));
    const Json& a = t.value("architectures", Json::object());
    auto sass = join(a.value("sass", Json::array()));
    auto ptx = join(a.value("ptx", Json::array()));
    if (!sass.empty() || !ptx.empty())
      row("architectures", sass + (ptx.empty() ? "" : "  PTX: " + ptx));
  }

  o += "\nPython\n";
  for (auto& e : l.value("python", Json::object()).value("environments", Json::array())) {
    auto dists = e.value("distributions", Json::array());
    o += fmt::format("  {} ({}, Python {}): {} distributions\n", s(e, "path"), s(e, "kind"), s(e, "python"), dists.size());
    std::string key;
    for (auto& d : dists)
      if (python_distribution_rank(s(d, "name")) <= 2) key += fmt::format("{}{} {}", key.empty() ? "" : ", ", s(d, "name"), s(d, "version"));
    if (!key.empty()) o += fmt::format("    {}\n", key);
  }

  o += "\nSystem\n";
  const Json& sys = l.value("system", Json::object());
  const Json& os = sys.value("os", Json::object());
  row("OS", s(os, "pretty_name", "unknown"));
  row("arch", s(sys, "arch", "unknown"));
  row("glibc", s(sys, "glibc", "unknown"));
  const Json& pk = sys.value("packages", Json::object());
  for (auto& [m, list] : pk.items())
    if (!list.empty()) row(m, fmt::format("{} packages", list.size()));
  if (sys.contains("host")) {
    const Json& h = sys["host"];
    row("kernel", s(h, "kernel"));
    row("CPU", fmt::format("{} ({} cores)", s(h, "cpu"), h.value("cpus", 0)));
    row("memory", fmt::format("{}, /dev/shm {}", gib(h.value("memory_bytes", uint64_t{0})), gib(h.value("shm_bytes", uint64_t{0}))));
  }

  if (l.contains("project")) {
    const Json& p = l["project"];
    o += "\nProject\n";
    row("path", s(p, "path"));
    if (!s(p, "commit").empty())
      row("git", fmt::format("{} on {}{}", s(p, "commit"), s(p, "branch", "(detached)"),
                             p.value("dirty", false) ? ", dirty " + s(p, "diff_digest") : ", clean"));
    if (!s(p, "remote").empty()) row("remote", s(p, "remote"));
  }
  auto data = l.value("data", Json::array());
  if (!data.empty()) {
    o += "\nData\n";
    for (auto& d : data)
      o += fmt::format("  {} {}: {} files, {} bytes, {}\n", s(d, "role"), s(d, "path"), d.value("files", uint64_t{0}),
                       d.value("bytes", uint64_t{0}), s(d, "digest"));
  }
  auto env = l.value("env", Json::object());
  if (!env.empty()) {
    o += "\nEnvironment\n";
    for (auto& [k, v] : env.items()) o += fmt::format("  {}={}\n", k, v.get<std::string>());
  }
  auto warnings = doc.captured.is_object() ? doc.captured.value("warnings", Json::array()) : Json::array();
  if (!warnings.empty()) o += fmt::format("\n{} warnings at capture (see --json)\n", warnings.size());
  return o;
}

}  // namespace envsnap::lock
