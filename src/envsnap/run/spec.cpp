#include "envsnap/run/spec.hpp"

#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::run {

using util::Error;
using util::Result;
using namespace std::string_view_literals;

namespace {

bool parse_uint(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string normal_path(const std::filesystem::path& p) {
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

}  // namespace

Result<Volume> parse_volume(std::string_view text, const std::filesystem::path& cwd) {
  auto bad = [&](std::string_view why) {
    return Error{fmt::format("-v {}: {}; the form is SRC:DST[:ro|rw], with SRC a host path and DST an absolute "
                             "path in the container",
                             util::printable(text), why)};
  };
  auto parts = util::split(text, ':');
  if (parts.size() < 2 || parts.size() > 3) return bad("expected two or three fields separated by ':'");
  Volume v;
  std::string_view src = parts[0], dst = parts[1];
  if (src.empty() || dst.empty()) return bad("SRC and DST must not be empty");
  if (parts.size() == 3) {
    if (parts[2] == "ro") v.read_only = true;
    else if (parts[2] != "rw") return bad(fmt::format("unknown option \"{}\" (ro or rw)", util::printable(parts[2])));
  }
  if (src.front() != '/' && src.front() != '.' && src.front() != '~')
    return bad("named volumes are not supported: give a host path (./data, /srv/data)");
  if (src.front() == '~') return bad("'~' is not expanded here: give an absolute path");
  if (dst.front() != '/') return bad("DST must be an absolute path");
  std::filesystem::path s(src);
  v.source = normal_path(s.is_absolute() ? s : cwd / s);
  v.destination = normal_path(std::filesystem::path(dst));
  if (v.destination == "/") return bad("DST cannot be the container's root");
  for (auto c : util::split(dst, '/'))
    if (c == "..") return bad("DST must not contain \"..\"");
  return v;
}

Result<PortMap> parse_port(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error{fmt::format("-p {}: {}; the form is [IP:]HOST:CONTAINER[/tcp] or CONTAINER", util::printable(text), why)};
  };
  PortMap m;
  std::string_view spec = text;
  if (auto slash = spec.rfind('/'); slash != std::string_view::npos) {
    std::string proto = lower(spec.substr(slash + 1));
    if (proto == "udp" || proto == "sctp") return bad(fmt::format("only tcp is forwarded, not {}", proto));
    if (proto != "tcp") return bad(fmt::format("unknown protocol \"{}\"", util::printable(proto)));
    spec = spec.substr(0, slash);
  }
  std::vector<std::string_view> parts;
  if (!spec.empty() && spec.front() == '[') {  // [::1]:8080:80
    auto close = spec.find(']');
    if (close == std::string_view::npos) return bad("unclosed '[' in the address");
    m.host_ip = std::string(spec.substr(1, close - 1));
    std::string_view rest = spec.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return bad("expected ':' after the address");
    for (auto p : util::split(rest.substr(1), ':')) parts.push_back(p);
    if (parts.size() != 2) return bad("expected HOST:CONTAINER after the address");
  } else {
    for (auto p : util::split(spec, ':')) parts.push_back(p);
    if (parts.size() == 3) {
      m.host_ip = std::string(parts[0]);
      parts.erase(parts.begin());
    }
    if (parts.empty() || parts.size() > 2) return bad("expected one to three fields separated by ':'");
  }
  auto port = [&](std::string_view s, uint16_t& out) -> bool {
    uint64_t v = 0;
    if (!parse_uint(s, v) || v == 0 || v > 65535) return false;
    out = static_cast<uint16_t>(v);
    return true;
  };
  if (parts.size() == 1) {
    if (!port(parts[0], m.container_port)) return bad("the port must be a number from 1 to 65535");
    m.host_port = m.container_port;
  } else {
    if (!port(parts[0], m.host_port) || !port(parts[1], m.container_port))
      return bad("ports must be numbers from 1 to 65535 (ranges are not supported)");
  }
  if (parts.size() == 2 && m.host_ip.empty() && !spec.empty() && spec.front() == ':')
    return bad("empty address before ':'");
  return m;
}

Result<uint64_t> parse_size(std::string_view text, std::string_view flag) {
  auto bad = [&] {
    return Error{fmt::format("{} {}: not a size; give a number with an optional unit b, k, m, g or t (e.g. 8g)", flag,
                             util::printable(text))};
  };
  std::string s = lower(util::trim(text));
  if (s.empty()) return bad();
  uint64_t mult = 1;
  if (s.size() > 1 && s.back() == 'b' && std::isalpha(static_cast<unsigned char>(s[s.size() - 2]))) s.pop_back();
  switch (s.back()) {
    case 'b': mult = 1; s.pop_back(); break;
    case 'k': mult = uint64_t{1} << 10; s.pop_back(); break;
    case 'm': mult = uint64_t{1} << 20; s.pop_back(); break;
    case 'g': mult = uint64_t{1} << 30; s.pop_back(); break;
    case 't': mult = uint64_t{1} << 40; s.pop_back(); break;
    default: break;
  }
  if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s.front())))) return bad();
  uint64_t whole = 0;
  if (parse_uint(s, whole)) {
    if (whole == 0 || whole > UINT64_MAX / mult) return bad();
    return whole * mult;
  }
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(d) || d <= 0 || d * static_cast<double>(mult) > 1.8e19) return bad();
  auto v = static_cast<uint64_t>(d * static_cast<double>(mult));
  if (v == 0) return bad();
  return v;
}

Result<Ulimit> parse_ulimit(std::string_view text) {
  static const std::map<std::string, std::string, std::less<>> names = {
      {"as", "RLIMIT_AS"},         {"core", "RLIMIT_CORE"},       {"cpu", "RLIMIT_CPU"},
      {"data", "RLIMIT_DATA"},     {"fsize", "RLIMIT_FSIZE"},     {"locks", "RLIMIT_LOCKS"},
      {"memlock", "RLIMIT_MEMLOCK"}, {"msgqueue", "RLIMIT_MSGQUEUE"}, {"nice", "RLIMIT_NICE"},
      {"nofile", "RLIMIT_NOFILE"}, {"nproc", "RLIMIT_NPROC"},     {"rss", "RLIMIT_RSS"},
      {"rtprio", "RLIMIT_RTPRIO"}, {"rttime", "RLIMIT_RTTIME"},   {"sigpending", "RLIMIT_SIGPENDING"},
      {"stack", "RLIMIT_STACK"}};
  auto bad = [&](std::string_view why) {
    return Error{fmt::format("--ulimit {}: {}; the form is NAME=SOFT[:HARD] (e.g. nofile=1024:4096, memlock=-1)",
                             util::printable(text), why)};
  };
  auto eq = text.find('=');
  if (eq == std::string_view::npos) return bad("missing '='");
  auto it = names.find(lower(text.substr(0, eq)));
  if (it == names.end()) return bad(fmt::format("unknown limit \"{}\"", util::printable(text.substr(0, eq))));
  auto vals = util::split(text.substr(eq + 1), ':');
  if (vals.empty() || vals.size() > 2) return bad("expected SOFT or SOFT:HARD");
  auto value = [](std::string_view s, uint64_t& out) {
    if (s == "-1" || s == "unlimited") {
      out = UINT64_MAX;
      return true;
    }
    return parse_uint(s, out);
  };
  Ulimit u;
  u.name = it->second;
  if (!value(vals[0], u.soft)) return bad("the soft limit must be a number or -1");
  u.hard = u.soft;
  if (vals.size() == 2 && !value(vals[1], u.hard)) return bad("the hard limit must be a number or -1");
  if (u.soft > u.hard) return bad("the soft limit is above the hard limit");
  return u;
}

Result<UserSpec> parse_user(std::string_view text) {
  auto parts = util::split(text, ':');
  if (text.empty() || parts.size() > 2 || parts[0].empty() || (parts.size() == 2 && parts[1].empty()))
    return Error{fmt::format("-u {}: the form is USER[:GROUP], each a name or a number", util::printable(text))};
  UserSpec u;
  u.user = std::string(parts[0]);
  if (parts.size() == 2) u.group = std::string(parts[1]);
  return u;
}

std::optional<std::string> env_value(const std::vector<std::string>& env, std::string_view key) {
  for (const auto& kv : env)
    if (kv.size() > key.size() && kv.compare(0, key.size(), key) == 0 && kv[key.size()] == '=')
      return kv.substr(key.size() + 1);
  return std::nullopt;
}

Result<std::optional<std::string>> parse_env(std::string_view text, const std::vector<std::string>& host_env) {
  auto eq = text.find('=');
  std::string_view key = text.substr(0, eq);
  if (key.empty() || key.find_first_of(" \t\n\0"sv) != std::string_view::npos)
    return Error{fmt::format("-e {}: the form is KEY=VALUE (or KEY to pass this shell's value)", util::printable(text))};
  if (eq != std::string_view::npos) return std::optional<std::string>(std::string(text));
  if (auto v = env_value(host_env, key)) return std::optional<std::string>(fmt::format("{}={}", key, *v));
  return std::optional<std::string>();
}

Result<std::vector<std::string>> read_env_file(const std::filesystem::path& file, const std::vector<std::string>& host_env) {
  std::ifstream in(file);
  if (!in) return Error{fmt::format("--env-file {}: cannot read it; give an existing file of KEY=VALUE lines", file.string())};
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view t = util::trim(line);
    if (t.empty() || t.front() == '#') continue;
    auto r = parse_env(t, host_env);
    if (!r) return Error{fmt::format("--env-file {} line {}: {}", file.string(), n, r.message())};
    if (r.value()) out.push_back(**r);
  }
  if (in.bad()) return Error{fmt::format("--env-file {}: read error", file.string())};
  return out;
}

void merge_env(std::vector<std::string>& env, const std::vector<std::string>& add) {
  for (const auto& kv : add) {
    auto eq = kv.find('=');
    std::string_view key(kv.data(), eq == std::string::npos ? kv.size() : eq);
    bool replaced = false;
    for (auto& old : env)
      if (old.size() > key.size() && old.compare(0, key.size(), key) == 0 && old[key.size()] == '=') {
        old = kv;
        replaced = true;
        break;
      }
    if (!replaced) env.push_back(kv);
  }
}

}  // namespace envsnap::run
