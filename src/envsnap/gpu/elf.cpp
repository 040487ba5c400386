// The soname is found the way the loader finds it: the program headers give the
// PT_DYNAMIC segment and the PT_LOAD mappings; the dynamic entries give DT_STRTAB (a
// virtual address, mapped back to a file offset through PT_LOAD) and DT_SONAME (an
// offset into that table). Section headers are not needed and may be stripped.

#include "envsnap/gpu/elf.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <functional>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::gpu {

namespace {

constexpr uint64_t k_max_dynamic = 1u << 20;
constexpr uint64_t k_max_soname = 4096;

// Reads [offset, offset + len) into out; false when that range is not all in the file.
using ReadFn = std::function<bool(uint64_t offset, uint64_t len, std::string& out)>;

struct Source {
  uint64_t size;
  ReadFn read;
};

struct Segment {
  uint64_t vaddr, offset, filesz;
};

template <class T>
T load(const std::string& bytes, size_t at) {
  T v;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}

util::Error bad(std::string_view name, std::string_view what) {
  return util::Error{fmt::format("{}: {}", name, what)};
}

template <class Ehdr, class Phdr, class Dyn>
util::Result<std::string> soname_of(const Source& src, std::string_view name) {
  const auto& read = src.read;
  std::string buf;
  if (!read(0, sizeof(Ehdr), buf)) return bad(name, "truncated ELF header");
  auto eh = load<Ehdr>(buf, 0);
  if (eh.e_phnum == 0) return std::string();
  if (eh.e_phnum == PN_XNUM) return bad(name, "too many ELF program headers");
  if (eh.e_phentsize < sizeof(Phdr)) return bad(name, "ELF program header size too small");
  uint64_t table = uint64_t{eh.e_phnum} * eh.e_phentsize;
  if (!read(eh.e_phoff, table, buf)) return bad(name, "ELF program headers lie outside the file");

  std::vector<Segment> loads;
  std::optional<Segment> dynamic;
  for (uint64_t i = 0; i < eh.e_phnum; ++i) {
    auto ph = load<Phdr>(buf, i * eh.e_phentsize);
    if (ph.p_type == PT_LOAD) loads.push_back({ph.p_vaddr, ph.p_offset, ph.p_filesz});
    if (ph.p_type == PT_DYNAMIC && !dynamic) dynamic = Segment{ph.p_vaddr, ph.p_offset, ph.p_filesz};
  }
  if (!dynamic) return std::string();
  if (dynamic->filesz > k_max_dynamic) return bad(name, "ELF dynamic segment too large");
  if (!read(dynamic->offset, dynamic->filesz, buf)) return bad(name, "ELF dynamic segment lies outside the file");

  bool have_strtab = false, have_soname = false, have_strsz = false;
  uint64_t strtab = 0, strsz = 0, soname = 0;
  for (uint64_t at = 0; at + sizeof(Dyn) <= buf.size(); at += sizeof(Dyn)) {
    auto d = load<Dyn>(buf, at);
    if (d.d_tag == DT_NULL) break;
    if (d.d_tag == DT_STRTAB) have_strtab = true, strtab = d.d_un.d_ptr;
    if (d.d_tag == DT_STRSZ) have_strsz = true, strsz = d.d_un.d_val;
    if (d.d_tag == DT_SONAME) have_soname = true, soname = d.d_un.d_val;
  }
  if (!have_soname) return std::string();
  if (!have_strtab) return bad(name, "ELF dynamic segment has DT_SONAME but no DT_STRTAB");
  if (have_strsz && soname >= strsz) return bad(name, "ELF DT_SONAME lies outside the string table");

  const Segment* home = nullptr;
  for (const auto& s : loads)
    if (strtab >= s.vaddr && strtab - s.vaddr < s.filesz) home = &s;
  if (!home) return bad(name, "ELF string table is not in any loaded segment");
  uint64_t at = home->offset + (strtab - home->vaddr);
  if (at < home->offset || at + soname < at) return bad(name, "ELF string table offset overflows");
  at += soname;
  if (at >= src.size) return bad(name, "ELF soname lies outside the file");
  // The soname ends at the first NUL inside a bounded window.
  if (!read(at, std::min(k_max_soname, src.size - at), buf)) return bad(name, "ELF soname lies outside the file");
  auto end = buf.find('\0');
  if (end == std::string::npos) return bad(name, "ELF soname is not terminated");
  return buf.substr(0, end);
}

template <class Ehdr, class Phdr, class Dyn>
util::Result<ElfInfo> info_of(const Source& src, std::string_view name, int elf_class) {
  std::string buf;
  if (!src.read(0, sizeof(Ehdr), buf)) return bad(name, "truncated ELF header");
  ElfInfo info;
  info.elf_class = elf_class;
  info.machine = load<Ehdr>(buf, 0).e_machine;
  auto soname = soname_of<Ehdr, Phdr, Dyn>(src, name);
  if (!soname) return soname.error();
  info.soname = std::move(*soname);
  return info;
}

util::Result<ElfInfo> dispatch(const Source& src, std::string_view name) {
  std::string ident;
  if (!src.read(0, EI_NIDENT, ident) || std::memcmp(ident.data(), ELFMAG, SELFMAG) != 0)
    return bad(name, "not an ELF file");
  if (ident[EI_DATA] != ELFDATA2LSB) return bad(name, "big-endian ELF is not supported");
  if (ident[EI_CLASS] == ELFCLASS64) return info_of<Elf64_Ehdr, Elf64_Phdr, Elf64_Dyn>(src, name, ELFCLASS64);
  if (ident[EI_CLASS] == ELFCLASS32) return info_of<Elf32_Ehdr, Elf32_Phdr, Elf32_Dyn>(src, name, ELFCLASS32);
  return bad(name, "unknown ELF class");
}

}  // namespace

util::Result<ElfInfo> read_elf_info(std::string_view bytes, std::string_view name) {
  ReadFn read = [bytes](uint64_t offset, uint64_t len, std::string& out) {
    if (offset > bytes.size() || len > bytes.size() - offset) return false;
    out.assign(bytes.substr(offset, len));
    return true;
  };
  return dispatch({bytes.size(), read}, util::printable(name));
}

util::Result<ElfInfo> read_elf_info(const util::RootFs& root, std::string_view rel) {
  auto name = util::printable(root.host_path(rel));
  auto fd = root.open_at(rel, O_RDONLY | O_NONBLOCK);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return bad(name, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return bad(name, "not a regular file");
  auto size = static_cast<uint64_t>(st.st_size);
  int raw = fd->get();
  ReadFn read = [raw, size](uint64_t offset, uint64_t len, std::string& out) {
    if (offset > size || len > size - offset) return false;
    out.resize(len);
    uint64_t got = 0;
    while (got < len) {
      auto n = ::pread(raw, out.data() + got, len - got, static_cast<off_t>(offset + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      got += static_cast<uint64_t>(n);
    }
    return true;
  };
  return dispatch({size, read}, name);
}

uint16_t native_machine() {
#if defined(__x86_64__)
  return EM_X86_64;
#elif defined(__aarch64__)
  return EM_AARCH64;
#else
#error "envsnap knows the ELF machine of x86-64 and aarch64 only"
#endif
}

}  // namespace envsnap::gpu
