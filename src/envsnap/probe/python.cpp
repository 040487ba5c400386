#include "envsnap/probe/python.hpp"

#include "envsnap/probe/environment.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace {

using util::DirEntry;
using util::FileType;
using util::join;
using util::printable;
using util::RootFs;

// Directories the venv search never enters: package trees, VCS data and caches that
// are large and never hold a pyvenv.cfg worth finding.
const std::set<std::string, std::less<>> k_walk_skip = {
    "site-packages", "dist-packages", "node_modules", ".git", ".hg", ".svn", "__pycache__",
    ".cache", ".pyenv", ".npm", ".cargo", ".rustup"};
const std::vector<std::string> k_conda_names = {"conda", "miniconda3", "anaconda3", "miniforge3", "mambaforge"};
// A directory with more subdirectories than this is data, not a project: the venv
// search does not look inside them.
constexpr size_t k_walk_max_subdirs = 1000;
constexpr int k_walk_depth = 3;
constexpr size_t k_max_metadata_bytes = 32u << 20;
constexpr size_t k_max_record_bytes = 256u << 20;

bool is_conda_name(std::string_view name) {
  return std::find(k_conda_names.begin(), k_conda_names.end(), name) != k_conda_names.end();
}

struct Candidate {
  std::string path, kind, python;
};

std::string_view basename(std::string_view path) {
  auto pos = path.rfind('/');
  return pos == std::string_view::npos ? path : path.substr(pos + 1);
}

std::string dirname(std::string_view path) {
  auto pos = path.rfind('/');
  if (pos == std::string_view::npos || pos == 0) return "/";
  return std::string(path.substr(0, pos));
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "python3.11" -> "3.11"; nullopt for anything else.
std::optional<std::string> version_of_python_name(std::string_view name) {
  if (!name.starts_with("python")) return std::nullopt;
  auto v = name.substr(6);
  auto dot = v.find('.');
  if (dot == std::string_view::npos || !all_digits(v.substr(0, dot)) || !all_digits(v.substr(dot + 1)))
    return std::nullopt;
  return std::string(v);
}

// Orders "3.9" before "3.11".
bool python_version_less(const std::string& a, const std::string& b) {
  auto parts = [](const std::string& v) {
    std::vector<long> out;
    for (auto p : util::split(v, '.')) out.push_back(all_digits(p) && p.size() < 10 ? std::stol(std::string(p)) : 0);
    return out;
  };
  return parts(a) < parts(b);
}

// "3.11.2.final.0" -> "3.11.2": the leading numeric components, at most three.
std::string clean_python_version(std::string_view v) {
  std::string out;
  int n = 0;
  for (auto p : util::split(util::trim(v), '.')) {
    if (!all_digits(p) || n == 3) break;
    if (n++) out += '.';
    out += p;
  }
  return out;
}

// Normalises a root-relative path lexically: leading '/', no empty, "." or ".." parts.
std::string normalize_path(std::string_view p) {
  std::vector<std::string_view> parts;
  for (auto part : util::split(p, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (auto part : parts) {
    out += '/';
    out += part;
  }
  return out.empty() ? "/" : out;
}

bool entry_is_dir(const RootFs& fs, std::string_view parent, const DirEntry& e) {
  if (e.type == FileType::directory) return true;
  return e.type == FileType::symlink && fs.is_dir(join(parent, e.name));
}

std::string header(const std::vector<std::pair<std::string, std::string>>& headers, std::string_view key) {
  for (const auto& [k, v] : headers)
    if (util::iequals(k, key)) return v;
  return {};
}

class Finder {
public:
  explicit Finder(const Context& ctx) : m_ctx(ctx), m_fs(ctx.root) {}

  std::vector<Candidate> find(const std::vector<std::string>& extra_paths) {
    system();
    local();
    std::vector<std::string> bases = {"/opt", "/root"};
    if (auto home = m_fs.list_dir("/home"))
      for (const auto& e : *home)
        if (entry_is_dir(m_fs, "/home", e)) bases.push_back(join("/home", e.name));
    for (const auto& base : bases) {
      auto entries = m_fs.list_dir(base);
      if (!entries) continue;
      conda(base, *entries);
      if (base != "/opt") pyenv(base);
      walk(base, *entries, 0);
    }
    for (const auto& p : extra_paths) extra(p);
    return std::move(m_out);
  }

private:
  void add(std::string path, std::string kind, std::string python) {
    m_out.push_back({std::move(path), std::move(kind), std::move(python)});
  }

  // (lib/pythonX.Y path, "X.Y") for each pythonX.Y directory under lib.
  std::vector<std::pair<std::string, std::string>> python_dirs(const std::string& lib) {
    std::vector<std::pair<std::string, std::string>> out;
    auto entries = m_fs.list_dir(lib);
    if (!entries) return out;
    for (const auto& e : *entries) {
      auto v = version_of_python_name(e.name);
      if (v && entry_is_dir(m_fs, lib, e)) out.emplace_back(join(lib, e.name), *v);
    }
    return out;
  }

  // Version named by the interpreter link chain starting at path (python3 -> python3.11).
  std::optional<std::string> version_from_link(std::string path) {
    for (int i = 0; i < 8; ++i) {
      if (auto v = version_of_python_name(basename(path))) return v;
      auto target = m_fs.read_link(path);
      if (!target) return std::nullopt;
      path = target->starts_with('/') ? normalize_path(*target) : normalize_path(join(dirname(path), *target));
    }
    return std::nullopt;
  }

  void system() {
    std::string highest;
    for (const auto& [dir, version] : python_dirs("/usr/lib")) {
      add(join(dir, "dist-packages"), "system", version);
      add(join(dir, "site-packages"), "system", version);
      if (version.starts_with("3.") && (highest.empty() || python_version_less(highest, version))) highest = version;
    }
    auto version = version_from_link("/usr/bin/python3");
    add("/usr/lib/python3/dist-packages", "system", version ? *version : highest);
  }

  void local() {
    for (const auto& [dir, version] : python_dirs("/usr/local/lib")) {
      add(join(dir, "dist-packages"), "local", version);
      add(join(dir, "site-packages"), "local", version);
    }
  }

  void site_packages_of_prefix(const std::string& prefix, const std::string& kind, const std::string& python) {
    for (const auto& [dir, version] : python_dirs(join(prefix, "lib")))
      add(join(dir, "site-packages"), kind, python.empty() ? version : python);
  }

  void conda(const std::string& base, const std::vector<DirEntry>& entries) {
    for (const auto& e : entries) {
      if (!is_conda_name(e.name) || !entry_is_dir(m_fs, base, e)) continue;
      auto root = join(base, e.name);
      site_packages_of_prefix(root, "conda", "");
      auto envs_dir = join(root, "envs");
      if (auto envs = m_fs.list_dir(envs_dir))
        for (const auto& env : *envs)
          if (entry_is_dir(m_fs, envs_dir, env)) site_packages_of_prefix(join(envs_dir, env.name), "conda", "");
    }
  }

  void pyenv(const std::string& base) {
    auto versions_dir = join(base, ".pyenv/versions");
    auto versions = m_fs.list_dir(versions_dir);
    if (!versions) return;
    for (const auto& v : *versions)
      if (entry_is_dir(m_fs, versions_dir, v)) site_packages_of_prefix(join(versions_dir, v.name), "local", "");
  }

  std::string pyvenv_version(const std::string& cfg_path) {
    auto text = m_fs.read_file(cfg_path, 1u << 20);
    if (!text) {
      m_ctx.warnings.add(fmt::format("{}: cannot read ({})", printable(cfg_path), text.message()));
      return {};
    }
    std::string version, version_info;
    for (auto line : util::lines(*text)) {
      auto eq = line.find('=');
      if (eq == std::string_view::npos) continue;
      auto key = util::trim(line.substr(0, eq));
      auto value = clean_python_version(line.substr(eq + 1));
      if (key == "version") version = value;
      else if (key == "version_info") version_info = value;
    }
    return version.empty() ? version_info : version;
  }

  void venv(const std::string& dir) { site_packages_of_prefix(dir, "venv", pyvenv_version(join(dir, "pyvenv.cfg"))); }

  // Looks for pyvenv.cfg in the directories up to k_walk_depth below base: directories
  // above the last level are listed, those of the last level only probed for the file.
  void walk(const std::string& dir, const std::vector<DirEntry>& entries, int depth) {
    if (depth > 0) {
      for (const auto& e : entries) {
        if (e.name == "pyvenv.cfg" && e.type != FileType::directory) return venv(dir);
        if (e.name == "conda-meta") return;
      }
    }
    std::vector<std::string> subdirs;
    for (const auto& e : entries)
      if (e.type == FileType::directory && !k_walk_skip.contains(e.name) && !(depth == 0 && is_conda_name(e.name)))
        subdirs.push_back(join(dir, e.name));
    if (subdirs.size() > k_walk_max_subdirs) return;
    for (const auto& sub : subdirs) {
      if (depth + 1 == k_walk_depth) {
        if (m_fs.is_file(join(sub, "pyvenv.cfg"))) venv(sub);
      } else if (auto sub_entries = m_fs.list_dir(sub)) {
        walk(sub, *sub_entries, depth + 1);
      }
    }
  }

  void extra(const std::string& given) {
    auto path = normalize_path(given);
    auto st = m_fs.stat(path);
    if (!st) {
      m_ctx.warnings.add(fmt::format("--python {}: not found in the root ({})", printable(given), st.message()));
      return;
    }
    size_t before = m_out.size();
    if (S_ISDIR(st->st_mode) && looks_like_site_packages(path)) {
      std::string python;
      for (auto part : util::split(path, '/'))
        if (auto v = version_of_python_name(part)) python = *v;
      add(path, "extra", python);
    } else if (S_ISDIR(st->st_mode)) {
      extra_prefix(path, "");
    } else {
      auto bin = dirname(path);
      auto version = version_from_link(path);
      extra_prefix(basename(bin) == "bin" ? dirname(bin) : bin, version ? *version : "");
    }
    auto found = std::count_if(m_out.begin() + static_cast<ptrdiff_t>(before), m_out.end(),
                               [&](const Candidate& c) { return m_fs.is_dir(c.path); });
    if (found == 0)
      m_ctx.warnings.add(fmt::format("--python {}: no site-packages or dist-packages directory found", printable(given)));
  }

  bool looks_like_site_packages(const std::string& path) {
    auto name = basename(path);
    if (name.ends_with("-packages")) return true;
    auto entries = m_fs.list_dir(path);
    if (!entries) return false;
    return std::any_of(entries->begin(), entries->end(), [](const DirEntry& e) {
      return e.name.ends_with(".dist-info") || e.name.ends_with(".egg-info");
    });
  }

  void extra_prefix(const std::string& prefix, const std::string& interpreter_version) {
    std::string cfg_version;
    if (m_fs.is_file(join(prefix, "pyvenv.cfg"))) cfg_version = pyvenv_version(join(prefix, "pyvenv.cfg"));
    for (const auto& [dir, version] : python_dirs(join(prefix, "lib"))) {
      if (!interpreter_version.empty() && interpreter_version != version) continue;
      auto python = cfg_version.empty() ? version : cfg_version;
      add(join(dir, "site-packages"), "extra", python);
      add(join(dir, "dist-packages"), "extra", python);
    }
    if (prefix == "/usr") {
      auto version = interpreter_version.empty() ? version_from_link("/usr/bin/python3") : interpreter_version;
      add("/usr/lib/python3/dist-packages", "extra", version ? *version : "");
    }
  }

  const Context& m_ctx;
  const RootFs& m_fs;
  std::vector<Candidate> m_out;
};

// Number of symlinks among the components of path; the path with fewest is the one an
// environment reached twice is listed under.
int symlinks_along(const RootFs& fs, const std::string& path) {
  int n = 0;
  for (size_t pos = path.find('/', 1);; pos = path.find('/', pos + 1)) {
    auto prefix = path.substr(0, pos);
    auto st = fs.lstat(prefix);
    if (st && S_ISLNK(st->st_mode)) ++n;
    if (pos == std::string::npos) break;
  }
  return n;
}

std::vector<Candidate> deduplicate(const RootFs& fs, std::vector<Candidate> candidates) {
  std::map<std::pair<dev_t, ino_t>, std::vector<Candidate>> groups;
  for (auto& c : candidates) {
    auto st = fs.stat(c.path);
    if (!st || !S_ISDIR(st->st_mode)) continue;
    groups[{st->st_dev, st->st_ino}].push_back(std::move(c));
  }
  std::vector<Candidate> out;
  for (auto& [key, group] : groups) {
    if (group.size() == 1) {
      out.push_back(std::move(group.front()));
      continue;
    }
    auto rank = [&](const Candidate& c) { return std::make_tuple(symlinks_along(fs, c.path), c.kind == "extra", c.path); };
    std::vector<std::tuple<int, bool, std::string>> ranks;
    for (const auto& c : group) ranks.push_back(rank(c));
    auto best = static_cast<size_t>(std::min_element(ranks.begin(), ranks.end()) - ranks.begin());
    Candidate winner = group[best];
    for (const auto& c : group)
      if (winner.python.empty() && !c.python.empty()) winner.python = c.python;
    out.push_back(std::move(winner));
  }
  std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) { return a.path < b.path; });
  return out;
}

class DistReader {
public:
  DistReader(const Context& ctx, const std::string& env_path)
      : m_ctx(ctx),
        m_fs(ctx.root),
        m_debian(env_path.starts_with("/usr/lib/") && env_path.find("dist-packages") != std::string::npos) {}

  // A .dist-info or .egg-info directory.
  std::optional<Distribution> read_dir(const std::string& dir, bool egg) {
    std::set<std::string, std::less<>> files;
    if (auto entries = m_fs.list_dir(dir)) {
      for (const auto& e : *entries)
        if (e.type != FileType::directory) files.insert(e.name);
    } else {
      m_ctx.warnings.add(fmt::format("{}: cannot list ({})", printable(dir), entries.message()));
      return std::nullopt;
    }
    const char* meta_name = egg ? "PKG-INFO" : "METADATA";
    auto meta_path = join(dir, meta_name);
    std::optional<util::Result<std::string>> text;
    if (files.contains(meta_name)) text.emplace(m_fs.read_file(meta_path, k_max_metadata_bytes));
    auto dist = name_version(meta_path, text, basename(dir), egg);
    if (!dist) return std::nullopt;

    if (files.contains("INSTALLER")) {
      auto installer_path = join(dir, "INSTALLER");
      if (auto installer = m_fs.read_file(installer_path, 1u << 20))
        dist->installer = std::string(util::trim(*installer));
      else
        m_ctx.warnings.add(fmt::format("{}: cannot read ({})", printable(installer_path), installer.message()));
    }
    if (dist->installer.empty() && egg && m_debian) dist->installer = "debian";
    if (files.contains("RECORD")) {
      auto record_path = join(dir, "RECORD");
      if (auto record = m_fs.read_file(record_path, k_max_record_bytes))
        dist->record_digest = "sha256:" + util::sha256_hex(*record);
      else
        m_ctx.warnings.add(fmt::format("{}: cannot read ({})", printable(record_path), record.message()));
    }
    if (files.contains("direct_url.json")) read_direct_url(join(dir, "direct_url.json"), *dist);
    return dist;
  }

  // A single-file .egg-info: the file is the PKG-INFO.
  std::optional<Distribution> read_egg_file(const std::string& path) {
    std::optional<util::Result<std::string>> text;
    text.emplace(m_fs.read_file(path, k_max_metadata_bytes));
    auto dist = name_version(path, text, basename(path), true);
    if (dist && m_debian) dist->installer = "debian";
    return dist;
  }

private:
  // Name and version from the metadata headers, else from the directory name (with a warning).
  std::optional<Distribution> name_version(const std::string& meta_path,
                                           const std::optional<util::Result<std::string>>& text,
                                           std::string_view dir_name, bool egg) {
    Distribution d;
    std::string problem;
    if (!text) {
      problem = "missing";
    } else if (!*text) {
      problem = fmt::format("cannot read ({})", text->message());
    } else if (text->value().find('\0') != std::string::npos) {
      problem = "binary content, not metadata";
    } else {
      auto headers = parse_metadata_headers(text->value());
      d.name = std::string(util::trim(header(headers, "Name")));
      d.version = std::string(util::trim(header(headers, "Version")));
      if (d.name.empty() && d.version.empty()) problem = "no Name or Version header";
      else if (d.name.empty()) problem = "no Name header";
      else if (d.version.empty()) problem = "no Version header";
    }
    if (problem.empty()) return d;

    auto stem = dir_name.substr(0, dir_name.size() - (egg ? std::strlen(".egg-info") : std::strlen(".dist-info")));
    auto parts = util::split(stem, '-');
    std::string dir_dist_name(parts[0]);
    std::string dir_version = parts.size() > 1 ? std::string(parts[1]) : std::string();
    std::string taken = d.name.empty() && d.version.empty() ? "name and version" : d.name.empty() ? "name" : "version";
    if (d.name.empty()) d.name = dir_dist_name;
    if (d.version.empty()) d.version = dir_version;
    if (d.name.empty() || d.version.empty()) {
      std::string missing = d.name.empty() && d.version.empty() ? "name and version" : d.name.empty() ? "name" : "version";
      m_ctx.warnings.add(fmt::format("{}: {}; no {} in the directory name either, distribution skipped",
                                     printable(meta_path), problem, missing));
      return std::nullopt;
    }
    m_ctx.warnings.add(fmt::format("{}: {}; {} taken from the directory name", printable(meta_path), problem, taken));
    return d;
  }

  void read_direct_url(const std::string& path, Distribution& dist) {
    auto text = m_fs.read_file(path, 1u << 20);
    if (!text) {
      m_ctx.warnings.add(fmt::format("{}: cannot read ({})", printable(path), text.message()));
      return;
    }
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      m_ctx.warnings.add(fmt::format("{}: not a JSON object", printable(path)));
      return;
    }
    if (auto it = j.find("url"); it != j.end() && it->is_string()) dist.direct_url = remove_url_credentials(it->get<std::string>());
    if (auto vcs = j.find("vcs_info"); vcs != j.end() && vcs->is_object())
      if (auto commit = vcs->find("commit_id"); commit != vcs->end() && commit->is_string())
        dist.vcs_commit = commit->get<std::string>();
  }

  const Context& m_ctx;
  const RootFs& m_fs;
  bool m_debian;
};

std::vector<Distribution> read_distributions(const Context& ctx, const std::string& env_path) {
  std::vector<Distribution> out;
  auto entries = ctx.root.list_dir(env_path);
  if (!entries) {
    ctx.warnings.add(fmt::format("{}: cannot list ({})", printable(env_path), entries.message()));
    return out;
  }
  DistReader reader(ctx, env_path);
  for (const auto& e : *entries) {
    bool dist_info = e.name.ends_with(".dist-info") && e.name.size() > std::strlen(".dist-info");
    bool egg_info = e.name.ends_with(".egg-info") && e.name.size() > std::strlen(".egg-info");
    if (!dist_info && !egg_info) continue;
    auto path = join(env_path, e.name);
    FileType type = e.type;
    if (type == FileType::symlink) {
      auto st = ctx.root.stat(path);
      if (!st) ctx.warnings.add(fmt::format("{}: unusable symlink ({}); distribution skipped", printable(path), st.message()));
      type = !st ? FileType::other : S_ISDIR(st->st_mode) ? FileType::directory : S_ISREG(st->st_mode) ? FileType::regular : FileType::other;
    }
    std::optional<Distribution> dist;
    if (type == FileType::directory) dist = reader.read_dir(path, egg_info);
    else if (type == FileType::regular && egg_info) dist = reader.read_egg_file(path);
    if (dist) out.push_back(std::move(*dist));
  }
  std::stable_sort(out.begin(), out.end(), [](const Distribution& a, const Distribution& b) {
    if (a.name != b.name) return a.name < b.name;
    int c = util::compare_versions(a.version, b.version);
    return c != 0 ? c < 0 : a.version < b.version;
  });
  return out;
}

}  // namespace

std::vector<PythonEnvironment> probe_python(const Context& ctx, const std::vector<std::string>& extra_paths) {
  std::vector<PythonEnvironment> out;
  for (auto& c : deduplicate(ctx.root, Finder(ctx).find(extra_paths))) {
    PythonEnvironment env{c.path, c.kind, c.python, {}};
    env.distributions = read_distributions(ctx, env.path);
    out.push_back(std::move(env));
  }
  return out;
}

nlohmann::json to_json(const PythonEnvironment& env) {
  auto dists = nlohmann::json::array();
  for (const auto& d : env.distributions) {
    nlohmann::json j = {{"name", printable(d.name)}, {"version", printable(d.version)}};
    if (!d.installer.empty()) j["installer"] = printable(d.installer);
    if (!d.direct_url.empty()) j["direct_url"] = printable(d.direct_url);
    if (!d.vcs_commit.empty()) j["vcs_commit"] = printable(d.vcs_commit);
    if (!d.record_digest.empty()) j["record_digest"] = d.record_digest;
    dists.push_back(std::move(j));
  }
  nlohmann::json out = {{"path", printable(env.path)}, {"kind", env.kind}, {"distributions", std::move(dists)}};
  if (!env.python.empty()) out["python"] = printable(env.python);
  return out;
}

std::vector<std::pair<std::string, std::string>> parse_metadata_headers(std::string_view text) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto line : util::lines(text)) {
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') {
      if (out.empty()) break;
      out.back().second += '\n';
      out.back().second += util::trim(line);
      continue;
    }
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) break;
    auto key = line.substr(0, colon);
    if (!std::all_of(key.begin(), key.end(), [](char c) { return c > ' ' && c <= '~'; })) break;
    out.emplace_back(std::string(key), std::string(util::trim(line.substr(colon + 1))));
  }
  return out;
}

std::string normalize_dist_name(std::string_view name) {
  std::string out;
  bool in_run = false;
  for (char c : name) {
    if (c == '-' || c == '_' || c == '.') {
      if (!in_run) out += '-';
      in_run = true;
    } else {
      out += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      in_run = false;
    }
  }
  return out;
}

}  // namespace envsnap::probe
