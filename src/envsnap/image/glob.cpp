#include "envsnap/image/glob.hpp"

namespace envsnap::image {

namespace {

// Matches one class at P[i] ('[' already seen at P[i-1]) against C; sets I past ']'.
// Returns -1 when the class is not closed (the '[' is then a literal character).
int match_class(std::string_view p, size_t& i, unsigned char c) {
  size_t j = i;
  bool negate = false;
  if (j < p.size() && (p[j] == '!' || p[j] == '^')) {
    negate = true;
    ++j;
  }
  bool hit = false;
  bool first = true;
  while (j < p.size() && (p[j] != ']' || first)) {
    first = false;
    unsigned char lo = static_cast<unsigned char>(p[j]);
    if (lo == '\\' && j + 1 < p.size()) lo = static_cast<unsigned char>(p[++j]);
    unsigned char hi = lo;
    if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
      j += 2;
      hi = static_cast<unsigned char>(p[j]);
      if (hi == '\\' && j + 1 < p.size()) hi = static_cast<unsigned char>(p[++j]);
    }
    if (lo <= c && c <= hi) hit = true;
    ++j;
  }
  if (j >= p.size()) return -1;
  i = j + 1;
  return hit != negate ? 1 : 0;
}

bool match_from(std::string_view p, size_t pi, std::string_view s, size_t si) {
  while (pi < p.size()) {
    char pc = p[pi];
    if (pc == '*') {
      while (pi < p.size() && p[pi] == '*') ++pi;
      if (pi == p.size()) return true;
      for (size_t k = si; k <= s.size(); ++k)
        if (match_from(p, pi, s, k)) return true;
      return false;
    }
    if (si == s.size()) return false;
    if (pc == '?') {
      ++pi;
      ++si;
      continue;
    }
    if (pc == '[') {
      size_t i = pi + 1;
      int r = match_class(p, i, static_cast<unsigned char>(s[si]));
      if (r >= 0) {
        if (r == 0) return false;
        pi = i;
        ++si;
        continue;
      }
    }
    if (pc == '\\' && pi + 1 < p.size()) pc = p[++pi];
    if (pc != s[si]) return false;
    ++pi;
    ++si;
  }
  return si == s.size();
}

bool has_wildcard(std::string_view part) {
  return part.find_first_of("*?[\\") != std::string_view::npos;
}

bool match_parts(const std::vector<std::string>& pat, size_t pi, const std::vector<std::string_view>& path,
                 size_t di) {
  while (pi < pat.size()) {
    if (pat[pi] == "**") {
      for (size_t k = di; k <= path.size(); ++k)
        if (match_parts(pat, pi + 1, path, k)) return true;
      return false;
    }
    if (di == path.size() || !match_component(pat[pi], path[di])) return false;
    ++pi;
    ++di;
  }
  return di == path.size();
}

bool below_parts(const std::vector<std::string>& pat, size_t pi, const std::vector<std::string_view>& dir,
                 size_t di) {
  if (di == dir.size()) return pi < pat.size();
  if (pi == pat.size()) return false;
  if (pat[pi] == "**") return below_parts(pat, pi + 1, dir, di) || below_parts(pat, pi, dir, di + 1);
  return match_component(pat[pi], dir[di]) && below_parts(pat, pi + 1, dir, di + 1);
}

}  // namespace

bool match_component(std::string_view pattern, std::string_view name) {
  return match_from(pattern, 0, name, 0);
}

std::vector<std::string_view> path_components(std::string_view path) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    auto part = path.substr(i, j - i);
    if (!part.empty() && part != ".") out.push_back(part);
    i = j + 1;
  }
  return out;
}

Glob::Glob(std::string_view pattern) : m_text(pattern) {
  for (auto part : path_components(pattern)) {
    if (part == "**" && !m_parts.empty() && m_parts.back() == "**") continue;
    if (has_wildcard(part)) m_literal = false;
    m_parts.emplace_back(part);
  }
}

std::string Glob::literal_path() const {
  std::string out;
  for (const auto& p : m_parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

bool Glob::matches(std::string_view path) const {
  return match_parts(m_parts, 0, path_components(path), 0);
}

bool Glob::may_match_below(std::string_view dir) const {
  return below_parts(m_parts, 0, path_components(dir), 0);
}

}  // namespace envsnap::image
