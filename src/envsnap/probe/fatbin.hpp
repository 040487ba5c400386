#pragma once
// Reads which GPU architectures a CUDA binary carries, straight from the fatbinary
// containers in its ELF `.nv_fatbin` section, without loading or running it.

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/util/result.hpp"
#include "envsnap/util/rootfs.hpp"

namespace envsnap::probe {

// Architectures found in a binary, sorted by number then suffix, each once:
// SASS as "sm_80", "sm_90a", "sm_100f"; PTX as "compute_90".
struct CudaArchitectures {
  std::vector<std::string> sass;
  std::vector<std::string> ptx;

  bool empty() const { return sass.empty() && ptx.empty(); }
  bool operator==(const CudaArchitectures&) const = default;
};

// Architectures of the GPU code embedded in an ELF64 file (shared library or
// executable); empty lists when it has no `.nv_fatbin`. An Error naming
// name_for_messages when the ELF or a fatbinary container is truncated or malformed.
util::Result<CudaArchitectures> read_fatbin_architectures(std::string_view elf_bytes,
                                                          std::string_view name_for_messages);

// Same for a file inside the root, mapped read-only (never read whole into memory).
util::Result<CudaArchitectures> read_fatbin_architectures(const util::RootFs& root, std::string_view rel);

// Adds b's architectures to a, keeping the lists sorted and unique.
void merge_into(CudaArchitectures& a, const CudaArchitectures& b);

// {"sass": [...], "ptx": [...]}
nlohmann::json to_json(const CudaArchitectures& architectures);

}  // namespace envsnap::probe
