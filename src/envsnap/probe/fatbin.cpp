#include "envsnap/probe/fatbin.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace {

constexpr uint32_t k_fatbin_magic = 0xBA55ED50u;
constexpr uint16_t k_fatbin_version = 1;
constexpr size_t k_container_header_size = 16;
// The fixed part of an entry header; PTX and newer SASS entries carry more after it.
constexpr size_t k_entry_header_min = 64;
constexpr uint16_t k_kind_ptx = 1;
constexpr uint16_t k_kind_elf = 2;
// Entry flags nvcc 13 sets for architecture-specific (sm_90a) and
// family-specific (sm_100f) code.
constexpr uint64_t k_flag_arch_specific = 0x100000;
constexpr uint64_t k_flag_family_specific = 0x200000;

template <class T>
bool read_at(std::string_view bytes, uint64_t offset, T& out) {
  if (offset > bytes.size() || sizeof(T) > bytes.size() - offset) return false;
  std::memcpy(&out, bytes.data() + offset, sizeof(T));
  return true;
}

// True when [offset, offset + size) lies inside a buffer of total bytes.
bool in_bounds(uint64_t offset, uint64_t size, uint64_t total) {
  return offset <= total && size <= total - offset;
}

bool all_zero(std::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c == 0; });
}

// "sm_90a" -> (90, "a"); used to sort architectures by number.
std::pair<unsigned long, std::string_view> arch_key(std::string_view name) {
  auto us = name.find('_');
  std::string_view rest = us == std::string_view::npos ? name : name.substr(us + 1);
  unsigned long number = 0;
  size_t i = 0;
  for (; i < rest.size() && rest[i] >= '0' && rest[i] <= '9'; ++i) number = number * 10 + (rest[i] - '0');
  return {number, rest.substr(i)};
}

void sort_unique(std::vector<std::string>& v) {
  std::sort(v.begin(), v.end(), [](const std::string& a, const std::string& b) {
    auto ka = arch_key(a), kb = arch_key(b);
    if (ka != kb) return ka < kb;
    return a < b;
  });
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

struct Section {
  std::string_view name;
  uint32_t type;
  uint64_t offset;
  uint64_t size;
};

util::Error error(std::string_view name, std::string_view what) {
  return util::Error{fmt::format("{}: {}", name, what)};
}

util::Result<std::vector<Section>> read_sections(std::string_view elf, std::string_view name) {
  if (elf.size() < EI_NIDENT || std::memcmp(elf.data(), ELFMAG, SELFMAG) != 0)
    return error(name, "not an ELF file");
  if (static_cast<unsigned char>(elf[EI_CLASS]) != ELFCLASS64)
    return error(name, "not a 64-bit ELF file (CUDA code is only read from ELF64)");
  if (static_cast<unsigned char>(elf[EI_DATA]) != ELFDATA2LSB)
    return error(name, "big-endian ELF file is not supported");
  Elf64_Ehdr eh;
  if (!read_at(elf, 0, eh)) return error(name, "truncated ELF header");
  std::vector<Section> out;
  if (eh.e_shoff == 0) return out;
  if (eh.e_shentsize < sizeof(Elf64_Shdr))
    return error(name, fmt::format("ELF section header size {} is too small", eh.e_shentsize));

  uint64_t count = eh.e_shnum;
  uint32_t strndx = eh.e_shstrndx;
  if (count == 0 || strndx == SHN_XINDEX) {
    Elf64_Shdr first;
    if (!read_at(elf, eh.e_shoff, first)) return error(name, "truncated ELF section header table");
    if (count == 0) count = first.sh_size;
    if (strndx == SHN_XINDEX) strndx = first.sh_link;
  }
  if (count == 0) return out;
  if (count > elf.size() / eh.e_shentsize || !in_bounds(eh.e_shoff, count * eh.e_shentsize, elf.size()))
    return error(name, "truncated ELF section header table");
  if (strndx == SHN_UNDEF || strndx >= count) return error(name, "ELF has no section name table");

  auto header = [&](uint64_t i) {
    Elf64_Shdr sh;
    read_at(elf, eh.e_shoff + i * eh.e_shentsize, sh);  // bounds checked above
    return sh;
  };
  Elf64_Shdr strtab = header(strndx);
  if (strtab.sh_type == SHT_NOBITS || !in_bounds(strtab.sh_offset, strtab.sh_size, elf.size()))
    return error(name, "truncated ELF section name table");
  std::string_view names = elf.substr(strtab.sh_offset, strtab.sh_size);

  out.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    Elf64_Shdr sh = header(i);
    if (sh.sh_name >= names.size())
      return error(name, fmt::format("ELF section {} has a name outside the name table", i));
    std::string_view rest = names.substr(sh.sh_name);
    auto nul = rest.find('\0');
    if (nul == std::string_view::npos)
      return error(name, fmt::format("ELF section {} has an unterminated name", i));
    out.push_back({rest.substr(0, nul), sh.sh_type, sh.sh_offset, sh.sh_size});
  }
  return out;
}

std::string arch_name(std::string_view prefix, uint32_t arch, uint64_t flags) {
  std::string_view suffix = (flags & k_flag_arch_specific)     ? "a"
                            : (flags & k_flag_family_specific) ? "f"
                                                               : "";
  return fmt::format("{}_{}{}", prefix, arch, suffix);
}

// Walks the fatbinary containers laid back to back in one section.
util::Result<void> read_containers(std::string_view blob, std::string_view name, uint64_t section_offset,
                                   CudaArchitectures& out) {
  uint64_t pos = 0;
  while (pos < blob.size()) {
    if (blob[pos] == 0) {  // alignment padding between containers
      ++pos;
      continue;
    }
    auto at = [&](uint64_t p) { return fmt::format("fatbinary at file offset {:#x}", section_offset + p); };
    uint32_t magic = 0;
    uint16_t version = 0, header_size = 0;
    uint64_t fat_size = 0;
    if (!read_at(blob, pos, magic) || !read_at(blob, pos + 4, version) || !read_at(blob, pos + 6, header_size) ||
        !read_at(blob, pos + 8, fat_size))
      return error(name, fmt::format("{}: truncated container header", at(pos)));
    if (magic != k_fatbin_magic) return error(name, fmt::format("{}: bad magic {:#010x}", at(pos), magic));
    if (version != k_fatbin_version)
      return error(name, fmt::format("{}: unsupported container version {}", at(pos), version));
    if (header_size < k_container_header_size)
      return error(name, fmt::format("{}: container header size {} is too small", at(pos), header_size));
    uint64_t begin = pos + header_size;
    if (!in_bounds(begin, fat_size, blob.size()))
      return error(name, fmt::format("{}: container of {} bytes is truncated", at(pos), fat_size));
    uint64_t end = begin + fat_size;

    uint64_t q = begin;
    while (q < end) {
      if (end - q < k_entry_header_min) {
        if (all_zero(blob.substr(q, end - q))) break;
        return error(name, fmt::format("{}: truncated entry header", at(q)));
      }
      uint16_t kind = 0;
      uint32_t entry_header_size = 0, arch = 0;
      uint64_t payload_size = 0, flags = 0;
      read_at(blob, q, kind);
      read_at(blob, q + 4, entry_header_size);
      read_at(blob, q + 8, payload_size);
      read_at(blob, q + 28, arch);
      read_at(blob, q + 40, flags);
      if (entry_header_size < k_entry_header_min)
        return error(name, fmt::format("{}: entry header size {} is too small", at(q), entry_header_size));
      if (!in_bounds(q + entry_header_size, payload_size, end))
        return error(name, fmt::format("{}: entry of {} bytes runs past its container", at(q), payload_size));
      if (kind == k_kind_elf || kind == k_kind_ptx) {
        if (arch < 10 || arch > 9999)
          return error(name, fmt::format("{}: implausible architecture {}", at(q), arch));
        if (kind == k_kind_elf) out.sass.push_back(arch_name("sm", arch, flags));
        else out.ptx.push_back(arch_name("compute", arch, flags));
      }
      q += entry_header_size + payload_size;
    }
    pos = end;
  }
  return {};
}

class Mapping {
public:
  Mapping(void* data, size_t size) : m_data(data), m_size(size) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(m_data, m_size); }
  std::string_view bytes() const { return {static_cast<const char*>(m_data), m_size}; }

private:
  void* m_data;
  size_t m_size;
};

}  // namespace

util::Result<CudaArchitectures> read_fatbin_architectures(std::string_view elf_bytes,
                                                          std::string_view name_for_messages) {
  auto sections = read_sections(elf_bytes, name_for_messages);
  if (!sections) return sections.error();
  CudaArchitectures out;
  for (const auto& s : *sections) {
    if (s.name != ".nv_fatbin") continue;
    if (s.type == SHT_NOBITS) continue;
    if (!in_bounds(s.offset, s.size, elf_bytes.size()))
      return error(name_for_messages, fmt::format(".nv_fatbin section ({} bytes at offset {:#x}) is truncated",
                                                  s.size, s.offset));
    auto r = read_containers(elf_bytes.substr(s.offset, s.size), name_for_messages, s.offset, out);
    if (!r) return r.error();
  }
  sort_unique(out.sass);
  sort_unique(out.ptx);
  return out;
}

util::Result<CudaArchitectures> read_fatbin_architectures(const util::RootFs& root, std::string_view rel) {
  std::string name = util::printable(root.host_path(rel));
  auto fd = root.open_at(rel, O_RDONLY | O_NONBLOCK);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return error(name, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return error(name, "not a regular file");
  if (st.st_size == 0) return read_fatbin_architectures(std::string_view(), name);
  auto size = static_cast<size_t>(st.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd->get(), 0);
  if (data == MAP_FAILED) return error(name, fmt::format("cannot map: {}", std::strerror(errno)));
  Mapping mapping(data, size);
  return read_fatbin_architectures(mapping.bytes(), name);
}

void merge_into(CudaArchitectures& a, const CudaArchitectures& b) {
  a.sass.insert(a.sass.end(), b.sass.begin(), b.sass.end());
  a.ptx.insert(a.ptx.end(), b.ptx.begin(), b.ptx.end());
  sort_unique(a.sass);
  sort_unique(a.ptx);
}

nlohmann::json to_json(const CudaArchitectures& architectures) {
  return {{"sass", architectures.sass}, {"ptx", architectures.ptx}};
}

}  // namespace envsnap::probe
