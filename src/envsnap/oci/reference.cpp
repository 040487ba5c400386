#include "envsnap/oci/reference.hpp"

#include <regex>

#include <fmt/format.h>

namespace envsnap::oci {

std::string Reference::str() const { return digest ? name + "@" + digest->str() : name + ":" + tag; }

util::Result<Reference> parse_reference(std::string_view text) {
  static const std::regex name_re(R"([a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*)");
  static const std::regex tag_re(R"([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})");
  Reference r;
  std::string_view rest = text;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    auto d = Digest::parse(rest.substr(at + 1));
    if (!d) return util::Error{fmt::format("reference '{}': {}", text, d.message())};
    r.digest = *d;
    rest = rest.substr(0, at);
  } else {
    auto colon = rest.rfind(':');
    auto slash = rest.rfind('/');
    if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
      r.tag = std::string(rest.substr(colon + 1));
      rest = rest.substr(0, colon);
      if (!std::regex_match(r.tag, tag_re))
        return util::Error{fmt::format("reference '{}': '{}' is not a valid tag ([A-Za-z0-9_.-], at most 128)", text, r.tag)};
    } else {
      r.tag = "latest";
    }
  }
  r.name = std::string(rest);
  if (r.name.empty() || r.name.size() > 255 || !std::regex_match(r.name, name_re))
    return util::Error{fmt::format("reference '{}': '{}' is not a valid name (lowercase letters, digits, "
                                   "and . _ - / between them)", text, r.name)};
  return r;
}

}  // namespace envsnap::oci
