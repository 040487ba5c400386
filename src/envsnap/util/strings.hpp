#pragma once
// Small string helpers that the standard library lacks.

#include <string>
#include <string_view>
#include <vector>

namespace envsnap::util {

std::string_view trim(std::string_view s);
std::vector<std::string_view> split(std::string_view s, char sep);
// Splits into lines; a trailing newline does not make an empty last line.
std::vector<std::string_view> lines(std::string_view s);
std::string to_lower(std::string_view s);
bool iequals(std::string_view a, std::string_view b);
// True when s is valid UTF-8.
bool is_utf8(std::string_view s);
// s with every byte that is not printable UTF-8 replaced by \xNN, for messages and JSON.
std::string printable(std::string_view s);
// Compares version strings the way dpkg does (epoch, upstream, revision).
int compare_versions(std::string_view a, std::string_view b);

}  // namespace envsnap::util
