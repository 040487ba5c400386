#include "envsnap/probe/cuda.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

// Where versions are looked for. A "group" is one installation: a toolkit directory,
// the distribution's /usr/include + /usr/lib, a conda environment or a Python site
// directory. In each group a component's version comes from its header if one is
// there, else from a wheel's dist-info, else from versioned library file names.
// Reported paths keep the group's (resolved) directory; duplicates are found by
// resolving every symlink inside the root.

namespace envsnap::probe {

namespace {

constexpr size_t max_header_bytes = 16u << 20;

std::string json_safe(std::string_view s) { return util::is_utf8(s) ? std::string(s) : util::printable(s); }

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

bool is_ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// "1.2.3" style: digits separated by single dots.
size_t dotted_parts(std::string_view s) {
  if (s.empty()) return 0;
  size_t parts = 0;
  for (auto part : util::split(s, '.')) {
    if (!all_digits(part)) return 0;
    ++parts;
  }
  return parts;
}

// The value token of "#define NAME VALUE" in a C header, following up to three
// levels of "#define NAME OTHER_NAME".
std::optional<std::string> define_value(std::string_view text, std::string_view name, int depth = 0) {
  size_t pos = 0;
  while ((pos = text.find(name, pos)) != std::string_view::npos) {
    size_t after = pos + name.size();
    size_t at = pos;
    pos = after;
    if (after < text.size() && is_ident_char(text[after])) continue;
    size_t i = at;
    auto skip_blank_back = [&] {
      while (i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t')) --i;
    };
    skip_blank_back();
    if (i == at || i < 6 || text.substr(i - 6, 6) != "define") continue;
    i -= 6;
    skip_blank_back();
    if (i == 0 || text[i - 1] != '#') continue;
    --i;
    skip_blank_back();
    if (i != 0 && text[i - 1] != '\n') continue;

    size_t v = after;
    while (v < text.size() && (text[v] == ' ' || text[v] == '\t')) ++v;
    size_t e = v;
    if (e < text.size() && text[e] == '"') {
      auto close = text.find('"', e + 1);
      if (close == std::string_view::npos || text.substr(e, close - e).find('\n') != std::string_view::npos)
        continue;
      return std::string(text.substr(e + 1, close - e - 1));
    }
    while (e < text.size() && is_ident_char(text[e])) ++e;
    auto value = text.substr(v, e - v);
    if (value.empty()) continue;
    if (!std::isdigit(static_cast<unsigned char>(value.front())) && depth < 3)
      return define_value(text, value, depth + 1);
    return std::string(value);
  }
  return std::nullopt;
}

// "MAJOR.MINOR.PATCH" from three numeric defines, or nullopt.
std::optional<std::string> version_from_defines(std::string_view text, std::string_view major,
                                                std::string_view minor, std::string_view patch) {
  auto a = define_value(text, major), b = define_value(text, minor), c = define_value(text, patch);
  if (!a || !b || !c || !all_digits(*a) || !all_digits(*b) || !all_digits(*c)) return std::nullopt;
  return fmt::format("{}.{}.{}", *a, *b, *c);
}

// A component other than the toolkit: which header, wheels and libraries carry it.
struct Library {
  std::vector<ComponentVersion> CudaStack::*list;
  std::string_view header;
  std::string_view defines;  // for warnings
  std::optional<std::string> (*from_header)(std::string_view);
  bool (*is_wheel)(std::string_view normalized_name);
  std::string_view soname_prefix;  // "libcudnn.so."
};

bool name_with_cuda_suffix(std::string_view name, std::string_view base) {
  if (name == base) return true;
  if (name.size() <= base.size() + 3 || name.substr(0, base.size()) != base) return false;
  auto rest = name.substr(base.size());
  return rest.substr(0, 3) == "_cu" && all_digits(rest.substr(3));
}

const std::array<Library, 3> libraries = {{
    {&CudaStack::cudnn, "cudnn_version.h", "CUDNN_MAJOR/MINOR/PATCHLEVEL",
     [](std::string_view t) { return version_from_defines(t, "CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"); },
     [](std::string_view n) { return name_with_cuda_suffix(n, "nvidia_cudnn"); }, "libcudnn.so."},
    {&CudaStack::nccl, "nccl.h", "NCCL_MAJOR/MINOR/PATCH",
     [](std::string_view t) { return version_from_defines(t, "NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"); },
     [](std::string_view n) { return name_with_cuda_suffix(n, "nvidia_nccl"); }, "libnccl.so."},
    {&CudaStack::tensorrt, "NvInferVersion.h", "NV_TENSORRT_MAJOR/MINOR/PATCH",
     [](std::string_view t) {
       auto v = version_from_defines(t, "NV_TENSORRT_MAJOR", "NV_TENSORRT_MINOR", "NV_TENSORRT_PATCH");
       if (!v) v = version_from_defines(t, "TRT_MAJOR_ENTERPRISE", "TRT_MINOR_ENTERPRISE", "TRT_PATCH_ENTERPRISE");
       return v;
     },
     [](std::string_view n) { return name_with_cuda_suffix(n, "tensorrt"); }, "libnvinfer.so."},
}};

bool is_runtime_wheel(std::string_view n) { return name_with_cuda_suffix(n, "nvidia_cuda_runtime"); }

struct DistInfo {
  std::string dir;   // root-relative .dist-info directory
  std::string name;  // normalized: lower case, '-' and '.' as '_'
  std::string version_in_name;
};

class Prober {
public:
  explicit Prober(const Context& ctx) : m_ctx(ctx) {}

  CudaStack run(const std::vector<std::string>& site_dirs);

private:
  const util::RootFs& root() const { return m_ctx.root; }
  void warn(std::string_view rel, std::string_view what) {
    m_ctx.warnings.add(fmt::format("{}: {}", util::printable(root().host_path(rel)), what));
  }

  std::optional<std::string> resolve(std::string_view rel) const;
  std::vector<std::string> unique_dirs(const std::vector<std::string>& dirs) const;
  const std::vector<util::DirEntry>& listing(const std::string& dir);
  std::vector<DistInfo> dist_infos(const std::string& dir);
  std::optional<std::string> dist_info_version(const DistInfo& d);
  std::optional<std::string> read_text(const std::string& rel);
  bool add(std::vector<ComponentVersion>& list, const std::string& key, ComponentVersion v);

  std::optional<ComponentVersion> toolkit_version(const std::string& dir, const std::vector<std::string>& dist_dirs);
  void scan_group(const std::vector<std::string>& include_dirs, const std::vector<std::string>& dist_dirs,
                  const std::vector<std::string>& lib_dirs);
  void local_toolkits();
  void pip_site(const std::string& site);
  void conda_env(const std::string& env);

  const Context& m_ctx;
  CudaStack m_out;
  std::set<std::string> m_seen;
  std::map<std::string, std::vector<util::DirEntry>> m_listings;
};

// Follows every symlink inside the root; nullopt when a component is missing.
std::optional<std::string> Prober::resolve(std::string_view rel) const {
  std::deque<std::string> todo;
  for (auto part : util::split(rel, '/'))
    if (!part.empty()) todo.emplace_back(part);
  std::vector<std::string> done;
  int hops = 0;
  while (!todo.empty()) {
    auto part = std::move(todo.front());
    todo.pop_front();
    if (part == ".") continue;
    if (part == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    std::string here;
    for (const auto& d : done) here += "/" + d;
    here += "/" + part;
    auto st = root().lstat(here);
    if (!st) return std::nullopt;
    if (!S_ISLNK(st->st_mode)) {
      done.push_back(std::move(part));
      continue;
    }
    if (++hops > 40) return std::nullopt;
    auto target = root().read_link(here);
    if (!target) return std::nullopt;
    if (!target->empty() && target->front() == '/') done.clear();
    auto parts = util::split(*target, '/');
    for (auto it = parts.rbegin(); it != parts.rend(); ++it)
      if (!it->empty()) todo.emplace_front(*it);
  }
  std::string out;
  for (const auto& d : done) out += "/" + d;
  return out.empty() ? std::string("/") : out;
}

const std::vector<util::DirEntry>& Prober::listing(const std::string& dir) {
  auto it = m_listings.find(dir);
  if (it != m_listings.end()) return it->second;
  auto entries = root().list_dir(dir);
  auto& slot = m_listings[dir];
  if (entries) slot = std::move(entries).value();
  return slot;
}

std::vector<DistInfo> Prober::dist_infos(const std::string& dir) {
  constexpr std::string_view suffix = ".dist-info";
  std::vector<DistInfo> out;
  for (const auto& e : listing(dir)) {
    std::string_view n = e.name;
    if (n.size() <= suffix.size() || n.substr(n.size() - suffix.size()) != suffix) continue;
    auto stem = n.substr(0, n.size() - suffix.size());
    auto dash = stem.find('-');
    if (dash == std::string_view::npos) continue;
    auto name = util::to_lower(stem.substr(0, dash));
    std::replace(name.begin(), name.end(), '-', '_');
    std::replace(name.begin(), name.end(), '.', '_');
    out.push_back({util::join(dir, n), std::move(name), std::string(stem.substr(dash + 1))});
  }
  return out;
}

std::optional<std::string> Prober::read_text(const std::string& rel) {
  auto text = root().read_file(rel, max_header_bytes);
  if (!text) {
    m_ctx.warnings.add(text.message());
    return std::nullopt;
  }
  return std::move(text).value();
}

// Version: from METADATA (the header block), else from the directory name.
std::optional<std::string> Prober::dist_info_version(const DistInfo& d) {
  auto metadata = util::join(d.dir, "METADATA");
  if (root().is_file(metadata)) {
    if (auto text = read_text(metadata)) {
      for (auto line : util::lines(*text)) {
        if (line.empty()) break;
        if (line.substr(0, 8) == "Version:") {
          auto v = util::trim(line.substr(8));
          if (!v.empty()) return json_safe(v);
        }
      }
      warn(metadata, "no Version field");
    }
  }
  if (!d.version_in_name.empty()) return json_safe(d.version_in_name);
  return std::nullopt;
}

bool Prober::add(std::vector<ComponentVersion>& list, const std::string& key, ComponentVersion v) {
  if (!m_seen.insert(key).second) return false;
  v.path = json_safe(v.path);
  list.push_back(std::move(v));
  return true;
}

// A toolkit directory's version, from the first source that has one.
std::optional<ComponentVersion> Prober::toolkit_version(const std::string& dir,
                                                        const std::vector<std::string>& dist_dirs) {
  ComponentVersion v;
  v.path = dir;
  auto version_json = util::join(dir, "version.json");
  if (root().is_file(version_json)) {
    if (auto text = read_text(version_json)) {
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.contains("cuda") && j["cuda"].is_object() &&
          j["cuda"].contains("version") && j["cuda"]["version"].is_string()) {
        v.version = json_safe(j["cuda"]["version"].get<std::string>());
        v.source = "version.json";
        return v;
      }
      warn(version_json, "no \"cuda\": {\"version\": ...} in it");
    }
  }
  auto version_txt = util::join(dir, "version.txt");
  if (root().is_file(version_txt)) {
    if (auto text = read_text(version_txt)) {
      constexpr std::string_view marker = "CUDA Version ";
      auto at = text->find(marker);
      if (at != std::string::npos) {
        auto rest = std::string_view(*text).substr(at + marker.size());
        auto end = rest.find_first_of(" \t\r\n");
        auto ver = rest.substr(0, end);
        if (dotted_parts(ver) > 0) {
          v.version = std::string(ver);
          v.source = "version.txt";
          return v;
        }
      }
      warn(version_txt, "no \"CUDA Version X.Y.Z\" in it");
    }
  }
  for (const auto& dd : dist_dirs) {
    for (const auto& d : dist_infos(dd)) {
      if (!is_runtime_wheel(d.name)) continue;
      if (auto ver = dist_info_version(d)) {
        v.version = *ver;
        v.source = "dist-info";
        return v;
      }
    }
  }
  auto header = util::join(dir, "include/cuda_runtime_api.h");
  if (root().is_file(header)) {
    if (auto text = read_text(header)) {
      auto cv = define_value(*text, "CUDART_VERSION");
      if (cv && all_digits(*cv) && cv->size() < 9) {
        auto n = std::stoul(*cv);
        v.version = fmt::format("{}.{}", n / 1000, (n % 1000) / 10);
        v.source = "header";
        return v;
      }
      warn(header, "no numeric CUDART_VERSION in it");
    }
  }
  for (auto lib : {"lib64", "lib"}) {
    constexpr std::string_view prefix = "libcudart.so.";
    std::string best;
    for (const auto& e : listing(util::join(dir, lib))) {
      std::string_view n = e.name;
      if (n.substr(0, prefix.size()) != prefix) continue;
      auto ver = n.substr(prefix.size());
      if (dotted_parts(ver) > dotted_parts(best)) best = ver;
    }
    if (!best.empty()) {
      v.version = best;
      v.source = "soname";
      return v;
    }
  }
  return std::nullopt;
}

void Prober::scan_group(const std::vector<std::string>& include_dirs, const std::vector<std::string>& dist_dirs,
                        const std::vector<std::string>& lib_dirs) {
  for (const auto& lib : libraries) {
    auto& list = m_out.*(lib.list);
    bool found = false;
    for (const auto& inc : include_dirs) {
      auto file = util::join(inc, lib.header);
      if (!root().is_file(file)) continue;
      auto real = resolve(file);
      if (!real) continue;
      found = true;
      if (m_seen.count(*real)) continue;
      auto text = read_text(file);
      if (!text) continue;
      if (auto ver = lib.from_header(*text))
        add(list, *real, {file, *ver, "header", ""});
      else
        warn(file, fmt::format("no numeric {} in it", lib.defines));
    }
    if (found) continue;
    for (const auto& dd : dist_dirs) {
      for (const auto& d : dist_infos(dd)) {
        if (!lib.is_wheel(d.name)) continue;
        found = true;
        auto key = resolve(d.dir).value_or(d.dir);
        if (m_seen.count(key)) continue;
        if (auto ver = dist_info_version(d)) {
          auto metadata = util::join(d.dir, "METADATA");
          add(list, key, {root().is_file(metadata) ? metadata : d.dir, *ver, "dist-info", ""});
        }
      }
    }
    if (found) continue;
    for (const auto& dir : lib_dirs) {
      for (const auto& e : listing(dir)) {
        std::string_view n = e.name;
        if (n.substr(0, lib.soname_prefix.size()) != lib.soname_prefix) continue;
        if (dotted_parts(n.substr(lib.soname_prefix.size())) < 2) continue;
        auto file = util::join(dir, n);
        auto real = resolve(file);
        if (!real || !root().is_file(*real)) continue;
        add(list, *real, {file, std::string(n.substr(lib.soname_prefix.size())), "soname", ""});
      }
    }
  }
}

// Resolved, existing directories, each once, in the given order.
std::vector<std::string> Prober::unique_dirs(const std::vector<std::string>& dirs) const {
  std::vector<std::string> out;
  for (const auto& d : dirs) {
    auto real = resolve(d);
    if (!real || !root().is_dir(*real)) continue;
    if (std::find(out.begin(), out.end(), *real) == out.end()) out.push_back(*real);
  }
  return out;
}

void Prober::local_toolkits() {
  std::vector<std::string> dirs;
  for (const auto& e : listing("/usr/local")) {
    if (e.name != "cuda" && e.name.rfind("cuda-", 0) != 0) continue;
    auto real = resolve(util::join("/usr/local", e.name));
    if (!real) {
      if (auto st = root().stat(util::join("/usr/local", e.name)); !st)
        warn(util::join("/usr/local", e.name), fmt::format("unusable ({}); not a CUDA toolkit", st.message()));
      continue;
    }
    if (!root().is_dir(*real)) continue;
    if (std::find(dirs.begin(), dirs.end(), *real) == dirs.end()) dirs.push_back(*real);
  }
  for (const auto& dir : dirs) {
    auto dist_dir = util::join(dir, "dist-info");
    auto v = toolkit_version(dir, {dist_dir});
    if (v) {
      v->kind = "local";
      add(m_out.toolkits, "toolkit:" + dir, std::move(*v));
    } else {
      warn(dir, "no CUDA version found (version.json, version.txt, dist-info, cuda_runtime_api.h, libcudart.so.N)");
    }
    scan_group({util::join(dir, "include")}, {dist_dir}, {util::join(dir, "lib64"), util::join(dir, "lib")});
  }
}

void Prober::pip_site(const std::string& site) {
  auto runtime_dir = util::join(site, "nvidia/cuda_runtime");
  bool has_runtime_dir = root().is_dir(runtime_dir);
  bool any_wheel = false;
  for (const auto& d : dist_infos(site)) {
    if (!is_runtime_wheel(d.name)) continue;
    any_wheel = true;
    auto ver = dist_info_version(d);
    if (!ver) continue;
    std::string path = d.dir;
    if (has_runtime_dir) {
      path = runtime_dir;
    } else {
      auto major = ver->substr(0, ver->find('.'));
      auto cu_dir = util::join(site, "nvidia/cu" + major);
      if (all_digits(major) && root().is_dir(cu_dir)) path = cu_dir;
    }
    add(m_out.toolkits, "toolkit:" + resolve(path).value_or(path), {path, *ver, "dist-info", "pip"});
  }
  if (!any_wheel && has_runtime_dir) {
    if (auto v = toolkit_version(runtime_dir, {})) {
      v->kind = "pip";
      add(m_out.toolkits, "toolkit:" + resolve(runtime_dir).value_or(runtime_dir), std::move(*v));
    }
  }
  scan_group({}, {site}, {});
}

void Prober::conda_env(const std::string& env) {
  auto meta = util::join(env, "conda-meta");
  if (!root().is_dir(meta)) return;
  // conda-meta/<name>-<version>-<build>.json
  std::map<std::string, std::string> records;
  for (const auto& e : listing(meta)) {
    std::string_view n = e.name;
    if (n.size() < 6 || n.substr(n.size() - 5) != ".json") continue;
    auto stem = n.substr(0, n.size() - 5);
    auto b = stem.rfind('-');
    if (b == std::string_view::npos) continue;
    auto v = stem.rfind('-', b - 1);
    if (v == std::string_view::npos || v == 0) continue;
    records.emplace(std::string(stem.substr(0, v)), util::join(meta, n));
  }
  for (auto name : {"cuda-cudart", "cuda-toolkit", "cudatoolkit"}) {
    auto it = records.find(name);
    if (it == records.end()) continue;
    auto text = read_text(it->second);
    if (!text) continue;
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("version") || !j["version"].is_string()) {
      warn(it->second, "no \"version\" string in it");
      continue;
    }
    add(m_out.toolkits, "toolkit:" + env, {env, json_safe(j["version"].get<std::string>()), "conda-meta", "conda"});
    break;
  }
  scan_group({util::join(env, "include")}, {}, {util::join(env, "lib")});
}

CudaStack Prober::run(const std::vector<std::string>& site_dirs) {
  local_toolkits();

  scan_group(unique_dirs({"/usr/include", "/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"}), {},
             unique_dirs({"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                          "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/lib64"}));

  for (auto base : {"/opt/conda", "/opt/miniconda3", "/opt/miniforge3", "/opt/anaconda3", "/opt/mambaforge"}) {
    auto real = resolve(base);
    if (!real || !root().is_dir(*real)) continue;
    conda_env(*real);
    auto envs = util::join(*real, "envs");
    for (const auto& e : listing(envs)) {
      auto env = resolve(util::join(envs, e.name));
      if (env && root().is_dir(*env)) conda_env(*env);
    }
  }

  for (const auto& site : unique_dirs(site_dirs)) pip_site(site);

  auto by_path = [](const ComponentVersion& a, const ComponentVersion& b) {
    return std::tie(a.path, a.version, a.kind) < std::tie(b.path, b.version, b.kind);
  };
  for (auto* list : {&m_out.toolkits, &m_out.cudnn, &m_out.nccl, &m_out.tensorrt})
    std::sort(list->begin(), list->end(), by_path);
  return std::move(m_out);
}

}  // namespace

CudaStack probe_cuda(const Context& ctx, const std::vector<std::string>& site_dirs) {
  try {
    return Prober(ctx).run(site_dirs);
  } catch (const std::exception& e) {
    ctx.warnings.add(fmt::format("{}: CUDA probe failed: {}", ctx.root.host_path("/"), e.what()));
    return {};
  }
}

nlohmann::json to_json(const CudaStack& stack) {
  auto list = [](const std::vector<ComponentVersion>& items, bool with_kind) {
    auto arr = nlohmann::json::array();
    for (const auto& c : items) {
      nlohmann::json o = {{"path", c.path}, {"version", c.version}, {"source", c.source}};
      if (with_kind && !c.kind.empty()) o["kind"] = c.kind;
      arr.push_back(std::move(o));
    }
    return arr;
  };
  return {{"toolkits", list(stack.toolkits, true)},
          {"cudnn", list(stack.cudnn, false)},
          {"nccl", list(stack.nccl, false)},
          {"tensorrt", list(stack.tensorrt, false)}};
}

}  // namespace envsnap::probe
