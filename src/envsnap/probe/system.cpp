#include "envsnap/probe/system.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>
#include <tuple>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace {

constexpr size_t max_warnings_per_file = 20;

// JSON strings must be UTF-8: keep valid text as it is, escape the rest.
std::string json_safe(std::string_view s) { return util::is_utf8(s) ? std::string(s) : util::printable(s); }

bool package_less(const Package& a, const Package& b) {
  return std::tie(a.name, a.arch, a.version) < std::tie(b.name, b.arch, b.version);
}

bool valid_field_name(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return false;
  return true;
}

// Package names, versions and architectures are short printable ASCII tokens.
bool valid_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
  }
  return true;
}

// Field names are ASCII and compare without regard to case, as dpkg does.
bool field_is(std::string_view name, std::string_view want) {
  if (name.size() != want.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if ((name[i] | 0x20) != (want[i] | 0x20)) return false;
  return true;
}

// One dpkg status stanza while it is being read.
struct Stanza {
  size_t first_line = 0;
  size_t problem_line = 0;
  std::string_view problem;
  std::string_view package, version, arch, status;
  bool any = false;

  void reset() { *this = Stanza{}; }
};

bool installed(std::string_view status) {
  auto words = util::split(util::trim(status), ' ');
  if (words.size() != 3) return false;
  return (words[0] == "install" || words[0] == "hold") && words[1] == "ok" && words[2] == "installed";
}

}  // namespace

std::vector<Package> parse_dpkg_status(std::string_view text, std::string_view path, Warnings& warnings) {
  std::vector<Package> out;
  out.reserve(text.size() / 1500 + 16);
  size_t problems = 0;
  auto warn = [&](std::string message) {
    ++problems;
    if (problems <= max_warnings_per_file) warnings.add(fmt::format("{}: {}", util::printable(path), message));
  };
  auto package_suffix = [](const Stanza& s) {
    return s.package.empty() ? std::string() : fmt::format(" (package '{}')", util::printable(s.package));
  };

  Stanza st;
  auto finish = [&] {
    if (!st.any) return;
    if (!st.problem.empty()) {
      warn(fmt::format("line {}: {}{}; stanza skipped", st.problem_line, st.problem, package_suffix(st)));
    } else if (installed(st.status)) {
      if (st.package.empty())
        warn(fmt::format("line {}: installed stanza without Package; skipped", st.first_line));
      else if (!valid_token(st.package))
        warn(fmt::format("line {}: invalid package name '{}'; skipped", st.first_line, util::printable(st.package)));
      else if (st.version.empty())
        warn(fmt::format("line {}: package '{}' has no Version; skipped", st.first_line, st.package));
      else if (!valid_token(st.version) || (!st.arch.empty() && !valid_token(st.arch)))
        warn(fmt::format("line {}: package '{}' has an invalid Version or Architecture; skipped", st.first_line,
                         st.package));
      else
        out.push_back({std::string(st.package), std::string(st.version), std::string(st.arch)});
    }
    st.reset();
  };

  size_t pos = 0, line_no = 0;
  bool in_field = false;
  while (pos < text.size()) {
    ++line_no;
    const char* nl = static_cast<const char*>(std::memchr(text.data() + pos, '\n', text.size() - pos));
    size_t end = nl ? static_cast<size_t>(nl - text.data()) : text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

    if (line.empty()) {
      finish();
      in_field = false;
      continue;
    }
    if (!st.any) {
      st.any = true;
      st.first_line = line_no;
    }
    auto note = [&](std::string_view what) {
      if (st.problem.empty()) {
        st.problem = what;
        st.problem_line = line_no;
      }
    };
    if (!nl) note("the file ends in the middle of a line (truncated)");

    if (line.front() == ' ' || line.front() == '\t') {
      if (!in_field) note("continuation line outside a field");
      continue;
    }
    auto colon = line.find(':');
    if (colon == std::string_view::npos || !valid_field_name(line.substr(0, colon))) {
      note("not a 'Field: value' line");
      in_field = false;
      continue;
    }
    in_field = true;
    auto name = line.substr(0, colon);
    auto value = util::trim(line.substr(colon + 1));
    switch (name.size()) {
      case 6:
        if (field_is(name, "Status")) st.status = value;
        break;
      case 7:
        if (field_is(name, "Package")) st.package = value;
        else if (field_is(name, "Version")) st.version = value;
        break;
      case 12:
        if (field_is(name, "Architecture")) st.arch = value;
        break;
      default:
        break;
    }
  }
  finish();
  if (problems > max_warnings_per_file)
    warnings.add(fmt::format("{}: {} more problems not listed", util::printable(path),
                             problems - max_warnings_per_file));
  std::sort(out.begin(), out.end(), package_less);
  return out;
}

std::vector<Package> parse_apk_installed(std::string_view text) {
  std::vector<Package> out;
  Package cur;
  auto finish = [&] {
    if (!cur.name.empty() && !cur.version.empty()) out.push_back(std::move(cur));
    cur = Package{};
  };
  for (auto line : util::lines(text)) {
    if (line.empty()) {
      finish();
      continue;
    }
    if (line.size() < 2 || line[1] != ':') continue;
    auto value = line.substr(2);
    switch (line[0]) {
      case 'P': cur.name = json_safe(value); break;
      case 'V': cur.version = json_safe(value); break;
      case 'A': cur.arch = json_safe(value); break;
      default: break;
    }
  }
  finish();
  std::sort(out.begin(), out.end(), package_less);
  return out;
}

namespace {

// The value of one os-release assignment, unquoted as sh would: '...' is literal,
// "..." and bare words honour backslash escapes; unquoted whitespace ends it.
std::string shell_unquote(std::string_view v) {
  std::string out;
  size_t i = 0;
  while (i < v.size()) {
    char c = v[i];
    if (c == '\'') {
      auto close = v.find('\'', i + 1);
      if (close == std::string_view::npos) close = v.size();
      out.append(v.substr(i + 1, close - i - 1));
      i = close + 1;
    } else if (c == '"') {
      ++i;
      while (i < v.size() && v[i] != '"') {
        if (v[i] == '\\' && i + 1 < v.size() && std::strchr("$`\"\\", v[i + 1]) != nullptr) {
          out.push_back(v[i + 1]);
          i += 2;
        } else {
          out.push_back(v[i++]);
        }
      }
      ++i;
    } else if (c == '\\') {
      if (i + 1 < v.size()) out.push_back(v[i + 1]);
      i += 2;
    } else if (c == ' ' || c == '\t') {
      break;
    } else {
      out.push_back(c);
      ++i;
    }
  }
  return out;
}

}  // namespace

std::map<std::string, std::string> parse_os_release(std::string_view text) {
  static constexpr std::array<std::string_view, 4> kept = {"ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME"};
  std::map<std::string, std::string> out;
  for (auto raw : util::lines(text)) {
    auto line = util::trim(raw);
    if (line.empty() || line.front() == '#') continue;
    auto eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    auto key = line.substr(0, eq);
    if (std::find(kept.begin(), kept.end(), key) == kept.end()) continue;
    out[util::to_lower(key)] = json_safe(shell_unquote(line.substr(eq + 1)));
  }
  return out;
}

namespace {

// Dynamic loaders first (they exist once per native architecture), then libc.
constexpr std::array<std::string_view, 13> loader_paths = {
    "/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib64/ld64.so.2",
    "/lib/ld-linux-riscv64-lp64d.so.1", "/lib/ld64.so.1", "/lib/ld-linux-armhf.so.3",
    "/lib/ld-linux.so.2", "/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-aarch64.so.1",
    "/lib/ld-musl-ppc64le.so.1", "/lib/ld-musl-s390x.so.1", "/lib/ld-musl-riscv64.so.1",
    "/lib/ld-musl-armhf.so.1"};

constexpr std::array<std::string_view, 16> libc_paths = {
    "/lib/x86_64-linux-gnu/libc.so.6",        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/aarch64-linux-gnu/libc.so.6",       "/usr/lib/aarch64-linux-gnu/libc.so.6",
    "/lib/powerpc64le-linux-gnu/libc.so.6",   "/usr/lib/powerpc64le-linux-gnu/libc.so.6",
    "/lib/s390x-linux-gnu/libc.so.6",         "/usr/lib/s390x-linux-gnu/libc.so.6",
    "/lib/riscv64-linux-gnu/libc.so.6",       "/usr/lib/riscv64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",                       "/usr/lib64/libc.so.6",
    "/lib/arm-linux-gnueabihf/libc.so.6",     "/lib/i386-linux-gnu/libc.so.6",
    "/lib/libc.so.6",                         "/usr/lib/libc.so.6"};

std::string elf_machine(const util::RootFs& root, std::string_view rel) {
  auto fd = root.open_at(rel, O_RDONLY);
  if (!fd) return {};
  unsigned char h[20];
  ssize_t n;
  do {
    n = ::pread(fd->get(), h, sizeof h, 0);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof h) || std::memcmp(h, "\x7f" "ELF", 4) != 0) return {};
  bool little = h[5] == 1;
  bool is64 = h[4] == 2;
  unsigned machine = little ? (h[18] | (h[19] << 8)) : ((h[18] << 8) | h[19]);
  switch (machine) {
    case 3: return "i686";
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 40: return "arm";
    case 21: return little ? "ppc64le" : "ppc64";
    case 20: return "ppc";
    case 22: return is64 ? "s390x" : "s390";
    case 243: return is64 ? "riscv64" : "riscv32";
    case 258: return "loongarch64";
    default: return {};
  }
}

std::string machine_of_dpkg_arch(std::string_view a) {
  if (a == "amd64") return "x86_64";
  if (a == "arm64") return "aarch64";
  if (a == "ppc64el") return "ppc64le";
  if (a == "i386") return "i686";
  if (a == "armhf" || a == "armel") return "arm";
  if (a == "loong64") return "loongarch64";
  if (a == "s390x" || a == "riscv64" || a == "ppc64") return std::string(a);
  return {};
}

// "2.36" from the GNU_LIBC banner in libc.so.6, without running it.
std::string glibc_from_banner(std::string_view bytes) {
  auto at = bytes.find("GNU C Library");
  if (at == std::string_view::npos) return {};
  constexpr std::string_view marker = "release version ";
  auto rv = bytes.find(marker, at);
  if (rv == std::string_view::npos || rv - at > 256) return {};
  size_t i = rv + marker.size(), j = i;
  while (j < bytes.size() && (std::isdigit(static_cast<unsigned char>(bytes[j])) || bytes[j] == '.')) ++j;
  auto v = bytes.substr(i, j - i);
  while (!v.empty() && v.back() == '.') v.remove_suffix(1);
  return std::string(v);
}

// Upstream part of a Debian version: "2.36-9+deb12u10" -> "2.36".
std::string upstream_version(std::string_view v) {
  if (auto colon = v.find(':'); colon != std::string_view::npos) v.remove_prefix(colon + 1);
  if (auto dash = v.rfind('-'); dash != std::string_view::npos) v = v.substr(0, dash);
  return std::string(v);
}

// Content of a root file that may be absent: absent -> nullopt silently; unreadable -> warning.
std::optional<std::string> read_optional(const Context& ctx, std::string_view rel) {
  auto st = ctx.root.lstat(rel);
  if (!st) return std::nullopt;
  auto text = ctx.root.read_file(rel);
  if (!text) {
    if (S_ISLNK(st->st_mode) && !ctx.root.exists(rel))
      ctx.warnings.add(fmt::format("{}: broken symlink; the file it should provide is missing", ctx.root.host_path(rel)));
    else
      ctx.warnings.add(text.message());
    return std::nullopt;
  }
  return std::move(text).value();
}

std::string_view proc_field(std::string_view text, std::string_view key) {
  for (auto line : util::lines(text)) {
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    if (util::trim(line.substr(0, colon)) == key) return util::trim(line.substr(colon + 1));
  }
  return {};
}

HostInfo probe_host(Warnings& warnings) {
  HostInfo host;
  struct utsname u;
  if (::uname(&u) == 0) host.kernel = u.release;
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  host.cpus = n > 0 ? static_cast<int>(n) : 0;

  auto proc = util::RootFs::open("/");
  if (proc) {
    if (auto cpuinfo = proc->read_file("/proc/cpuinfo"); cpuinfo)
      host.cpu = json_safe(proc_field(*cpuinfo, "model name"));
    else
      warnings.add(cpuinfo.message());
    if (auto meminfo = proc->read_file("/proc/meminfo"); meminfo) {
      auto v = proc_field(*meminfo, "MemTotal");
      uint64_t kb = 0;
      for (char c : v) {
        if (!std::isdigit(static_cast<unsigned char>(c))) break;
        kb = kb * 10 + static_cast<uint64_t>(c - '0');
      }
      host.memory_bytes = kb * 1024;
    } else {
      warnings.add(meminfo.message());
    }
  }
  struct statvfs sv;
  if (::statvfs("/dev/shm", &sv) == 0)
    host.shm_bytes = static_cast<uint64_t>(sv.f_blocks) * static_cast<uint64_t>(sv.f_frsize);
  else
    warnings.add(fmt::format("/dev/shm: {}", std::strerror(errno)));
  return host;
}

}  // namespace

SystemInfo probe_system(const Context& ctx) {
  SystemInfo info;
  try {
    for (auto rel : {"/etc/os-release", "/usr/lib/os-release"}) {
      if (auto text = read_optional(ctx, rel)) {
        info.os = parse_os_release(*text);
        break;
      }
    }

    if (auto status = read_optional(ctx, "/var/lib/dpkg/status"))
      info.dpkg = parse_dpkg_status(*status, ctx.root.host_path("/var/lib/dpkg/status"), ctx.warnings);
    if (auto db = read_optional(ctx, "/lib/apk/db/installed")) info.apk = parse_apk_installed(*db);

    // A multiarch root can hold foreign loaders too; the dpkg package is always native.
    std::string native;
    for (const auto& p : info.dpkg)
      if (p.name == "dpkg") native = machine_of_dpkg_arch(p.arch);
    for (auto rel : loader_paths) {
      auto machine = elf_machine(ctx.root, rel);
      if (machine.empty()) continue;
      if (info.arch.empty()) info.arch = machine;
      if (native.empty() || machine == native) {
        info.arch = machine;
        break;
      }
    }

    for (auto rel : libc_paths) {
      if (!ctx.root.is_file(rel)) continue;
      if (info.arch.empty()) info.arch = elf_machine(ctx.root, rel);
      auto bytes = ctx.root.read_file(rel, 64u << 20);
      if (!bytes) {
        ctx.warnings.add(bytes.message());
        continue;
      }
      info.glibc = glibc_from_banner(*bytes);
      if (!info.glibc.empty()) break;
    }

    auto libc6 = std::find_if(info.dpkg.begin(), info.dpkg.end(), [&](const Package& p) {
      return p.name == "libc6" && (info.arch.empty() || machine_of_dpkg_arch(p.arch) == info.arch);
    });
    if (info.arch.empty()) {
      if (auto archs = read_optional(ctx, "/var/lib/dpkg/arch")) {
        auto ls = util::lines(*archs);
        if (!ls.empty()) info.arch = machine_of_dpkg_arch(util::trim(ls.front()));
      }
      if (info.arch.empty() && libc6 != info.dpkg.end()) info.arch = machine_of_dpkg_arch(libc6->arch);
    }
    if (info.glibc.empty() && libc6 != info.dpkg.end()) info.glibc = upstream_version(libc6->version);

    if (ctx.live()) info.host = probe_host(ctx.warnings);
  } catch (const std::exception& e) {
    ctx.warnings.add(fmt::format("{}: system probe failed: {}", ctx.root.host_path("/"), e.what()));
  }
  return info;
}

nlohmann::json to_json(const SystemInfo& info) {
  auto packages = [](const std::vector<Package>& list) {
    auto arr = nlohmann::json::array();
    for (const auto& p : list) {
      nlohmann::json o = {{"name", p.name}, {"version", p.version}};
      if (!p.arch.empty()) o["arch"] = p.arch;
      arr.push_back(std::move(o));
    }
    return arr;
  };
  nlohmann::json j = nlohmann::json::object();
  if (!info.os.empty()) j["os"] = info.os;
  if (!info.arch.empty()) j["arch"] = info.arch;
  if (!info.glibc.empty()) j["glibc"] = info.glibc;
  j["packages"] = {{"dpkg", packages(info.dpkg)}, {"apk", packages(info.apk)}};
  if (info.host) {
    const auto& h = *info.host;
    nlohmann::json host = nlohmann::json::object();
    if (!h.kernel.empty()) host["kernel"] = h.kernel;
    if (!h.cpu.empty()) host["cpu"] = h.cpu;
    if (h.cpus > 0) host["cpus"] = h.cpus;
    if (h.memory_bytes > 0) host["memory_bytes"] = h.memory_bytes;
    if (h.shm_bytes > 0) host["shm_bytes"] = h.shm_bytes;
    j["host"] = std::move(host);
  }
  return j;
}

}  // namespace envsnap::probe
