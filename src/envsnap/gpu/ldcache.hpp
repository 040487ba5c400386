#pragma once
// glibc's linker cache (/etc/ld.so.cache): the soname -> path table the dynamic
// loader searches, read the way libnvidia-container finds the driver libraries.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "envsnap/util/result.hpp"

namespace envsnap::gpu {

struct LdCacheEntry {
  std::string key;    // the soname, e.g. "libcuda.so.1"
  std::string value;  // the path the loader opens, e.g. "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
  int32_t flags = 0;  // FLAG_* of glibc's dl-cache.h: type in the low byte, ABI in the next
  uint64_t hwcap = 0; // new format only; 0 in the old one

  // A glibc ELF library of this machine's ABI: what `ldconfig -p` prints as
  // "libc6,x86-64" (flags 0x0303) on x86-64 and "libc6,AArch64" (0x0a03) on aarch64.
  bool is_native() const;
};

// The entries of a cache, in file order (the loader takes the first match). Reads the
// new format ("glibc-ld.so.cache1.1") and the old one ("ld.so-1.7.0"), taking the new
// table when both are present. Every offset is checked: a truncated or hostile file is
// an Error naming `name`, never a read outside `data`.
util::Result<std::vector<LdCacheEntry>> parse_ldcache(std::string_view data, std::string_view name);

}  // namespace envsnap::gpu
