#pragma once
// What `envsnap run` is asked to do, parsed from its flags: volumes, ports, sizes,
// ulimits, users and environment files. Parsing is pure (no file system access except
// where a function says so), so each rule is unit-tested; every error names the flag
// and the offending value and says what form is expected.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/util/result.hpp"

namespace envsnap::run {

struct Volume {
  std::string source;       // absolute host path
  std::string destination;  // absolute container path
  bool read_only = false;
};

struct PortMap {
  std::string host_ip;  // empty: every address (0.0.0.0)
  uint16_t host_port = 0;
  uint16_t container_port = 0;
  std::string protocol = "tcp";
};

struct Ulimit {
  std::string name;  // the OCI name, e.g. RLIMIT_NOFILE
  uint64_t soft = 0, hard = 0;
};

struct UserSpec {
  std::string user, group;  // as given: a name or a number; group may be empty
};

// -v SRC:DST[:ro|rw]. SRC must be a path (absolute, or relative to CWD): named volumes
// are not supported. DST must be absolute. Does not check that SRC exists.
util::Result<Volume> parse_volume(std::string_view text, const std::filesystem::path& cwd);

// -p [IP:]HOST:CTR[/tcp] or -p CTR (the same number on both sides).
util::Result<PortMap> parse_port(std::string_view text);

// --shm-size 64m, 2g, 1073741824, 512k, 1.5g (binary units, b/k/m/g/t, case-insensitive).
util::Result<uint64_t> parse_size(std::string_view text, std::string_view flag);

// --ulimit nofile=1024[:2048], memlock=-1 (unlimited); names as docker's.
util::Result<Ulimit> parse_ulimit(std::string_view text);

// -u USER[:GROUP] with names or numbers.
util::Result<UserSpec> parse_user(std::string_view text);

// -e K=V gives K=V; -e K takes K from HOST_ENV (absent: the variable is left out).
util::Result<std::optional<std::string>> parse_env(std::string_view text, const std::vector<std::string>& host_env);

// The K=V lines of an --env-file (blank lines and # comments skipped, "K" alone taken
// from HOST_ENV as -e does). Errors name FILE and the line.
util::Result<std::vector<std::string>> read_env_file(const std::filesystem::path& file,
                                                     const std::vector<std::string>& host_env);

// Puts each K=V of ADD into ENV, replacing an earlier value of K in place.
void merge_env(std::vector<std::string>& env, const std::vector<std::string>& add);

// The value of K in ENV, if set.
std::optional<std::string> env_value(const std::vector<std::string>& env, std::string_view key);

}  // namespace envsnap::run
