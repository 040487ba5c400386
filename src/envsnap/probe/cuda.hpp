#pragma once
// The CUDA user-space stack of a root: CUDA toolkits (/usr/local/cuda*, pip
// nvidia-cuda-runtime wheels, conda environments) and the cuDNN, NCCL and TensorRT
// versions found next to them, read from version files, headers, wheel metadata
// and library file names. Nothing is loaded or run.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/probe/context.hpp"

namespace envsnap::probe {

// path is root-relative: the toolkit's directory, or the file that gave the version.
// source: version.json, version.txt, dist-info, header, soname or conda-meta.
// kind (toolkits only): local, pip or conda.
struct ComponentVersion {
  std::string path, version, source, kind;
  bool operator==(const ComponentVersion&) const = default;
};

// Each list sorted by path; each real file or toolkit directory appears once.
struct CudaStack {
  std::vector<ComponentVersion> toolkits, cudnn, nccl, tensorrt;
};

// site_dirs are root-relative site-packages directories (from the Python probe).
// Never throws; unreadable or unparsable files become warnings naming the path.
CudaStack probe_cuda(const Context& ctx, const std::vector<std::string>& site_dirs);

// The "cuda" section of the lock (docs/lock-format.md): all four lists, always present.
nlohmann::json to_json(const CudaStack& stack);

}  // namespace envsnap::probe
