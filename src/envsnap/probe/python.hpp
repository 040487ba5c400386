#pragma once
// The Python environments of a root: each site-packages / dist-packages directory
// in the usual places (system, /usr/local, conda, venvs, pyenv) and those named with
// --python, with the distributions installed in it, read from their metadata files.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

// One installed distribution; an empty string is an absent fact.
struct Distribution {
  std::string name, version, installer, direct_url, vcs_commit, record_digest;
};

// One site-packages / dist-packages directory. path is root-relative, raw bytes.
struct PythonEnvironment {
  std::string path, kind, python;
  std::vector<Distribution> distributions;
};

// Finds every Python environment in the usual places of the root, without walking the
// whole tree, plus extra_paths (an interpreter, a prefix or a site-packages directory,
// root-relative; kind "extra"). Sorted by path; an environment reached twice is listed once.
std::vector<PythonEnvironment> probe_python(const Context& ctx, const std::vector<std::string>& extra_paths);

// The "python" environment object of docs/lock-format.md; bytes that are not UTF-8 become \xNN.
nlohmann::json to_json(const PythonEnvironment& env);

// Parses the RFC-822-style headers of a METADATA / PKG-INFO file: stops at the first blank
// line or non-header line; a continuation line is appended to the previous value after '\n'.
std::vector<std::pair<std::string, std::string>> parse_metadata_headers(std::string_view text);

// PEP 503 normalised name: lowercase, each run of '-', '_' and '.' becomes one '-'.
std::string normalize_dist_name(std::string_view name);

}  // namespace envsnap::probe
