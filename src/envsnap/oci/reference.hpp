#pragma once
// Local store references: NAME[:TAG] or NAME@sha256:<hex>. A name is lowercase
// [a-z0-9] components separated by '.', '_', '__', '-' or '/', as OCI distribution
// allows; the tag defaults to "latest".

#include <optional>
#include <string>
#include <string_view>

#include "envsnap/oci/digest.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::oci {

struct Reference {
  std::string name;
  std::string tag;                // empty when a digest is given
  std::optional<Digest> digest;

  // "name:tag" or "name@sha256:..."
  std::string str() const;
};

util::Result<Reference> parse_reference(std::string_view text);

}  // namespace envsnap::oci
