#include "envsnap/probe/environment.hpp"

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

bool is_training_variable(std::string_view name) {
  static constexpr std::array prefixes = {"CUDA_",   "NCCL_",    "CUBLAS_", "CUBLASLT_", "CUDNN_", "TORCH_",
                                          "PYTORCH_", "OMP_",    "MKL_",    "OPENBLAS_", "NVIDIA_", "CUPY_",
                                          "TF_ENABLE_", "TF_DETERMINISTIC", "TF_CUDNN_", "TF_GPU_", "TF_FORCE_GPU", "XLA_",    "KMP_",    "GOMP_",     "NVTE_",  "TRITON_",
                                          "HF_",      "TRANSFORMERS_", "ONEDNN_", "DNNL_", "YOLO_", "ULTRALYTICS_"};
  static constexpr std::array exact = {"PYTHONHASHSEED", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH",
                                       "CUBLAS_WORKSPACE_CONFIG", "WORLD_SIZE", "LOCAL_RANK", "RANK",
                                       "MASTER_ADDR", "MASTER_PORT", "PYTHONOPTIMIZE"};
  for (auto p : prefixes)
    if (name.starts_with(p)) return true;
  for (auto e : exact)
    if (name == e) return true;
  return false;
}

bool is_secret_name(std::string_view name) {
  auto upper = util::to_lower(name);
  static constexpr std::array markers = {"token", "secret", "password", "passwd", "credential", "auth",
                                         "apikey", "api_key", "private", "session"};
  for (auto m : markers)
    if (upper.find(m) != std::string::npos) return true;
  // KEY as a word: AWS_ACCESS_KEY_ID, SOME_KEY, KEY; not MONKEY or KEYBOARD.
  static const std::regex key_word("(^|_)key($|_)", std::regex::icase);
  return std::regex_search(std::string(name), key_word);
}

std::string strip_url_credentials(std::string_view value) {
  static const std::regex userinfo(R"(([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@)");
  static const std::regex query_secret(R"(((?:token|key|secret|password|sig|signature)=)[^&\s]+)",
                                       std::regex::icase);
  std::string out = std::regex_replace(std::string(value), userinfo, "$1<redacted>@");
  return std::regex_replace(out, query_secret, "$1<redacted>");
}

std::string remove_url_credentials(std::string_view url) {
  auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::string(url);
  auto auth_begin = scheme_end + 3;
  auto auth_end = url.find_first_of("/?#", auth_begin);
  if (auth_end == std::string_view::npos) auth_end = url.size();
  auto at = url.substr(auth_begin, auth_end - auth_begin).rfind('@');
  if (at == std::string_view::npos) return std::string(url);
  return std::string(url.substr(0, auth_begin)) + std::string(url.substr(auth_begin + at + 1));
}

void redact(std::map<std::string, std::string>& env) {
  for (auto& [k, v] : env) {
    if (is_secret_name(k))
      v = std::string(redacted);
    else
      v = strip_url_credentials(v);
  }
}

std::map<std::string, std::string> training_environment(char** envp) {
  std::map<std::string, std::string> env;
  for (char** e = envp; e && *e; ++e) {
    std::string_view kv = *e;
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    auto name = kv.substr(0, eq);
    if (is_training_variable(name)) env[std::string(name)] = std::string(kv.substr(eq + 1));
  }
  redact(env);
  return env;
}

util::Result<void> add_assignments(std::map<std::string, std::string>& env, const std::vector<std::string>& kvs,
                                   std::string_view origin) {
  for (auto& kv : kvs) {
    auto eq = kv.find('=');
    if (eq == 0 || eq == std::string::npos)
      return util::Error{fmt::format("{}: '{}' is not of the form NAME=VALUE", origin, util::printable(kv))};
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  redact(env);
  return {};
}

util::Result<std::vector<std::string>> read_env_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return util::Error{fmt::format("--env-file {}: not a readable file; give a file of NAME=VALUE lines", path)};
  std::ifstream in(path, std::ios::binary);
  if (!in) return util::Error{fmt::format("--env-file {}: {}", path, std::strerror(errno))};
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto t = util::trim(line);
    if (t.empty() || t.front() == '#') continue;
    if (t.starts_with("export ")) t = util::trim(t.substr(7));
    auto eq = t.find('=');
    if (eq == 0 || eq == std::string_view::npos)
      return util::Error{fmt::format("{}:{}: expected NAME=VALUE", path, n)};
    std::string value(t.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front())
      value = value.substr(1, value.size() - 2);
    out.push_back(std::string(t.substr(0, eq)) + "=" + value);
  }
  return out;
}

}  // namespace envsnap::probe
