// The layout of ld.so.cache (glibc's sysdeps/generic/dl-cache.h), little-endian:
//
//   old format   "ld.so-1.7.0" (11 bytes), 1 byte padding, uint32 nlibs,
//                nlibs entries of {int32 flags, uint32 key, uint32 value} (12 bytes),
//                then the string table; key/value are offsets into that table.
//   new format   "glibc-ld.so.cache" "1.1" (20 bytes), uint32 nlibs, uint32 len_strings,
//                uint8 flags (byte order: 0 unset, 2 little, 3 big), 3 bytes padding,
//                uint32 extension_offset, 3 x uint32 unused (48 bytes in all), then nlibs
//                entries of {int32 flags, uint32 key, uint32 value, uint32 osversion,
//                uint64 hwcap} (24 bytes); key/value are offsets from the start of this
//                header, and strings may share tails ("libfoo.so.2" inside its own path).
//   compat       an old table followed, at the next multiple of 8, by a complete new
//                one; the loader reads only the new one, and so do we.
//
// Nothing in the file is trusted: counts are checked against the size before any
// entry is read, and every string must end with a NUL inside the buffer.

#include "envsnap/gpu/ldcache.hpp"

#include <cstring>

#include <fmt/format.h>

namespace envsnap::gpu {

namespace {

constexpr std::string_view k_old_magic = "ld.so-1.7.0";
constexpr std::string_view k_new_magic = "glibc-ld.so.cache1.1";
constexpr uint64_t k_old_header = 16;
constexpr uint64_t k_old_entry = 12;
constexpr uint64_t k_new_header = 48;
constexpr uint64_t k_new_entry = 24;
constexpr uint8_t k_order_unset = 0;
constexpr uint8_t k_order_little = 2;

template <class T>
T load(std::string_view data, uint64_t offset) {
  T v;
  std::memcpy(&v, data.data() + offset, sizeof v);
  return v;
}

util::Error bad(std::string_view name, std::string_view what) {
  return util::Error{fmt::format("{}: not a valid ld.so.cache ({}); regenerate it with ldconfig", name, what)};
}

// The NUL-terminated string at `offset` of `table`, or nothing when it runs off the end.
bool string_at(std::string_view table, uint64_t offset, std::string& out) {
  if (offset >= table.size()) return false;
  auto rest = table.substr(offset);
  auto end = rest.find('\0');
  if (end == std::string_view::npos) return false;
  out.assign(rest.substr(0, end));
  return true;
}

util::Result<std::vector<LdCacheEntry>> parse_new(std::string_view data, std::string_view name) {
  if (data.size() < k_new_header) return bad(name, "truncated header");
  auto nlibs = load<uint32_t>(data, 20);
  auto order = load<uint8_t>(data, 28);
  if (order != k_order_unset && order != k_order_little)
    return bad(name, fmt::format("byte order {} is not this machine's", order));
  if (nlibs > (data.size() - k_new_header) / k_new_entry)
    return bad(name, fmt::format("{} entries do not fit in {} bytes", nlibs, data.size()));
  std::vector<LdCacheEntry> out;
  out.reserve(nlibs);
  for (uint64_t i = 0; i < nlibs; ++i) {
    uint64_t at = k_new_header + i * k_new_entry;
    LdCacheEntry e;
    e.flags = load<int32_t>(data, at);
    auto key = load<uint32_t>(data, at + 4);
    auto value = load<uint32_t>(data, at + 8);
    e.hwcap = load<uint64_t>(data, at + 16);
    if (!string_at(data, key, e.key) || !string_at(data, value, e.value))
      return bad(name, fmt::format("entry {} points outside the file", i));
    out.push_back(std::move(e));
  }
  return out;
}

util::Result<std::vector<LdCacheEntry>> parse_old(std::string_view data, std::string_view name) {
  if (data.size() < k_old_header) return bad(name, "truncated header");
  auto nlibs = load<uint32_t>(data, 12);
  if (nlibs > (data.size() - k_old_header) / k_old_entry)
    return bad(name, fmt::format("{} entries do not fit in {} bytes", nlibs, data.size()));
  uint64_t table_end = k_old_header + uint64_t{nlibs} * k_old_entry;
  // A new-format table follows at the next multiple of 8 in the "compat" layout.
  uint64_t new_at = (table_end + 7) / 8 * 8;
  if (new_at <= data.size() && data.substr(new_at).starts_with(k_new_magic)) return parse_new(data.substr(new_at), name);
  auto strings = data.substr(table_end);
  std::vector<LdCacheEntry> out;
  out.reserve(nlibs);
  for (uint64_t i = 0; i < nlibs; ++i) {
    uint64_t at = k_old_header + i * k_old_entry;
    LdCacheEntry e;
    e.flags = load<int32_t>(data, at);
    if (!string_at(strings, load<uint32_t>(data, at + 4), e.key) ||
        !string_at(strings, load<uint32_t>(data, at + 8), e.value))
      return bad(name, fmt::format("entry {} points outside the file", i));
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

bool LdCacheEntry::is_native() const {
#if defined(__x86_64__)
  return flags == 0x0303;
#elif defined(__aarch64__)
  return flags == 0x0a03;
#else
#error "envsnap knows the ld.so.cache flags of x86-64 and aarch64 only"
#endif
}

util::Result<std::vector<LdCacheEntry>> parse_ldcache(std::string_view data, std::string_view name) {
  if (data.starts_with(k_new_magic)) return parse_new(data, name);
  if (data.starts_with(k_old_magic)) return parse_old(data, name);
  return bad(name, "unknown magic");
}

}  // namespace envsnap::gpu
