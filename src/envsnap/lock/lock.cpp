#include "envsnap/lock/lock.hpp"

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "envsnap/util/sha256.hpp"

namespace envsnap::lock {

std::string canonical(const nlohmann::json& value) {
  // nlohmann's object type is a std::map: dump() writes keys in sorted byte order.
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string compute_digest(const nlohmann::json& lock) { return "sha256:" + util::sha256_hex(canonical(lock)); }

LockDocument make_document(nlohmann::json lock, nlohmann::json captured) {
  LockDocument doc;
  doc.digest = compute_digest(lock);
  doc.lock = std::move(lock);
  doc.captured = std::move(captured);
  return doc;
}

std::string serialize(const LockDocument& doc) {
  // Written by hand around the canonical lock bytes so that the digest can be
  // checked against the exact bytes of the file.
  return fmt::format("{{\"lockVersion\":{},\"digest\":{},\"captured\":{},\"lock\":{}}}\n", lock_version,
                     nlohmann::json(doc.digest).dump(), canonical(doc.captured), canonical(doc.lock));
}

util::Result<LockDocument> parse(std::string_view bytes, std::string_view name) {
  nlohmann::json j = nlohmann::json::parse(bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return util::Error{fmt::format("{}: not a lock file (not a JSON object)", name)};
  if (!j.contains("lockVersion") || !j["lockVersion"].is_number_integer())
    return util::Error{fmt::format("{}: not a lock file (no lockVersion)", name)};
  if (j["lockVersion"].get<int>() != lock_version)
    return util::Error{fmt::format("{}: lock version {} is not supported by this envsnap (it reads version {})",
                                   name, j["lockVersion"].dump(), lock_version)};
  if (!j.contains("lock") || !j["lock"].is_object() || !j.contains("digest") || !j["digest"].is_string())
    return util::Error{fmt::format("{}: malformed lock file: \"lock\" or \"digest\" is missing", name)};
  LockDocument doc;
  doc.lock = std::move(j["lock"]);
  doc.captured = j.contains("captured") ? std::move(j["captured"]) : nlohmann::json::object();
  doc.digest = j["digest"].get<std::string>();
  auto actual = compute_digest(doc.lock);
  if (actual != doc.digest)
    return util::Error{fmt::format("{}: the lock does not match its digest ({} recorded, {} computed): "
                                   "the file was edited or damaged; capture it again",
                                   name, doc.digest, actual)};
  return doc;
}

util::Result<LockDocument> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return util::Error{fmt::format("cannot read lock file {}: no such file or not readable", path.string())};
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path.string());
}

bool looks_like_lock_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char head[64] = {};
  in.read(head, sizeof head - 1);
  std::string_view s(head, static_cast<size_t>(in.gcount()));
  auto p = s.find_first_not_of(" \t\r\n");
  return p != std::string_view::npos && s[p] == '{' && s.find("lockVersion") != std::string_view::npos;
}

}  // namespace envsnap::lock
