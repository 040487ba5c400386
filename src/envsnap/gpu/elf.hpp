#pragma once
// The soname (DT_SONAME) of an ELF shared object: the name the dynamic loader looks
// for, and so the name of the link a container needs ("libcuda.so.1").

#include <cstdint>
#include <string>
#include <string_view>

#include "envsnap/util/result.hpp"
#include "envsnap/util/rootfs.hpp"

namespace envsnap::gpu {

struct ElfInfo {
  int elf_class = 0;     // ELFCLASS32 or ELFCLASS64
  uint16_t machine = 0;  // e_machine, e.g. EM_X86_64
  std::string soname;    // DT_SONAME; empty when the file has none
};

// The class, machine and DT_SONAME of a little-endian ELF32 or ELF64 file's bytes. An
// Error naming `name` when it is not ELF, or when a header, the dynamic segment or the
// soname lies outside the bytes.
util::Result<ElfInfo> read_elf_info(std::string_view bytes, std::string_view name);

// The same for a file inside a root, reading only the headers, the dynamic segment and
// the soname itself (driver libraries run to tens of megabytes).
util::Result<ElfInfo> read_elf_info(const util::RootFs& root, std::string_view rel);

// The e_machine of the machine envsnap was built for (EM_X86_64, EM_AARCH64).
uint16_t native_machine();

}  // namespace envsnap::gpu
