#pragma once
// Environment variables that change how training behaves (CUDA_*, NCCL_*, OMP_*...),
// with secrets redacted: a secret-looking name keeps its name with the value
// "<redacted>", and credentials inside URLs are replaced.

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/util/result.hpp"

namespace envsnap::probe {

inline constexpr std::string_view redacted = "<redacted>";

// True when NAME is one of the variables a lock records.
bool is_training_variable(std::string_view name);
// True when NAME looks like it holds a secret (TOKEN, KEY, SECRET, PASSWORD...).
bool is_secret_name(std::string_view name);
// VALUE with user:password@ in any URL replaced by <redacted>@, and bearer-like
// tokens after "token=" / "key=" removed.
std::string strip_url_credentials(std::string_view value);

// The recorded, redacted variables from the capturing process's environment.
std::map<std::string, std::string> training_environment(char** envp);
// Adds K=V assignments (from --env); an error names the bad argument. Every
// assignment is kept, not only training variables: the user asked for it.
util::Result<void> add_assignments(std::map<std::string, std::string>& env, const std::vector<std::string>& kvs,
                                   std::string_view origin);
// URL without its userinfo (user:password@), for remotes and direct URLs.
std::string remove_url_credentials(std::string_view url);
// Reads a docker-style env file (K=V lines, # comments, blank lines).
util::Result<std::vector<std::string>> read_env_file(const std::string& path);
// Redacts in place: secret names and URL credentials.
void redact(std::map<std::string, std::string>& env);

}  // namespace envsnap::probe
