#include "envsnap/lock/diff.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "envsnap/probe/python.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::lock {

namespace {

using Json = nlohmann::json;
using Values = std::map<std::string, std::string>;  // key -> comparable value

const char* category_of(int rank) {
  static constexpr std::array names = {"", "gpu", "numeric", "python", "system", "project", "data"};
  return names.at(static_cast<size_t>(rank));
}

std::string str(const Json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return {};
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return {};
  return v.dump();
}


struct Differ {
  std::vector<Change> out;

  void add(int rank, std::string section, std::string name, std::string where, const std::string* a,
           const std::string* b) {
    Change c;
    c.rank = rank;
    c.category = category_of(rank);
    c.section = std::move(section);
    c.name = std::move(name);
    c.where = std::move(where);
    c.change = !a ? "added" : !b ? "removed" : "changed";
    if (a) c.old_value = *a;
    if (b) c.new_value = *b;
    out.push_back(std::move(c));
  }

  // Compares two keyed maps; rank_of decides the rank of each key, where_of its location.
  template <class RankOf, class NameOf, class WhereOf>
  void compare(const Values& a, const Values& b, const std::string& section, RankOf rank_of, NameOf name_of,
               WhereOf where_of) {
    auto ia = a.begin();
    auto ib = b.begin();
    while (ia != a.end() || ib != b.end()) {
      if (ib == b.end() || (ia != a.end() && ia->first < ib->first)) {
        add(rank_of(ia->first), section, name_of(ia->first), where_of(ia->first), &ia->second, nullptr);
        ++ia;
      } else if (ia == a.end() || ib->first < ia->first) {
        add(rank_of(ib->first), section, name_of(ib->first), where_of(ib->first), nullptr, &ib->second);
        ++ib;
      } else {
        if (ia->second != ib->second)
          add(rank_of(ia->first), section, name_of(ia->first), where_of(ia->first), &ia->second, &ib->second);
        ++ia;
        ++ib;
      }
    }
  }

  void compare_simple(const Values& a, const Values& b, int rank, const std::string& section) {
    auto r = [rank](const std::string&) { return rank; };
    auto n = [](const std::string& k) { return k; };
    auto w = [](const std::string&) { return std::string(); };
    compare(a, b, section, r, n, w);
  }
};

// Keys are "where\x1fname" for things that live at a path.
std::string key(const std::string& where, const std::string& name) { return where + '\x1f' + name; }
std::string key_where(const std::string& k) { return k.substr(0, k.find('\x1f')); }
std::string key_name(const std::string& k) { return k.substr(k.find('\x1f') + 1); }

std::string join_list(const Json& list) {
  std::string out;
  if (!list.is_array()) return out;
  for (auto& x : list) {
    if (!out.empty()) out += ' ';
    out += x.is_string() ? x.get<std::string>() : x.dump();
  }
  return out;
}

Values nvidia_values(const Json& lock) {
  Values v;
  const auto& n = lock.value("nvidia", Json::object());
  if (auto d = str(n, "driver"); !d.empty()) v["driver"] = d;
  if (auto d = str(n, "cuda_driver"); !d.empty()) v["cuda driver"] = d;
  for (auto& g : n.value("gpus", Json::array())) {
    v[fmt::format("gpu {}", g.value("index", 0))] =
        fmt::format("{} (compute {}, {} MiB, MIG {})", str(g, "name"), str(g, "compute_capability"),
                    g.value("memory_bytes", uint64_t{0}) >> 20, str(g, "mig_mode"));
  }
  return v;
}

Values cuda_values(const Json& lock) {
  Values v;
  const auto& c = lock.value("cuda", Json::object());
  for (auto [section, label] : {std::pair{"toolkits", "cuda"}, std::pair{"cudnn", "cudnn"},
                                std::pair{"nccl", "nccl"}, std::pair{"tensorrt", "tensorrt"}})
    for (auto& t : c.value(section, Json::array())) v[key(str(t, "path"), label)] = str(t, "version");
  return v;
}

Values torch_values(const Json& lock) {
  Values v;
  for (auto& t : lock.value("torch", Json::array())) {
    auto where = str(t, "path");
    for (auto field : {"version", "build", "cuda", "cudnn", "git_version"})
      if (auto s = str(t, field); !s.empty()) v[key(where, fmt::format("torch {}", field))] = s;
    const auto& arch = t.value("architectures", Json::object());
    auto sass = join_list(arch.value("sass", Json::array()));
    auto ptx = join_list(arch.value("ptx", Json::array()));
    v[key(where, "torch architectures")] = sass.empty() && ptx.empty() ? "none" : sass + (ptx.empty() ? "" : " + PTX " + ptx);
  }
  return v;
}

Values python_values(const Json& lock) {
  Values v;
  for (auto& e : lock.value("python", Json::object()).value("environments", Json::array())) {
    auto where = str(e, "path");
    v[key(where, "(python)")] = str(e, "python");
    for (auto& d : e.value("distributions", Json::array())) {
      auto value = str(d, "version");
      if (auto c = str(d, "vcs_commit"); !c.empty()) value += " @" + c.substr(0, 12);
      if (auto r = str(d, "record_digest"); !r.empty()) value += " [RECORD " + r.substr(7, 12) + "]";
      v[key(where, probe::normalize_dist_name(str(d, "name")))] = value;
    }
  }
  return v;
}

// A version string without the RECORD suffix, for display when only the version changed.
std::string display(const std::string& value) {
  auto p = value.find(" [RECORD ");
  return p == std::string::npos ? value : value.substr(0, p);
}

Values package_values(const Json& lock, const char* manager) {
  Values v;
  for (auto& p : lock.value("system", Json::object()).value("packages", Json::object()).value(manager, Json::array())) {
    auto name = str(p, "name");
    auto arch = str(p, "arch");
    v[key(arch, name)] = str(p, "version");
  }
  return v;
}

Values system_values(const Json& lock) {
  Values v;
  const auto& s = lock.value("system", Json::object());
  const auto& os = s.value("os", Json::object());
  if (!os.empty()) v["os"] = str(os, "pretty_name").empty() ? str(os, "id") + " " + str(os, "version_id") : str(os, "pretty_name");
  if (auto a = str(s, "arch"); !a.empty()) v["arch"] = a;
  if (auto g = str(s, "glibc"); !g.empty()) v["glibc"] = g;
  const auto& h = s.value("host", Json::object());
  if (auto k = str(h, "kernel"); !k.empty()) v["kernel"] = k;
  if (auto c = str(h, "cpu"); !c.empty()) v["cpu"] = c;
  if (h.contains("cpus")) v["cpus"] = h["cpus"].dump();
  if (h.contains("memory_bytes")) v["memory"] = fmt::format("{} MiB", h["memory_bytes"].get<uint64_t>() >> 20);
  if (h.contains("shm_bytes")) v["/dev/shm"] = fmt::format("{} MiB", h["shm_bytes"].get<uint64_t>() >> 20);
  return v;
}

Values env_values(const Json& lock) {
  Values v;
  const Json env = lock.value("env", Json::object());
  for (auto& [k, val] : env.items()) v[k] = val.is_string() ? val.get<std::string>() : val.dump();
  return v;
}

Values project_values(const Json& lock) {
  Values v;
  if (!lock.contains("project")) return v;
  const auto& p = lock["project"];
  for (auto field : {"path", "commit", "branch", "remote", "diff_digest"})
    if (auto s = str(p, field); !s.empty()) v[field] = s;
  if (p.contains("dirty")) v["dirty"] = p["dirty"].dump();
  return v;
}

Values data_values(const Json& lock) {
  Values v;
  for (auto& d : lock.value("data", Json::array()))
    v[key(str(d, "path"), str(d, "role"))] = str(d, "digest");
  return v;
}

// dpkg packages that are part of the GPU stack or of the numerics stack.
int package_rank(std::string_view name) {
  static constexpr std::array gpu = {"cuda-", "libcuda", "libcudnn", "libnccl", "nvidia-", "libnvidia-", "libcublas",
                                     "libcufft", "libcurand", "libcusolver", "libcusparse", "tensorrt", "libnvinfer",
                                     "python3-torch", "libtorch"};
  static constexpr std::array numeric = {"libopenblas", "libblas", "liblapack", "libmkl", "libatlas", "libopencv",
                                         "python3-numpy", "python3-scipy", "libeigen", "libgomp", "libomp"};
  for (auto p : gpu)
    if (name.starts_with(p)) return 1;
  for (auto p : numeric)
    if (name.starts_with(p)) return 2;
  return 4;
}

}  // namespace

int python_distribution_rank(std::string_view name) {
  auto n = probe::normalize_dist_name(name);
  static constexpr std::array torch = {"torch", "torchvision", "torchaudio", "pytorch-triton", "triton"};
  for (auto t : torch)
    if (n == t) return 1;
  if (n.starts_with("nvidia-")) return 1;
  static constexpr std::array numeric_exact = {"numpy", "scipy", "pillow", "pillow-simd", "numba", "scikit-learn",
                                               "scikit-image", "pandas", "albumentations", "llvmlite", "mkl",
                                               "intel-openmp", "timm", "ultralytics", "safetensors", "einops"};
  static constexpr std::array numeric_prefix = {"opencv", "cupy", "jax", "onnxruntime", "onnx", "tensorrt", "xformers",
                                                "flash-attn", "apex", "torchmetrics"};
  for (auto e : numeric_exact)
    if (n == e) return 2;
  for (auto p : numeric_prefix)
    if (n.starts_with(p)) return 2;
  return 3;
}

std::vector<Change> diff_locks(const Json& a, const Json& b) {
  Differ d;
  auto plain = [](const std::string& k) { return k; };
  auto none = [](const std::string&) { return std::string(); };
  auto at = [](int r) { return [r](const std::string&) { return r; }; };

  d.compare_simple(nvidia_values(a), nvidia_values(b), 1, "nvidia");
  d.compare(cuda_values(a), cuda_values(b), "cuda", at(1), key_name, key_where);
  d.compare(torch_values(a), torch_values(b), "torch", at(1), key_name, key_where);
  d.compare(env_values(a), env_values(b), "env", at(2), plain, none);
  d.compare(
      python_values(a), python_values(b), "python",
      [](const std::string& k) { return key_name(k) == "(python)" ? 3 : python_distribution_rank(key_name(k)); },
      key_name, key_where);
  for (auto* m : {"dpkg", "apk"})
    d.compare(package_values(a, m), package_values(b, m), m,
              [](const std::string& k) { return package_rank(key_name(k)); }, key_name, key_where);
  d.compare_simple(system_values(a), system_values(b), 4, "system");
  d.compare_simple(project_values(a), project_values(b), 5, "project");
  d.compare(data_values(a), data_values(b), "data", at(6), key_where, none);

  for (auto& c : d.out) {
    if (c.section != "python") continue;
    // Show versions plainly when they differ; the RECORD digest only when it alone changed.
    if (c.old_value && c.new_value && display(*c.old_value) != display(*c.new_value)) {
      c.old_value = display(*c.old_value);
      c.new_value = display(*c.new_value);
    }
  }
  std::stable_sort(d.out.begin(), d.out.end(), [](const Change& x, const Change& y) {
    return std::tie(x.rank, x.section, x.name, x.where) < std::tie(y.rank, y.section, y.name, y.where);
  });
  return d.out;
}

Json to_json(const std::vector<Change>& changes) {
  Json list = Json::array();
  for (auto& c : changes) {
    list.push_back({{"rank", c.rank},
                    {"category", c.category},
                    {"section", c.section},
                    {"name", c.name},
                    {"where", c.where},
                    {"change", c.change},
                    {"old", c.old_value ? Json(*c.old_value) : Json(nullptr)},
                    {"new", c.new_value ? Json(*c.new_value) : Json(nullptr)}});
  }
  return {{"equal", changes.empty()}, {"changes", std::move(list)}};
}

std::string format_changes(const std::vector<Change>& changes) {
  std::string out;
  for (auto& c : changes) {
    out += fmt::format("  [{} {}] {} {}", c.rank, c.category, c.section, c.name);
    if (!c.where.empty()) out += fmt::format(" ({})", c.where);
    out += fmt::format(": {} -> {}\n", c.old_value.value_or("(absent)"), c.new_value.value_or("(absent)"));
  }
  return out;
}

}  // namespace envsnap::lock
