#pragma once
// The lock document: the digested environment ("lock") plus per-capture facts
// ("captured") that stay outside the digest. The digest is the SHA-256 of the
// canonical bytes of "lock" (compact, sorted keys, integers only), and the file
// stores "lock" in exactly those bytes. See docs/lock-format.md.

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "envsnap/util/result.hpp"

namespace envsnap::lock {

inline constexpr int lock_version = 1;

struct LockDocument {
  nlohmann::json lock;      // the environment, digested
  nlohmann::json captured;  // at, root, envsnap, warnings: not digested
  std::string digest;       // "sha256:<hex>"
};

// Canonical serialisation: compact, keys sorted, UTF-8 kept (probes escape invalid bytes first).
std::string canonical(const nlohmann::json& value);
// "sha256:" + SHA-256 of canonical(lock).
std::string compute_digest(const nlohmann::json& lock);

// Builds a document from a lock, computing its digest.
LockDocument make_document(nlohmann::json lock, nlohmann::json captured);
// The whole file's bytes: lockVersion, digest, captured, then lock in canonical form.
std::string serialize(const LockDocument& doc);
// Parses a lock file's bytes; checks the version and that the digest matches "lock".
util::Result<LockDocument> parse(std::string_view bytes, std::string_view name_for_messages);
util::Result<LockDocument> read_file(const std::filesystem::path& path);
// True when the file looks like a lock (a JSON object with lockVersion), for argument resolution.
bool looks_like_lock_file(const std::filesystem::path& path);

}  // namespace envsnap::lock
