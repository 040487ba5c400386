#pragma once
// Which files of a root are secrets (left out of every layer) and how the few that
// must stay are sanitised in place (password hashes locked, machine ids emptied,
// credentials removed from package-index URLs).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace envsnap::image {

// The kind of secret that in-root PATH is ("SSH keys", "AWS credentials"...), or
// nothing. HOMES are the in-root home directories ("/root", "/home/me").
std::optional<std::string> secret_kind(std::string_view path, const std::vector<std::string>& homes);

enum class Sanitiser { none, shadow, machine_id, url_credentials };

// How in-root PATH, a regular file, is sanitised when packed.
Sanitiser sanitiser_for(std::string_view path);

// /etc/shadow or /etc/gshadow (or their "-" backups) with every password field that is not already locked
// ("*", "!", "!!" or empty) replaced by "!".
std::string lock_passwords(std::string_view shadow);

// TEXT with the "user:password@" part of every "scheme://user:password@host" removed.
std::string remove_url_credentials(std::string_view text);

}  // namespace envsnap::image
