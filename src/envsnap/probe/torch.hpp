#pragma once
// Finds PyTorch installations in Python environments and reads how each was built
// (version, CUDA, cuDNN pin, GPU architectures) from files only: torch/version.py as
// text, the wheel's METADATA and the fatbinaries of torch/lib, never running Python.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"
#include "envsnap/probe/fatbin.hpp"

namespace envsnap::probe {

// One library under torch/lib that carries GPU code; path is root-relative ("/...").
struct TorchLibrary {
  std::string path;
  CudaArchitectures architectures;

  bool operator==(const TorchLibrary&) const = default;
};

// One torch package. Empty strings are facts that were not found; build is
// "cuda", "rocm" or "cpu"; architectures is the union over libraries.
struct TorchBuild {
  std::string path, version, cuda, cudnn, git_version, build;
  CudaArchitectures architectures;
  std::vector<TorchLibrary> libraries;  // sorted by path

  bool operator==(const TorchBuild&) const = default;
};

// For each root-relative site-packages directory that holds torch/, the build found
// there, in the order of site_dirs. Never throws; problems become warnings naming the file.
std::vector<TorchBuild> probe_torch(const Context& ctx, const std::vector<std::string>& site_dirs);

// The "torch" list entry of docs/lock-format.md; empty facts are absent keys.
nlohmann::json to_json(const TorchBuild& build);

}  // namespace envsnap::probe
