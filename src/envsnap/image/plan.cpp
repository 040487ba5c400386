#include "envsnap/image/plan.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "envsnap/image/glob.hpp"
#include "envsnap/image/secrets.hpp"
#include "envsnap/probe/python.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::image {

namespace {

using nlohmann::json;

constexpr size_t k_max_layers = 60;
constexpr int k_max_depth = 512;
const std::string k_data_reason = "data: mounted at run time, digest in the lock";
const std::string k_driver_reason = "NVIDIA driver: injected at run time";

// What a claimed directory (a CUDA toolkit, a site directory, the project) gives its files.
enum class Kind { gpu, python, project };

std::string_view basename(std::string_view path) {
  auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::string_view parent_path(std::string_view path) {
  auto slash = path.rfind('/');
  if (slash == std::string_view::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

std::string child_path(std::string_view dir, std::string_view name) {
  std::string out(dir == "/" ? "" : dir);
  out += '/';
  out += name;
  return out;
}

// "/a/b/" and "a/b" both become "/a/b"; "" stays empty.
std::string normalise_in_root(std::string_view p) {
  if (p.empty()) return {};
  std::string out;
  for (auto part : path_components(p)) {
    out += '/';
    out += part;
  }
  return out.empty() ? "/" : out;
}


bool is_gpu_package(std::string_view name) {
  static constexpr std::string_view prefixes[] = {
      "cuda-",     "libcudnn",  "libnccl",    "libcublas",   "libnvinfer", "tensorrt",      "libcudart",
      "libcufft",  "libcurand", "libcusolver", "libcusparse", "libnpp",     "libnvjpeg",     "libnvrtc",
      "libnvjitlink", "libcupti", "libnvtoolsext", "libcutensor", "libnvonnxparsers", "libnvparsers",
      "nvidia-cuda-", "libnvvm"};
  for (auto p : prefixes)
    if (name.starts_with(p)) return true;
  return false;
}

bool is_driver_file(std::string_view path) {
  auto name = basename(path);
  if (name.find("nvidia") == std::string_view::npos && !name.starts_with("libcuda") && !name.starts_with("libnv"))
    return false;
  static constexpr std::string_view globs[] = {
      "libnvidia-*.so*",  "libcuda.so*",       "libcudadebugger.so*", "libnvcuvid.so*",
      "libnvoptix.so*",   "libGLX_nvidia*",    "libEGL_nvidia*",      "libGLESv*_nvidia*",
      "nvidia-smi",       "nvidia-debugdump",  "nvidia-persistenced", "nvidia-cuda-mps-*"};
  bool hit = false;
  for (auto g : globs)
    if (match_component(g, name)) {
      hit = true;
      break;
    }
  if (hit) {
    // The CUDA toolkit's link-time stubs and its forward-compatibility package are not the driver.
    auto dir = basename(parent_path(path));
    if (dir == "stubs" || (dir == "compat" && parent_path(parent_path(path)).find("cuda") != std::string_view::npos))
      return false;
    return true;
  }
  static constexpr std::string_view paths[] = {"/usr/share/nvidia", "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
                                               "/lib/firmware/nvidia", "/usr/lib/firmware/nvidia",
                                               "/etc/OpenCL/vendors/nvidia.icd"};
  for (auto p : paths)
    if (path == p) return true;
  auto dir = parent_path(path);
  if ((dir == "/etc/vulkan/icd.d" || dir == "/usr/share/vulkan/icd.d") && name.starts_with("nvidia")) return true;
  if (dir == "/usr/share/egl/egl_external_platform.d" && name.find("nvidia") != std::string_view::npos) return true;
  return false;
}

struct Node {
  std::string path;  // in-root, leading '/'; "/" for the root
  struct stat st {};
  std::string link_target;
  int parent = -1;
  bool emit = true;  // false: kept only as the parent of included entries below an excluded directory
  std::optional<std::string> content;
  int dist = -1;          // distribution that lists this file exactly
  int subtree_mark = -1;  // distribution whose top-level directory this is
  int subtree = -1;       // inherited subtree_mark
  int claim = -1;         // Kind of the nearest claimed directory (project, toolkit, site dir)
  bool claim_root = false;
  int pkg = -1;  // dpkg/apk package listing it (the first one)
  int listers = 0;  // how many packages list it
};

struct IgnoreRule {
  Glob glob;
  bool negate;
  std::string reason;
};

struct State {
  bool included = false;   // matched by --include (itself or an ancestor)
  std::string inherited;   // reason of an excluded ancestor walked only for --include
  int exclude_hit = -1;    // first --exclude matching this path or an ancestor
  std::vector<char> ignore_hits;  // per .envsnapignore rule: matches this path or an ancestor
};

struct Rule {
  std::string reason;
  bool keep_empty = false;
};

struct Distribution {
  std::string name;  // normalised
  uint64_t bytes = 0;
  int layer = -1;
};

struct Package {
  std::string name;
  std::string source;  // dpkg source package (its own name when status names none)
  bool gpu = false;
  std::vector<int> files;  // non-directory nodes it lists
  std::vector<int> dirs;   // directories it lists
  int metadata_dirs = 0;   // Python metadata directories it lists
};

struct RawEntry {
  std::string name;
  struct stat st;
  std::string link_target;
};

class Planner {
public:
  Planner(const util::RootFs& root, const json& lock, const PlanOptions& options, probe::Warnings& warnings)
      : m_root(root), m_lock(lock), m_options(options), m_warnings(warnings) {}

  util::Result<Plan> run();

private:
  void load_rules();
  void read_ignore_file(const std::string& file, const std::string& anchor, const std::string& label);
  void walk_dir(int dir, const State& state, int depth);
  void visit(int parent, RawEntry entry, const State& state, int depth);
  std::optional<Rule> default_rule(const std::string& path, const struct stat& st, const struct stat& parent_st) const;
  int add_node(int parent, std::string path, const RawEntry& e, bool emit);
  void exclude(std::string path, std::string reason) { m_plan.excluded.push_back({std::move(path), std::move(reason)}); }
  bool sanitise(Node& node);
  bool include_below(const std::string& dir) const;
  bool project_below(const std::string& dir) const {
    return !m_project.empty() && m_project.size() > dir.size() && m_project.starts_with(dir) &&
           m_project[dir.size()] == '/';
  }

  const json* find(const json& j, const char* key) const {
    if (!j.is_object()) return nullptr;
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  int node_at(std::string_view path) const {
    auto it = m_index.find(path);
    return it == m_index.end() ? -1 : it->second;
  }
  std::string resolve_dir(std::string_view dir);
  std::string resolve_file(std::string_view path);
  std::string resolve_uncached(std::string_view path);

  void read_packages();
  void read_dpkg();
  void read_apk();
  void claim_directories();
  void read_distributions();
  void add_distribution(int site, int meta, const std::string& site_path, const std::vector<int>& children);
  void claim_exact(int node, int dist) {
    if (node >= 0 && m_nodes[node].dist < 0) m_nodes[node].dist = dist;
  }
  // The files of PKG, and the directories no other package lists, go to distribution D.
  void claim_package(int pkg, int d) {
    for (int n : m_packages[pkg].files) claim_exact(n, d);
    for (int n : m_packages[pkg].dirs)
      if (m_nodes[n].listers == 1) claim_exact(n, d);
  }
  void build_layers();

  const util::RootFs& m_root;
  const json& m_lock;
  const PlanOptions& m_options;
  probe::Warnings& m_warnings;

  std::vector<Glob> m_includes;
  std::unordered_set<std::string> m_exact_includes;
  std::vector<Glob> m_excludes;
  std::vector<IgnoreRule> m_ignore;
  std::unordered_set<std::string> m_data;
  std::unordered_set<std::string> m_stores;
  std::vector<std::string> m_homes;
  std::string m_project;

  std::vector<Node> m_nodes;
  std::unordered_map<std::string_view, int> m_index;
  std::unordered_map<std::string, std::string> m_resolved_dirs;
  std::vector<Package> m_packages;
  std::vector<Distribution> m_dists;
  std::map<std::pair<int, std::string>, int> m_dist_ids;
  std::vector<std::pair<int, int>> m_source_claims;  // (distribution, its dpkg package)
  Plan m_plan;
};

void Planner::read_ignore_file(const std::string& file, const std::string& anchor, const std::string& label) {
  if (!m_root.is_file(file)) return;
  auto text = m_root.read_file(file, 1u << 20);
  if (!text) {
    m_warnings.add(fmt::format("{}: cannot read ({})", file, text.message()));
    return;
  }
  int line_no = 0;
  for (auto line : util::lines(*text)) {
    ++line_no;
    auto t = util::trim(line);
    if (t.empty() || t.front() == '#') continue;
    bool negate = false;
    if (t.front() == '!') {
      negate = true;
      t = util::trim(t.substr(1));
    }
    if (t.starts_with("./")) t.remove_prefix(2);
    if (t.empty()) continue;
    std::string pattern = anchor == "/" ? std::string(t) : anchor + "/" + std::string(t);
    m_ignore.push_back({Glob(pattern), negate, fmt::format("excluded by {}:{}", label, line_no)});
  }
}

void Planner::load_rules() {
  for (const auto& g : m_options.includes) {
    m_includes.emplace_back(g);
    if (m_includes.back().literal()) m_exact_includes.insert(m_includes.back().literal_path());
  }
  for (const auto& g : m_options.excludes) m_excludes.emplace_back(g);
  read_ignore_file("/.envsnapignore", "/", ".envsnapignore");
  auto project = normalise_in_root(m_options.project_path);
  if (!project.empty() && project != "/") {
    m_project = project;
    read_ignore_file(project + "/.envsnapignore", project, project + "/.envsnapignore");
  }
  for (const auto& d : m_options.data_paths)
    if (auto p = normalise_in_root(d); !p.empty()) m_data.insert(p);
  if (auto p = normalise_in_root(m_options.store_path); !p.empty()) m_stores.insert(p);

  m_homes.push_back("/root");
  if (auto entries = m_root.list_dir("/home"))
    for (const auto& e : *entries)
      if (e.type == util::FileType::directory) m_homes.push_back("/home/" + e.name);
  if (auto passwd = m_root.read_file("/etc/passwd", 4u << 20)) {
    for (auto line : util::lines(*passwd)) {
      auto fields = util::split(line, ':');
      if (fields.size() < 7) continue;
      auto home = normalise_in_root(fields[5]);
      if (home.empty() || home == "/" || home.starts_with("/nonexistent") || home == "/bin" || home == "/usr/sbin" ||
          home == "/var/run" || home == "/run")
        continue;
      if (std::find(m_homes.begin(), m_homes.end(), home) == m_homes.end()) m_homes.push_back(home);
    }
  }
  for (const auto& home : m_homes) m_stores.insert(home + "/.local/share/envsnap");
}

std::optional<Rule> Planner::default_rule(const std::string& path, const struct stat& st,
                                          const struct stat& parent_st) const {
  bool dir = S_ISDIR(st.st_mode);
  if (!m_data.empty() && m_data.count(path)) return Rule{k_data_reason, false};
  if (m_stores.count(path)) return Rule{"envsnap store", false};
  static const std::map<std::string_view, Rule> fixed = {
      {"/proc", {"pseudo-filesystem", true}},
      {"/sys", {"pseudo-filesystem", true}},
      {"/dev", {"device files", true}},
      {"/run", {"run-time state", true}},
      {"/tmp", {"temporary files", true}},
      {"/var/tmp", {"temporary files", true}},
      {"/boot", {"kernel and boot loader", true}},
      {"/lib/modules", {"kernel modules", false}},
      {"/usr/lib/modules", {"kernel modules", false}},
      {"/var/lib/docker", {"container storage", false}},
      {"/var/lib/containers", {"container storage", false}},
      {"/lost+found", {"lost+found", false}},
      {"/swapfile", {"swap file", false}},
  };
  if (path.size() <= 20) {
    auto it = fixed.find(path);
    if (it != fixed.end()) return it->second;
  }
  auto parent = parent_path(path);
  auto name = basename(path);
  if (parent == "/var/cache") return Rule{"cache", false};
  if (parent == "/var/log") return Rule{"logs", false};
  // Another file system below the root (only directories: overlayfs may give files of
  // lower layers their own st_dev).
  if (dir && st.st_dev != parent_st.st_dev) return Rule{"mount point", true};
  if (name == ".cache" && (parent == "/root" || (parent.starts_with("/home/") && parent.find('/', 6) == std::string_view::npos)))
    return Rule{"cache", false};
  if (!dir && name.ends_with(".swap") && S_ISREG(st.st_mode)) return Rule{"swap file", false};
  if (is_driver_file(path)) return Rule{k_driver_reason, false};
  return std::nullopt;
}

bool Planner::include_below(const std::string& dir) const {
  for (const auto& g : m_includes)
    if (g.may_match_below(dir)) return true;
  return false;
}

int Planner::add_node(int parent, std::string path, const RawEntry& e, bool emit) {
  Node n;
  n.path = std::move(path);
  n.st = e.st;
  n.link_target = e.link_target;
  n.parent = parent;
  n.emit = emit;
  m_nodes.push_back(std::move(n));
  return static_cast<int>(m_nodes.size()) - 1;
}

bool Planner::sanitise(Node& node) {
  auto how = sanitiser_for(node.path);
  if (how == Sanitiser::none) return true;
  if (how == Sanitiser::machine_id) {
    if (node.st.st_size > 0) {
      node.content = std::string();
      m_plan.sanitised.push_back({node.path, "emptied"});
    }
    return true;
  }
  auto text = m_root.read_file(node.path, 16u << 20);
  if (!text) {
    m_warnings.add(fmt::format("{}: cannot read it to sanitise it, left out ({})", node.path, text.message()));
    return false;
  }
  std::string clean = how == Sanitiser::shadow ? lock_passwords(*text) : remove_url_credentials(*text);
  if (clean != *text) {
    node.content = std::move(clean);
    m_plan.sanitised.push_back({node.path, how == Sanitiser::shadow ? "passwords locked" : "URL credentials removed"});
  }
  return true;
}

void Planner::visit(int parent, RawEntry e, const State& ps, int depth) {
  std::string path = child_path(m_nodes[parent].path, e.name);
  bool is_dir = S_ISDIR(e.st.st_mode);

  if (auto kind = secret_kind(path, m_homes)) {
    if (!m_exact_includes.count(path)) {
      exclude(std::move(path), "secret: " + *kind);
      return;
    }
    int n = add_node(parent, std::move(path), e, true);
    State s = ps;
    s.included = true;
    if (is_dir) walk_dir(n, s, depth + 1);
    return;
  }

  State s = ps;
  if (!s.included)
    for (const auto& g : m_includes)
      if (g.matches(path)) {
        s.included = true;
        break;
      }

  Rule rule;
  bool from_ignore = false;
  int ignore_last = -1;
  if (!s.included) {
    bool in_project = !m_project.empty() && path.starts_with(m_project) &&
                      (path.size() == m_project.size() || path[m_project.size()] == '/');
    if (in_project) {
      // The project was asked for: only what the user left out explicitly stays out.
      if (m_data.count(path)) rule.reason = k_data_reason;
      else if (m_stores.count(path)) rule.reason = "envsnap store";
    } else if (!s.inherited.empty()) {
      rule.reason = s.inherited;
    } else if (auto r = default_rule(path, e.st, m_nodes[parent].st)) {
      rule = *r;
    }
    if (s.exclude_hit < 0)
      for (size_t i = 0; i < m_excludes.size(); ++i)
        if (m_excludes[i].matches(path)) {
          s.exclude_hit = static_cast<int>(i);
          break;
        }
    for (size_t i = 0; i < m_ignore.size(); ++i) {
      if (!s.ignore_hits[i] && m_ignore[i].glob.matches(path)) s.ignore_hits[i] = 1;
      if (s.ignore_hits[i]) ignore_last = static_cast<int>(i);
    }
    if (rule.reason.empty() && s.exclude_hit >= 0)
      rule.reason = "excluded by --exclude " + m_excludes[s.exclude_hit].text();
    if (rule.reason.empty() && ignore_last >= 0 && !m_ignore[ignore_last].negate) {
      rule.reason = m_ignore[ignore_last].reason;
      from_ignore = true;
    }
  }

  if (rule.reason.empty()) {
    int n = add_node(parent, std::move(path), e, true);
    if (S_ISREG(e.st.st_mode) && !m_exact_includes.count(m_nodes[n].path) && !sanitise(m_nodes[n])) {
      exclude(m_nodes[n].path, "secret: could not be sanitised");
      m_nodes.pop_back();
      return;
    }
    if (is_dir) walk_dir(n, s, depth + 1);
    return;
  }

  if (is_dir && rule.keep_empty && s.inherited.empty()) {
    int n = add_node(parent, path, e, true);
    if (include_below(path) || project_below(path)) {
      State cs = s;
      cs.inherited = rule.reason;
      walk_dir(n, cs, depth + 1);
    } else {
      exclude(std::move(path), rule.reason);
    }
    return;
  }

  bool descend = false;
  if (is_dir) {
    descend = include_below(path) || project_below(path);
    if (!descend && from_ignore)
      for (size_t i = static_cast<size_t>(ignore_last) + 1; i < m_ignore.size(); ++i)
        if (m_ignore[i].negate && m_ignore[i].glob.may_match_below(path)) {
          descend = true;
          break;
        }
  }
  if (!descend) {
    exclude(std::move(path), rule.reason);
    return;
  }
  size_t nodes_before = m_nodes.size();
  size_t excluded_before = m_plan.excluded.size();
  size_t sanitised_before = m_plan.sanitised.size();
  int n = add_node(parent, path, e, false);
  State cs = s;
  if (!from_ignore) cs.inherited = rule.reason;
  walk_dir(n, cs, depth + 1);
  bool kept = false;
  for (size_t i = nodes_before; i < m_nodes.size() && !kept; ++i) kept = m_nodes[i].emit;
  if (!kept) {
    m_nodes.resize(nodes_before);
    m_plan.excluded.resize(excluded_before);
    m_plan.sanitised.resize(sanitised_before);
    exclude(std::move(path), rule.reason);
  }
}

void Planner::walk_dir(int dir, const State& state, int depth) {
  std::string dir_path = m_nodes[dir].path;
  if (depth > k_max_depth) {
    m_warnings.add(fmt::format("{}: deeper than {} levels, its contents are left out", util::printable(dir_path),
                               k_max_depth));
    return;
  }
  std::vector<RawEntry> entries;
  {
    auto fd = m_root.open_at(dir_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (!fd) {
      m_warnings.add(fmt::format("cannot read directory {} ({}); packed as an empty directory",
                                 util::printable(dir_path), fd.message()));
      return;
    }
    DIR* d = ::fdopendir(fd->get());
    if (!d) {
      m_warnings.add(fmt::format("cannot read directory {} ({}); packed as an empty directory",
                                 util::printable(dir_path), std::strerror(errno)));
      return;
    }
    fd->release();
    std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
    int dfd = ::dirfd(d);
    errno = 0;
    while (auto* de = ::readdir(d)) {
      std::string_view name = de->d_name;
      if (name == "." || name == "..") continue;
      RawEntry e;
      e.name = std::string(name);
      if (::fstatat(dfd, de->d_name, &e.st, AT_SYMLINK_NOFOLLOW) != 0) {
        m_warnings.add(fmt::format("{}: {}; left out", util::printable(child_path(dir_path, name)),
                                   std::strerror(errno)));
        errno = 0;
        continue;
      }
      if (S_ISLNK(e.st.st_mode)) {
        std::string buf(4096, '\0');
        auto len = ::readlinkat(dfd, de->d_name, buf.data(), buf.size());
        if (len < 0) {
          m_warnings.add(fmt::format("{}: {}; left out", util::printable(child_path(dir_path, name)),
                                     std::strerror(errno)));
          errno = 0;
          continue;
        }
        buf.resize(static_cast<size_t>(len));
        e.link_target = std::move(buf);
      }
      entries.push_back(std::move(e));
      errno = 0;
    }
    if (errno != 0)
      m_warnings.add(fmt::format("cannot read all of directory {} ({})", util::printable(dir_path),
                                 std::strerror(errno)));
  }
  std::sort(entries.begin(), entries.end(), [](const RawEntry& a, const RawEntry& b) { return a.name < b.name; });
  for (auto& e : entries) visit(dir, std::move(e), state, depth);
}

std::string Planner::resolve_uncached(std::string_view path) {
  std::vector<std::string> out;
  std::deque<std::string> todo;
  for (auto c : path_components(path)) todo.emplace_back(c);
  int hops = 0;
  std::string cur;
  while (!todo.empty()) {
    std::string comp = std::move(todo.front());
    todo.pop_front();
    if (comp == "..") {
      if (!out.empty()) out.pop_back();
      continue;
    }
    out.push_back(std::move(comp));
    cur.clear();
    for (const auto& c : out) cur += "/" + c;
    int n = node_at(cur);
    if (n >= 0 && S_ISLNK(m_nodes[n].st.st_mode) && hops < 40) {
      ++hops;
      const auto& target = m_nodes[n].link_target;
      out.pop_back();
      if (!target.empty() && target.front() == '/') out.clear();
      auto parts = path_components(target);
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.emplace_front(*it);
    }
  }
  cur.clear();
  for (const auto& c : out) cur += "/" + c;
  return cur.empty() ? "/" : cur;
}

std::string Planner::resolve_dir(std::string_view dir) {
  auto it = m_resolved_dirs.find(std::string(dir));
  if (it != m_resolved_dirs.end()) return it->second;
  auto r = resolve_uncached(dir);
  m_resolved_dirs.emplace(std::string(dir), r);
  return r;
}

std::string Planner::resolve_file(std::string_view path) {
  auto name = basename(path);
  if (name.empty() || name == "." || name == "..") return resolve_dir(path);
  return child_path(resolve_dir(parent_path(path)), name);
}

void Planner::read_dpkg() {
  auto entries = m_root.list_dir("/var/lib/dpkg/info");
  if (!entries) return;
  std::unordered_map<std::string, std::string> sources;
  if (auto status = m_root.read_file("/var/lib/dpkg/status")) {
    std::string package;
    for (auto line : util::lines(*status)) {
      if (line.starts_with("Package:")) {
        package = std::string(util::trim(line.substr(8)));
      } else if (line.starts_with("Source:") && !package.empty()) {
        auto src = util::trim(line.substr(7));
        sources[package] = std::string(src.substr(0, src.find(' ')));
      }
    }
  }
  for (const auto& e : *entries) {
    if (e.type != util::FileType::regular || !e.name.ends_with(".list")) continue;
    std::string name = e.name.substr(0, e.name.size() - 5);
    if (auto colon = name.find(':'); colon != std::string::npos) name.resize(colon);
    auto text = m_root.read_file("/var/lib/dpkg/info/" + e.name);
    if (!text) {
      m_warnings.add(fmt::format("{}: cannot read ({})", "/var/lib/dpkg/info/" + e.name, text.message()));
      continue;
    }
    int pkg = static_cast<int>(m_packages.size());
    m_packages.push_back({name, sources.count(name) ? sources[name] : name, is_gpu_package(name), {}, {}, 0});
    for (auto line : util::lines(*text)) {
      if (line.empty() || line == "/.") continue;
      int n = node_at(resolve_file(line));
      if (n < 0) continue;
      auto& node = m_nodes[n];
      if (node.pkg < 0) node.pkg = pkg;
      ++node.listers;
      (S_ISDIR(node.st.st_mode) ? m_packages[pkg].dirs : m_packages[pkg].files).push_back(n);
    }
  }
}

void Planner::read_apk() {
  if (!m_root.is_file("/lib/apk/db/installed")) return;
  auto text = m_root.read_file("/lib/apk/db/installed");
  if (!text) {
    m_warnings.add(fmt::format("/lib/apk/db/installed: cannot read ({})", text.message()));
    return;
  }
  int pkg = -1;
  std::string dir;
  for (auto line : util::lines(*text)) {
    if (line.size() < 2 || line[1] != ':') continue;
    auto value = line.substr(2);
    if (line[0] == 'P') {
      pkg = static_cast<int>(m_packages.size());
      m_packages.push_back({std::string(value), std::string(value), false, {}, {}, 0});
      dir.clear();
    } else if (line[0] == 'F') {
      dir = std::string(value);
      if (pkg >= 0)
        if (int n = node_at(resolve_dir("/" + dir)); n >= 0) {
          if (m_nodes[n].pkg < 0) m_nodes[n].pkg = pkg;
          ++m_nodes[n].listers;
          m_packages[pkg].dirs.push_back(n);
        }
    } else if (line[0] == 'R' && pkg >= 0) {
      int n = node_at(resolve_file(dir.empty() ? "/" + std::string(value) : "/" + dir + "/" + std::string(value)));
      if (n < 0) continue;
      if (m_nodes[n].pkg < 0) m_nodes[n].pkg = pkg;
      ++m_nodes[n].listers;
      if (!S_ISDIR(m_nodes[n].st.st_mode)) m_packages[pkg].files.push_back(n);
    }
  }
}

void Planner::read_packages() {
  read_dpkg();
  read_apk();
}

void Planner::claim_directories() {
  auto claim = [&](std::string_view path, Kind kind) {
    int n = node_at(resolve_dir(path));
    if (n < 0 || !S_ISDIR(m_nodes[n].st.st_mode)) return;
    m_nodes[n].claim = static_cast<int>(kind);
    m_nodes[n].claim_root = true;
  };
  if (const auto* python = find(m_lock, "python"))
    if (const auto* envs = find(*python, "environments"); envs && envs->is_array())
      for (const auto& env : *envs)
        if (const auto* p = find(env, "path"); p && p->is_string()) claim(p->get<std::string>(), Kind::python);
  if (const auto* cuda = find(m_lock, "cuda"))
    if (const auto* tks = find(*cuda, "toolkits"); tks && tks->is_array())
      for (const auto& tk : *tks) {
        const auto* p = find(tk, "path");
        const auto* kind = find(tk, "kind");
        if (p && p->is_string() && (!kind || (kind->is_string() && kind->get<std::string>() == "local")))
          claim(p->get<std::string>(), Kind::gpu);
      }
  if (auto project = normalise_in_root(m_options.project_path); !project.empty() && project != "/")
    claim(project, Kind::project);
}

void Planner::add_distribution(int site, int meta, const std::string& site_path, const std::vector<int>& children) {
  const auto& meta_node = m_nodes[meta];
  std::string meta_path = meta_node.path;
  std::string_view file = basename(meta_path);
  bool dist_info = file.ends_with(".dist-info");
  auto stem = file.substr(0, file.size() - (dist_info ? 10 : 9));
  auto name = probe::normalize_dist_name(stem.substr(0, stem.find('-')));
  if (name.empty()) return;

  // A second metadata directory of the same name in one site directory (a stale one) is the same distribution.
  auto [it, inserted] = m_dist_ids.try_emplace({site, name}, static_cast<int>(m_dists.size()));
  int d = it->second;
  if (inserted) m_dists.push_back({name, 0, -1});

  auto read_lines = [&](const std::string& rel) -> std::optional<std::string> {
    std::string p = meta_path + "/" + rel;
    if (node_at(p) < 0) return std::nullopt;
    auto text = m_root.read_file(p, 64u << 20);
    if (!text) {
      m_warnings.add(fmt::format("{}: cannot read ({})", util::printable(p), text.message()));
      return std::nullopt;
    }
    return std::move(*text);
  };

  auto claim_top_level = [&](const std::string& top_name) {
    int n = node_at(site_path + "/" + top_name);
    if (n >= 0 && S_ISDIR(m_nodes[n].st.st_mode)) {
      if (m_nodes[n].subtree_mark < 0) m_nodes[n].subtree_mark = d;
    } else {
      claim_exact(n, d);
    }
    claim_exact(node_at(site_path + "/" + top_name + ".py"), d);
    for (int k : children) {
      auto child = basename(m_nodes[k].path);
      if (child.size() > top_name.size() + 1 && child.starts_with(top_name) && child[top_name.size()] == '.' &&
          (child.ends_with(".so") || child.ends_with(".pyd")))
        claim_exact(k, d);
    }
  };
  // Installed by dpkg (Debian's python3-<x>): the package's other files, and those of the
  // packages built from the same source (libtorch for python3-torch), belong to it too.
  if (int pkg = m_nodes[meta].pkg; pkg >= 0 && m_packages[pkg].metadata_dirs == 1) {
    claim_package(pkg, d);
    m_source_claims.emplace_back(d, pkg);
  }

  if (!S_ISDIR(meta_node.st.st_mode)) {
    // A single-file .egg-info (PKG-INFO only): its import name is most likely its own name.
    claim_exact(meta, d);
    std::string raw(stem.substr(0, stem.find('-')));
    claim_top_level(raw);
    if (auto lower = util::to_lower(raw); lower != raw) claim_top_level(lower);
    return;
  }
  if (m_nodes[meta].subtree_mark < 0) m_nodes[meta].subtree_mark = d;

  bool listed = false;
  if (dist_info) {
    if (auto record = read_lines("RECORD")) {
      listed = true;
      for (auto line : util::lines(*record)) {
        std::string rel;
        if (!line.empty() && line.front() == '"') {
          for (size_t i = 1; i < line.size(); ++i) {
            if (line[i] == '"') {
              if (i + 1 < line.size() && line[i + 1] == '"') {
                rel += '"';
                ++i;
                continue;
              }
              break;
            }
            rel += line[i];
          }
        } else {
          rel = std::string(line.substr(0, line.find(',')));
        }
        if (rel.empty()) continue;
        claim_exact(node_at(resolve_file(rel.front() == '/' ? rel : site_path + "/" + rel)), d);
      }
    }
  } else if (auto files = read_lines("installed-files.txt")) {
    listed = true;
    for (auto line : util::lines(*files)) {
      auto rel = util::trim(line);
      if (rel.empty()) continue;
      claim_exact(node_at(resolve_file(rel.front() == '/' ? std::string(rel) : meta_path + "/" + std::string(rel))), d);
    }
  }
  if (!listed)
    if (auto top = read_lines("top_level.txt"))
      for (auto line : util::lines(*top)) {
        auto t = util::trim(line);
        if (t.empty() || t.find("..") != std::string_view::npos) continue;
        claim_top_level(std::string(t));
      }
}

void Planner::read_distributions() {
  std::vector<std::pair<int, std::string>> sites;
  if (const auto* python = find(m_lock, "python"))
    if (const auto* envs = find(*python, "environments"); envs && envs->is_array())
      for (const auto& env : *envs) {
        const auto* p = find(env, "path");
        if (!p || !p->is_string()) continue;
        auto site_path = resolve_dir(p->get<std::string>());
        int n = node_at(site_path);
        if (n < 0 || !S_ISDIR(m_nodes[n].st.st_mode)) continue;
        if (std::any_of(sites.begin(), sites.end(), [&](const auto& s) { return s.first == n; })) continue;
        sites.emplace_back(n, site_path);
      }
  std::vector<std::vector<int>> children(sites.size());
  std::unordered_map<int, size_t> site_slot;
  for (size_t s = 0; s < sites.size(); ++s) site_slot.emplace(sites[s].first, s);
  for (size_t k = 1; k < m_nodes.size(); ++k)
    if (auto it = site_slot.find(m_nodes[k].parent); it != site_slot.end() && m_nodes[k].emit)
      children[it->second].push_back(static_cast<int>(k));
  std::vector<std::pair<size_t, int>> metas;  // (site slot, metadata node)
  for (size_t s = 0; s < sites.size(); ++s)
    for (int k : children[s]) {
      auto name = basename(m_nodes[k].path);
      if (name.ends_with(".dist-info") || name.ends_with(".egg-info")) {
        metas.emplace_back(s, k);
        if (int pkg = m_nodes[k].pkg; pkg >= 0) ++m_packages[pkg].metadata_dirs;
      }
    }
  for (const auto& [s, meta] : metas) add_distribution(sites[s].first, meta, sites[s].second, children[s]);
  for (const auto& [d, pkg] : m_source_claims)
    for (size_t other = 0; other < m_packages.size(); ++other)
      if (static_cast<int>(other) != pkg && m_packages[other].metadata_dirs == 0 &&
          m_packages[other].source == m_packages[pkg].source)
        claim_package(static_cast<int>(other), d);
}

void Planner::build_layers() {
  // Inherit claims and top-level subtrees down the tree (nodes are in walk order: parents first).
  for (auto& n : m_nodes) {
    if (n.parent >= 0) {
      const auto& p = m_nodes[n.parent];
      if (!n.claim_root) n.claim = p.claim;
      n.subtree = n.subtree_mark >= 0 ? n.subtree_mark : p.subtree;
    } else {
      n.subtree = n.subtree_mark;
    }
  }
  auto dist_of = [&](const Node& n) { return n.dist >= 0 ? n.dist : n.subtree; };
  auto data_size = [](const Node& n) -> uint64_t {
    if (!S_ISREG(n.st.st_mode)) return 0;
    return n.content ? n.content->size() : static_cast<uint64_t>(n.st.st_size);
  };
  for (const auto& n : m_nodes)
    if (n.emit && n.parent >= 0)
      if (int d = dist_of(n); d >= 0) m_dists[d].bytes += data_size(n);

  // Layers: base-os, gpu, python-<name>..., python, project, rest.
  std::vector<int> big;
  for (size_t i = 0; i < m_dists.size(); ++i)
    if (m_dists[i].bytes >= m_options.size_threshold) big.push_back(static_cast<int>(i));
  std::sort(big.begin(), big.end(), [&](int a, int b) {
    if (m_dists[a].bytes != m_dists[b].bytes) return m_dists[a].bytes > m_dists[b].bytes;
    return m_dists[a].name < m_dists[b].name;
  });
  if (big.size() > k_max_layers - 5) big.resize(k_max_layers - 5);
  std::sort(big.begin(), big.end(), [&](int a, int b) {
    if (m_dists[a].name != m_dists[b].name) return m_dists[a].name < m_dists[b].name;
    return a < b;
  });
  std::vector<std::string> names = {"base-os", "gpu"};
  std::map<std::string, int> used;
  for (int d : big) {
    std::string name = "python-" + m_dists[d].name;
    int count = ++used[name];
    if (count > 1) name += fmt::format("-{}", count);
    m_dists[d].layer = static_cast<int>(names.size());
    names.push_back(name);
  }
  const int python_layer = static_cast<int>(names.size());
  names.push_back("python");
  names.push_back("project");
  names.push_back("rest");
  const int project_layer = python_layer + 1;
  const int rest_layer = python_layer + 2;

  auto layer_of = [&](const Node& n) -> int {
    if (int d = dist_of(n); d >= 0) return m_dists[d].layer >= 0 ? m_dists[d].layer : python_layer;
    switch (n.claim) {
      case static_cast<int>(Kind::python): return python_layer;
      case static_cast<int>(Kind::gpu): return 1;
      case static_cast<int>(Kind::project): return project_layer;
      default: break;
    }
    if (n.pkg >= 0) return m_packages[n.pkg].gpu ? 1 : 0;
    return rest_layer;
  };

  // A directory is an entry of its own layer when something owns it (a distribution, a
  // package, a claimed directory) or nothing is packed below it; otherwise it is only
  // the parent of the entries below it, in whichever layers those are.
  std::vector<char> has_files(m_nodes.size(), 0);
  for (size_t i = m_nodes.size(); i-- > 1;) {
    const auto& n = m_nodes[i];
    if ((n.emit && !S_ISDIR(n.st.st_mode)) || has_files[i]) has_files[n.parent] = 1;
  }
  std::vector<int> layer(m_nodes.size(), -1);
  std::vector<int> hardlink_first(m_nodes.size(), -1);
  std::map<std::pair<dev_t, ino_t>, int> links;
  for (size_t i = 1; i < m_nodes.size(); ++i) {
    const auto& n = m_nodes[i];
    if (!n.emit) continue;
    if (S_ISDIR(n.st.st_mode)) {
      bool owned = dist_of(n) >= 0 || n.claim_root || (n.claim < 0 && n.pkg >= 0) || !has_files[i];
      if (owned) layer[i] = layer_of(n);
      continue;
    }
    if (n.st.st_nlink > 1 && !n.content) {
      auto [it, inserted] = links.try_emplace({n.st.st_dev, n.st.st_ino}, static_cast<int>(i));
      if (!inserted) {
        hardlink_first[i] = it->second;
        layer[i] = layer[it->second];
        continue;
      }
    }
    layer[i] = layer_of(n);
  }

  std::vector<std::vector<int>> members(names.size());
  for (size_t i = 1; i < m_nodes.size(); ++i)
    if (layer[i] >= 0) members[layer[i]].push_back(static_cast<int>(i));
  std::vector<int> mark(m_nodes.size(), -1);
  for (size_t l = 0; l < names.size(); ++l) {
    auto& list = members[l];
    if (list.empty()) continue;
    for (int i : list) mark[i] = static_cast<int>(l);
    size_t own = list.size();
    for (size_t k = 0; k < own; ++k)
      for (int p = m_nodes[list[k]].parent; p > 0 && mark[p] != static_cast<int>(l); p = m_nodes[p].parent) {
        mark[p] = static_cast<int>(l);
        list.push_back(p);
      }
    // Walk order is path order with '/' lowest: parents before children.
    std::sort(list.begin(), list.end());
    PlannedLayer out;
    out.name = names[l];
    out.entries.reserve(list.size());
    for (int i : list) {
      auto& n = m_nodes[i];
      FileEntry e;
      e.path = n.path.substr(1);
      e.st = n.st;
      e.link_target = n.link_target;
      if (hardlink_first[i] >= 0 && layer[i] == static_cast<int>(l)) {
        e.hardlink_to = m_nodes[hardlink_first[i]].path.substr(1);
      } else {
        out.bytes += data_size(n);
      }
      e.content = n.content;
      out.entries.push_back(std::move(e));
    }
    m_plan.layers.push_back(std::move(out));
  }
}

util::Result<Plan> Planner::run() {
  auto root_st = m_root.lstat("/");
  if (!root_st) return util::Error{fmt::format("cannot read the root: {}", root_st.message())};
  load_rules();
  RawEntry root_entry;
  root_entry.st = *root_st;
  add_node(-1, "/", root_entry, false);
  State state;
  state.ignore_hits.assign(m_ignore.size(), 0);
  walk_dir(0, state, 0);

  m_index.reserve(m_nodes.size() * 2);
  for (size_t i = 0; i < m_nodes.size(); ++i) m_index.emplace(m_nodes[i].path, static_cast<int>(i));
  read_packages();
  claim_directories();
  read_distributions();
  build_layers();
  return std::move(m_plan);
}

}  // namespace

util::Result<Plan> plan_layers(const util::RootFs& root, const nlohmann::json& lock, const PlanOptions& options,
                               probe::Warnings& warnings) {
  Planner planner(root, lock, options, warnings);
  return planner.run();
}

}  // namespace envsnap::image
