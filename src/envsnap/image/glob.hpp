#pragma once
// Shell-style patterns over in-root paths, as --include/--exclude and .envsnapignore
// take them: '**' as a whole component matches any number of components (none
// included), '*' any part of one component, '?' one character, [abc]/[!a-z] a class,
// '\' escapes. A pattern is anchored at the root whether or not it starts with '/'.

#include <string>
#include <string_view>
#include <vector>

namespace envsnap::image {

class Glob {
public:
  explicit Glob(std::string_view pattern);

  // The pattern as given.
  const std::string& text() const { return m_text; }
  // True when the pattern has no wildcard: it names exactly one path.
  bool literal() const { return m_literal; }
  // The normalised in-root path of a literal pattern ("/root/.ssh").
  std::string literal_path() const;
  // True when PATH (in-root, with or without a leading '/') matches as a whole.
  bool matches(std::string_view path) const;
  // True when some path strictly below directory DIR could match.
  bool may_match_below(std::string_view dir) const;

private:
  std::string m_text;
  std::vector<std::string> m_parts;
  bool m_literal = true;
};

// True when NAME (one path component) matches PATTERN (one component, no '/').
bool match_component(std::string_view pattern, std::string_view name);

// The components of an in-root path, without empty ones and ".".
std::vector<std::string_view> path_components(std::string_view path);

}  // namespace envsnap::image
