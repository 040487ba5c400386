#include "envsnap/registry/auth.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "envsnap/registry/reference.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/strings.hpp"

extern char** environ;

namespace envsnap::registry {

namespace fs = std::filesystem;

namespace {

bool is_tchar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("!#$%&'*+-.^_`|~/", c) != nullptr;
}

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

fs::path home_dir() {
  if (auto h = env("HOME")) return *h;
  if (auto* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return pw->pw_dir;
  return "/";
}

std::optional<std::string> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The entry of auths whose key names host ("host", "https://host", "host/v2/").
const nlohmann::json* find_auth_entry(const nlohmann::json& doc, const std::string& host) {
  if (!doc.is_object() || !doc.contains("auths") || !doc["auths"].is_object()) return nullptr;
  for (auto& [key, value] : doc["auths"].items()) {
    auto k = normalize_host(key);
    if (k && *k == host && value.is_object()) return &value;
  }
  return nullptr;
}

std::optional<Credentials> credentials_from_entry(const nlohmann::json& entry, const fs::path& file) {
  if (entry.contains("auth") && entry["auth"].is_string()) {
    auto decoded = base64_decode(entry["auth"].get<std::string>());
    if (!decoded) return std::nullopt;
    auto colon = decoded->find(':');
    if (colon == std::string::npos) return std::nullopt;
    return Credentials{decoded->substr(0, colon), decoded->substr(colon + 1), file.string()};
  }
  if (entry.contains("username") && entry["username"].is_string() && entry.contains("password") &&
      entry["password"].is_string())
    return Credentials{entry["username"].get<std::string>(), entry["password"].get<std::string>(), file.string()};
  return std::nullopt;
}

std::optional<nlohmann::json> load_json(const fs::path& p) {
  if (p.empty()) return std::nullopt;
  auto text = read_file(p);
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

util::Result<void> make_private_dirs(const fs::path& dir) {
  if (dir.empty()) return {};
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) return {};
  if (auto r = make_private_dirs(dir.parent_path()); !r) return r;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return util::Error{fmt::format("cannot create {}: {}", dir.string(), std::strerror(errno))};
  return {};
}

util::Result<void> write_private_file(const fs::path& file, const std::string& bytes) {
  if (auto r = make_private_dirs(file.parent_path()); !r) return r;
  fs::path tmp = file;
  tmp += fmt::format(".tmp-{}", ::getpid());
  util::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return util::Error{fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno))};
  size_t off = 0;
  while (off < bytes.size()) {
    auto n = ::write(fd.get(), bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      return util::Error{fmt::format("cannot write {}: {}", tmp.string(), std::strerror(err))};
    }
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), 0600) != 0 || ::fsync(fd.get()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return util::Error{fmt::format("cannot write {}: {}", tmp.string(), std::strerror(err))};
  }
  fd.reset();
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return util::Error{fmt::format("cannot write {}: {}", file.string(), std::strerror(err))};
  }
  return {};
}

util::Result<nlohmann::json> load_for_update(const fs::path& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) return nlohmann::json::object();
  auto text = read_file(file);
  if (!text) return util::Error{fmt::format("cannot read {}", file.string())};
  if (util::trim(*text).empty()) return nlohmann::json::object();
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return util::Error{fmt::format("{} is not a JSON object; fix or remove it", file.string())};
  return j;
}

}  // namespace

std::vector<Challenge> parse_www_authenticate(std::string_view h) {
  std::vector<Challenge> out;
  size_t i = 0, n = h.size();
  auto skip_ws = [&] {
    while (i < n && (h[i] == ' ' || h[i] == '\t')) ++i;
  };
  while (i < n) {
    skip_ws();
    while (i < n && (h[i] == ',' || h[i] == ' ' || h[i] == '\t')) ++i;
    if (i >= n) break;
    size_t start = i;
    while (i < n && is_tchar(h[i])) ++i;
    if (i == start) {
      ++i;  // a stray character: skip it
      continue;
    }
    std::string token(h.substr(start, i - start));
    skip_ws();
    if (i < n && h[i] == '=' && !out.empty()) {
      ++i;
      skip_ws();
      std::string value;
      if (i < n && h[i] == '"') {
        ++i;
        while (i < n && h[i] != '"') {
          if (h[i] == '\\' && i + 1 < n) ++i;
          value += h[i++];
        }
        if (i < n) ++i;  // closing quote
      } else {
        size_t vs = i;
        while (i < n && h[i] != ',' && h[i] != ' ' && h[i] != '\t') ++i;
        value = std::string(h.substr(vs, i - vs));
      }
      out.back().params[util::to_lower(token)] = std::move(value);
    } else if (i < n && h[i] == '=') {
      ++i;  // key=value before any scheme: malformed, skip the value
    } else {
      out.push_back(Challenge{util::to_lower(token), {}});
    }
  }
  return out;
}

std::string base64_encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  std::string clean;
  for (char c : text)
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') clean += c;
  if (clean.size() % 4 != 0) return std::nullopt;
  if (clean.empty()) return std::string();
  size_t pad = 0;
  if (clean.back() == '=') ++pad;
  if (clean.size() >= 2 && clean[clean.size() - 2] == '=') ++pad;
  if (clean.find('=') < clean.size() - pad) return std::nullopt;
  std::string out(3 * clean.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

fs::path envsnap_auth_file() {
  if (auto f = env("ENVSNAP_AUTH_FILE")) return *f;
  if (auto x = env("XDG_CONFIG_HOME")) return fs::path(*x) / "envsnap" / "auth.json";
  return home_dir() / ".config" / "envsnap" / "auth.json";
}

CredentialSources credential_sources_from_env() {
  CredentialSources s;
  s.env_user = env("ENVSNAP_REGISTRY_USER");
  s.env_password = env("ENVSNAP_REGISTRY_PASSWORD");
  s.envsnap_auth = envsnap_auth_file();
  if (auto f = env("REGISTRY_AUTH_FILE"))
    s.containers_auth = *f;
  else if (auto r = env("XDG_RUNTIME_DIR"))
    s.containers_auth = fs::path(*r) / "containers" / "auth.json";
  if (auto d = env("DOCKER_CONFIG"))
    s.docker_config = fs::path(*d) / "config.json";
  else
    s.docker_config = home_dir() / ".docker" / "config.json";
  return s;
}

std::optional<Credentials> run_credential_helper(const std::string& helper, const std::string& host) {
  if (helper.empty() || helper.find('/') != std::string::npos) return std::nullopt;
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return std::nullopt;
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    return std::nullopt;
  }
  util::UniqueFd in_r(in_pipe[0]), in_w(in_pipe[1]), out_r(out_pipe[0]), out_w(out_pipe[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_r.get(), 0);
  posix_spawn_file_actions_adddup2(&fa, out_w.get(), 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  std::string prog = "docker-credential-" + helper;
  std::string verb = "get";
  char* argv[] = {prog.data(), verb.data(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, prog.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return std::nullopt;
  in_r.reset();
  out_w.reset();
  struct sigaction ign{}, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  std::string input = host + "\n";
  [[maybe_unused]] auto w = ::write(in_w.get(), input.data(), input.size());
  in_w.reset();
  ::sigaction(SIGPIPE, &old, nullptr);
  std::string out;
  char buf[4096];
  while (true) {
    auto n = ::read(out_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("Username") || !j["Username"].is_string() ||
      !j.contains("Secret") || !j["Secret"].is_string())
    return std::nullopt;
  return Credentials{j["Username"].get<std::string>(), j["Secret"].get<std::string>(), prog};
}

std::optional<Credentials> find_credentials(const std::string& host, const CredentialSources& s) {
  if (s.env_user && s.env_password)
    return Credentials{*s.env_user, *s.env_password, "ENVSNAP_REGISTRY_USER/ENVSNAP_REGISTRY_PASSWORD"};
  for (const fs::path& file : {s.envsnap_auth, s.containers_auth}) {
    auto doc = load_json(file);
    if (!doc) continue;
    if (auto* e = find_auth_entry(*doc, host))
      if (auto c = credentials_from_entry(*e, file)) return c;
  }
  auto doc = load_json(s.docker_config);
  if (!doc) return std::nullopt;
  if (doc->contains("credHelpers") && (*doc)["credHelpers"].is_object())
    for (auto& [key, value] : (*doc)["credHelpers"].items()) {
      auto k = normalize_host(key);
      if (k && *k == host && value.is_string()) return run_credential_helper(value.get<std::string>(), host);
    }
  if (auto* e = find_auth_entry(*doc, host))
    if (auto c = credentials_from_entry(*e, s.docker_config)) return c;
  if (doc->contains("credsStore") && (*doc)["credsStore"].is_string())
    return run_credential_helper((*doc)["credsStore"].get<std::string>(), host);
  return std::nullopt;
}

util::Result<void> save_credentials(const fs::path& file, const std::string& host, const Credentials& creds) {
  auto doc = load_for_update(file);
  if (!doc) return util::Error{doc.message()};
  auto& j = *doc;
  if (!j.contains("auths") || !j["auths"].is_object()) j["auths"] = nlohmann::json::object();
  nlohmann::json kept = nlohmann::json::object();
  for (auto& [key, value] : j["auths"].items()) {
    auto k = normalize_host(key);
    if (!(k && *k == host)) kept[key] = value;
  }
  kept[host] = {{"auth", base64_encode(creds.user + ":" + creds.password)}};
  j["auths"] = std::move(kept);
  return write_private_file(file, j.dump(2) + "\n");
}

util::Result<bool> remove_credentials(const fs::path& file, const std::string& host) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) return false;
  auto doc = load_for_update(file);
  if (!doc) return util::Error{doc.message()};
  auto& j = *doc;
  if (!j.contains("auths") || !j["auths"].is_object()) return false;
  nlohmann::json kept = nlohmann::json::object();
  bool removed = false;
  for (auto& [key, value] : j["auths"].items()) {
    auto k = normalize_host(key);
    if (k && *k == host)
      removed = true;
    else
      kept[key] = value;
  }
  if (!removed) return false;
  j["auths"] = std::move(kept);
  if (auto r = write_private_file(file, j.dump(2) + "\n"); !r) return util::Error{r.message()};
  return true;
}

}  // namespace envsnap::registry
