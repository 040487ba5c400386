#include "envsnap/image/secrets.hpp"

#include <cctype>

#include "envsnap/image/glob.hpp"

namespace envsnap::image {

namespace {

struct HomeSecret {
  const char* rel;
  const char* kind;
};

constexpr HomeSecret k_home_secrets[] = {
    {".ssh", "SSH keys"},
    {".docker/config.json", "Docker credentials"},
    {".netrc", "netrc credentials"},
    {".git-credentials", "Git credentials"},
    {".config/git/credentials", "Git credentials"},
    {".aws", "AWS credentials"},
    {".config/gcloud", "Google Cloud credentials"},
    {".kube", "Kubernetes credentials"},
    {".azure", "Azure credentials"},
    {".cache/huggingface/token", "Hugging Face token"},
    {".cache/huggingface/stored_tokens", "Hugging Face token"},
    {".huggingface/token", "Hugging Face token"},
    {".config/wandb", "Weights & Biases credentials"},
    {".pypirc", "PyPI credentials"},
    {".gnupg", "GnuPG keys"},
    {".config/gh/hosts.yml", "GitHub CLI token"},
    {".kaggle/kaggle.json", "Kaggle credentials"},
};

std::string_view basename(std::string_view path) {
  auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::optional<std::string> secret_kind(std::string_view path, const std::vector<std::string>& homes) {
  auto name = basename(path);
  if (name == ".git-credentials") return std::string("Git credentials");
  if (path.starts_with("/etc/ssh/ssh_host_") && path.ends_with("_key") && path.find('/', 9) == std::string_view::npos)
    return std::string("SSH host keys");
  for (const auto& home : homes) {
    std::string_view h = home;
    if (h == "/") h = "";
    if (path.size() <= h.size() + 1 || !path.starts_with(h) || path[h.size()] != '/') continue;
    auto rel = path.substr(h.size() + 1);
    for (const auto& s : k_home_secrets)
      if (rel == s.rel) return std::string(s.kind);
  }
  return std::nullopt;
}

Sanitiser sanitiser_for(std::string_view path) {
  if (path == "/etc/shadow" || path == "/etc/gshadow" || path == "/etc/shadow-" || path == "/etc/gshadow-")
    return Sanitiser::shadow;
  if (path == "/etc/machine-id" || path == "/var/lib/dbus/machine-id") return Sanitiser::machine_id;
  auto name = basename(path);
  if (name == "pip.conf" || name == ".condarc" || path == "/etc/conda/condarc" || path == "/etc/xdg/pip/pip.conf")
    return Sanitiser::url_credentials;
  return Sanitiser::none;
}

std::string lock_passwords(std::string_view shadow) {
  std::string out;
  out.reserve(shadow.size());
  size_t i = 0;
  while (i < shadow.size()) {
    size_t end = shadow.find('\n', i);
    size_t stop = end == std::string_view::npos ? shadow.size() : end;
    auto line = shadow.substr(i, stop - i);
    auto c1 = line.find(':');
    auto c2 = c1 == std::string_view::npos ? std::string_view::npos : line.find(':', c1 + 1);
    if (c1 != std::string_view::npos) {
      auto pw = c2 == std::string_view::npos ? line.substr(c1 + 1) : line.substr(c1 + 1, c2 - c1 - 1);
      if (pw.empty() || pw == "*" || pw == "!" || pw == "!!") {
        out += line;
      } else {
        out += line.substr(0, c1 + 1);
        out += '!';
        if (c2 != std::string_view::npos) out += line.substr(c2);
      }
    } else {
      out += line;
    }
    if (end != std::string_view::npos) out += '\n';
    i = stop + 1;
  }
  return out;
}

std::string remove_url_credentials(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    auto sep = text.find("://", i);
    if (sep == std::string_view::npos) break;
    size_t s = sep;
    while (s > i && (std::isalnum(static_cast<unsigned char>(text[s - 1])) || text[s - 1] == '+' ||
                     text[s - 1] == '-' || text[s - 1] == '.'))
      --s;
    size_t auth = sep + 3;
    size_t j = auth;
    while (j < text.size() && text[j] != '/' && text[j] != '@' && text[j] != '?' && text[j] != '#' &&
           !std::isspace(static_cast<unsigned char>(text[j])) && text[j] != '"' && text[j] != '\'')
      ++j;
    out += text.substr(i, auth - i);
    if (s < sep && j < text.size() && text[j] == '@') {
      i = j + 1;
    } else {
      i = auth;
    }
  }
  out += text.substr(i);
  return out;
}

}  // namespace envsnap::image
