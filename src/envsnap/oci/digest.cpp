#include "envsnap/oci/digest.hpp"

#include <fmt/format.h>

#include "envsnap/util/sha256.hpp"

namespace envsnap::oci {

util::Result<Digest> Digest::parse(std::string_view text) {
  if (!text.starts_with("sha256:") || text.size() != 7 + 64)
    return util::Error{fmt::format("'{}' is not a sha256 digest (sha256:<64 hex digits>)", text)};
  for (char c : text.substr(7))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return util::Error{fmt::format("'{}' is not a sha256 digest (sha256:<64 hex digits>)", text)};
  Digest d;
  d.m_hex = std::string(text.substr(7));
  return d;
}

Digest Digest::from_hex(std::string hex) {
  Digest d;
  d.m_hex = std::move(hex);
  return d;
}

Digest Digest::of(std::string_view bytes) { return from_hex(util::sha256_hex(bytes)); }

nlohmann::json Descriptor::to_json() const {
  nlohmann::json j = {{"mediaType", media_type}, {"digest", digest.str()}, {"size", size}};
  if (!annotations.empty()) j["annotations"] = annotations;
  if (!platform_os.empty()) j["platform"] = {{"os", platform_os}, {"architecture", platform_arch}};
  return j;
}

util::Result<Descriptor> Descriptor::from_json(const nlohmann::json& j, std::string_view where) {
  if (!j.is_object() || !j.contains("digest") || !j["digest"].is_string() || !j.contains("size") ||
      !j["size"].is_number_integer())
    return util::Error{fmt::format("{}: malformed descriptor (digest and size are required)", where)};
  auto d = Digest::parse(j["digest"].get<std::string>());
  if (!d) return util::Error{fmt::format("{}: {}", where, d.message())};
  Descriptor out;
  out.digest = *d;
  out.size = j["size"].get<int64_t>();
  if (out.size < 0) return util::Error{fmt::format("{}: negative size", where)};
  if (j.contains("mediaType") && j["mediaType"].is_string()) out.media_type = j["mediaType"].get<std::string>();
  if (j.contains("annotations") && j["annotations"].is_object())
    for (auto& [k, v] : j["annotations"].items())
      if (v.is_string()) out.annotations[k] = v.get<std::string>();
  if (j.contains("platform") && j["platform"].is_object()) {
    out.platform_os = j["platform"].value("os", "");
    out.platform_arch = j["platform"].value("architecture", "");
  }
  return out;
}

std::string oci_arch(std::string_view machine) {
  if (machine == "x86_64") return "amd64";
  if (machine == "aarch64") return "arm64";
  if (machine == "ppc64le") return "ppc64le";
  if (machine == "s390x") return "s390x";
  if (machine == "i686" || machine == "i386") return "386";
  if (machine.empty()) return "amd64";
  return std::string(machine);
}

}  // namespace envsnap::oci
