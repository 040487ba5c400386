#include "envsnap/probe/torch.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace {

// A root-relative path as the lock writes it: one leading '/', no trailing '/'.
std::string lock_path(std::string_view rel) {
  while (!rel.empty() && rel.back() == '/') rel.remove_suffix(1);
  while (!rel.empty() && rel.front() == '/') rel.remove_prefix(1);
  return "/" + std::string(rel);
}

bool is_identifier_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

// Top-level `name = 'text'`, `name: Optional[str] = "text"` and `name = None`
// assignments of a generated version.py; None maps to nullopt. Other values are skipped.
std::map<std::string, std::optional<std::string>, std::less<>> parse_assignments(std::string_view text) {
  std::map<std::string, std::optional<std::string>, std::less<>> out;
  for (auto line : util::lines(text)) {
    if (line.empty() || !(std::isalpha(static_cast<unsigned char>(line[0])) || line[0] == '_')) continue;
    size_t i = 0;
    while (i < line.size() && is_identifier_char(line[i])) ++i;
    std::string name(line.substr(0, i));
    auto rest = util::trim(line.substr(i));
    if (!rest.empty() && rest.front() == ':') {
      auto eq = rest.find('=');
      if (eq == std::string_view::npos) continue;
      rest = rest.substr(eq);
    }
    if (rest.empty() || rest.front() != '=' || rest.starts_with("==")) continue;
    auto value = util::trim(rest.substr(1));
    if (value == "None" || value.starts_with("None ") || value.starts_with("None#")) {
      out[name] = std::nullopt;
      continue;
    }
    if (value.empty() || (value.front() != '\'' && value.front() != '"')) continue;
    char quote = value.front();
    std::string s;
    bool closed = false;
    for (size_t k = 1; k < value.size(); ++k) {
      char c = value[k];
      if (c == '\\' && k + 1 < value.size()) {
        s.push_back(value[++k]);
      } else if (c == quote) {
        closed = true;
        break;
      } else {
        s.push_back(c);
      }
    }
    if (closed) out[name] = std::move(s);
  }
  return out;
}

std::string normalize_distribution_name(std::string_view name) {
  std::string out = util::to_lower(name);
  std::replace(out.begin(), out.end(), '_', '-');
  std::replace(out.begin(), out.end(), '.', '-');
  return out;
}

// The version pinned with == by a `Requires-Dist: nvidia-cudnn-cu*` line, if any.
std::optional<std::string> cudnn_pin(std::string_view metadata) {
  for (auto line : util::lines(metadata)) {
    if (util::trim(line).empty()) break;  // the headers end; the description follows
    constexpr std::string_view key = "Requires-Dist:";
    if (line.size() < key.size() || !util::iequals(line.substr(0, key.size()), key)) continue;
    auto value = util::trim(line.substr(key.size()));
    size_t i = 0;
    while (i < value.size() && (is_identifier_char(value[i]) || value[i] == '-' || value[i] == '.')) ++i;
    if (!normalize_distribution_name(value.substr(0, i)).starts_with("nvidia-cudnn-cu")) continue;
    auto spec = value.substr(i);
    auto semicolon = spec.find(';');
    if (semicolon != std::string_view::npos) spec = spec.substr(0, semicolon);
    auto eq = spec.find("==");
    if (eq == std::string_view::npos) continue;
    auto version = spec.substr(eq + 2);
    if (!version.empty() && version.front() == '=') continue;  // === arbitrary equality
    version = util::trim(version);
    auto stop = version.find_first_of(" ,)");
    if (stop != std::string_view::npos) version = version.substr(0, stop);
    if (version.empty() || version.find('*') != std::string_view::npos) continue;
    return std::string(version);
  }
  return std::nullopt;
}

// Reads torch-*.dist-info/METADATA of the site directory, preferring the one of `version`.
std::optional<std::string> read_cudnn(const Context& ctx, const std::string& site, const std::string& version) {
  auto entries = ctx.root.list_dir(site);
  if (!entries) {
    ctx.warnings.add(entries.message());
    return std::nullopt;
  }
  std::string chosen;
  for (const auto& e : *entries) {
    std::string_view n = e.name;
    if (!n.starts_with("torch-") || !n.ends_with(".dist-info")) continue;
    auto v = n.substr(6, n.size() - 6 - 10);
    if (chosen.empty() || v == version) chosen = e.name;
    if (v == version) break;
  }
  if (chosen.empty()) return std::nullopt;
  auto metadata_path = util::join(util::join(site, chosen), "METADATA");
  auto metadata = ctx.root.read_file(metadata_path, 16u << 20);
  if (!metadata) {
    ctx.warnings.add(metadata.message());
    return std::nullopt;
  }
  return cudnn_pin(*metadata);
}

bool is_shared_library_name(std::string_view name) {
  return name.ends_with(".so") || name.find(".so.") != std::string_view::npos;
}

// Root-relative paths of torch/lib/*.so*, each underlying file once.
std::vector<std::string> list_libraries(const Context& ctx, const std::string& lib_dir) {
  std::vector<std::string> out;
  if (!ctx.root.is_dir(lib_dir)) return out;
  auto entries = ctx.root.list_dir(lib_dir);
  if (!entries) {
    ctx.warnings.add(entries.message());
    return out;
  }
  std::set<std::pair<dev_t, ino_t>> seen;
  for (const auto& e : *entries) {
    if (!is_shared_library_name(e.name)) continue;
    if (e.type != util::FileType::regular && e.type != util::FileType::symlink) continue;
    auto path = util::join(lib_dir, e.name);
    auto st = ctx.root.stat(path);
    if (!st) {
      // A dangling link is no library: Debian's python3-torch links to libcaffe2_*
      // files that another package ships.
      if (e.type != util::FileType::symlink) ctx.warnings.add(st.message());
      continue;
    }
    if (!S_ISREG(st->st_mode)) continue;
    if (!seen.insert({st->st_dev, st->st_ino}).second) continue;
    out.push_back(std::move(path));
  }
  return out;
}

// Reads the fatbinaries of all paths, several at a time; results in the order of paths.
std::vector<std::optional<util::Result<CudaArchitectures>>> read_all(const Context& ctx,
                                                                      const std::vector<std::string>& paths) {
  std::vector<std::optional<util::Result<CudaArchitectures>>> results(paths.size());
  std::atomic<size_t> next{0};
  auto worker = [&]() noexcept {
    for (size_t i; (i = next.fetch_add(1)) < paths.size();) {
      try {
        results[i] = read_fatbin_architectures(ctx.root, paths[i]);
      } catch (const std::exception& e) {
        results[i] = util::Error{fmt::format("{}: {}", util::printable(ctx.root.host_path(paths[i])), e.what())};
      }
    }
  };
  size_t wanted = std::min<size_t>(paths.size(), std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < wanted; ++t) {
    try {
      pool.emplace_back(worker);
    } catch (const std::exception&) {
      break;  // fewer threads; this one does the rest
    }
  }
  worker();
  for (auto& t : pool) t.join();
  return results;
}

std::optional<TorchBuild> probe_one(const Context& ctx, const std::string& site) {
  auto torch_dir = util::join(site, "torch");
  if (!ctx.root.is_dir(torch_dir)) return std::nullopt;
  auto version_py = util::join(torch_dir, "version.py");
  if (!ctx.root.exists(version_py) && !ctx.root.exists(util::join(torch_dir, "__init__.py"))) return std::nullopt;

  TorchBuild build;
  build.path = lock_path(torch_dir);
  bool have_version_py = false;
  std::optional<std::string> cuda, hip;
  if (auto text = ctx.root.read_file(version_py, 1u << 20); text) {
    have_version_py = true;
    auto values = parse_assignments(*text);
    auto get = [&](std::string_view key) -> std::optional<std::string> {
      auto it = values.find(key);
      return it == values.end() ? std::nullopt : it->second;
    };
    build.version = get("__version__").value_or("");
    build.git_version = get("git_version").value_or("");
    cuda = get("cuda");
    hip = get("hip");
    if (build.version.empty())
      ctx.warnings.add(fmt::format("{}: no __version__", util::printable(ctx.root.host_path(version_py))));
  } else {
    ctx.warnings.add(text.message());
  }
  if (cuda) build.cuda = *cuda;
  if (auto pin = read_cudnn(ctx, site, build.version)) build.cudnn = *pin;

  auto paths = list_libraries(ctx, util::join(torch_dir, "lib"));
  auto results = read_all(ctx, paths);
  for (size_t i = 0; i < paths.size(); ++i) {
    auto& r = *results[i];
    if (!r) {
      ctx.warnings.add(r.message());
      continue;
    }
    if (r->empty()) continue;
    merge_into(build.architectures, *r);
    build.libraries.push_back({lock_path(paths[i]), std::move(r.value())});
  }
  std::sort(build.libraries.begin(), build.libraries.end(),
            [](const TorchLibrary& a, const TorchLibrary& b) { return a.path < b.path; });

  if (hip && !hip->empty()) build.build = "rocm";
  else if (cuda && !cuda->empty()) build.build = "cuda";
  else if (!have_version_py && !build.architectures.empty()) build.build = "cuda";
  else build.build = "cpu";
  return build;
}

}  // namespace

std::vector<TorchBuild> probe_torch(const Context& ctx, const std::vector<std::string>& site_dirs) {
  std::vector<TorchBuild> out;
  for (const auto& site : site_dirs) {
    try {
      if (auto build = probe_one(ctx, site)) out.push_back(std::move(*build));
    } catch (const std::exception& e) {
      ctx.warnings.add(fmt::format("{}: reading torch failed: {}", util::printable(ctx.root.host_path(site)), e.what()));
    }
  }
  return out;
}

nlohmann::json to_json(const TorchBuild& build) {
  nlohmann::json j = {{"path", build.path}, {"build", build.build}, {"architectures", to_json(build.architectures)}};
  if (!build.version.empty()) j["version"] = build.version;
  if (!build.cuda.empty()) j["cuda"] = build.cuda;
  if (!build.cudnn.empty()) j["cudnn"] = build.cudnn;
  if (!build.git_version.empty()) j["git_version"] = build.git_version;
  auto libraries = nlohmann::json::array();
  for (const auto& lib : build.libraries)
    libraries.push_back({{"path", lib.path}, {"sass", lib.architectures.sass}, {"ptx", lib.architectures.ptx}});
  j["libraries"] = std::move(libraries);
  return j;
}

}  // namespace envsnap::probe
