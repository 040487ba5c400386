#pragma once
// Block compression for layer blobs: the input is cut into fixed blocks of
// block_size bytes and each block becomes an independent gzip member (libdeflate,
// level 1, header without time or name) or zstd frame (level 3, checksum), so the
// output is the same for every thread count and CPU (docs/determinism.md).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "envsnap/util/result.hpp"

namespace envsnap::image {

enum class Compression { gzip, zstd };

// Where a stream of bytes goes (a store blob, memory in tests).
class Sink {
public:
  virtual ~Sink() = default;
  virtual util::Result<void> write(const void* data, size_t size) = 0;
};

inline constexpr size_t compress_block_size = size_t{1} << 20;

// Why this CPU would give other gzip bytes than the reference ones; empty on every
// CPU since gzip comes from libdeflate, whose output does not depend on the CPU.
std::string gzip_cpu_caveat();

// True when DATA's byte histogram is nearly flat (already compressed or random data):
// such gzip blocks are stored (deflate level 0) instead of searched for matches.
bool looks_incompressible(const void* data, size_t size);

// Compresses one block into OUT (replacing it) as one gzip member or zstd frame.
util::Result<void> compress_block(Compression c, const void* data, size_t size, std::string& out);

// Streams input through compress_block in blocks of compress_block_size, using
// THREADS workers (0: hardware concurrency + 1, 1: inline); output goes to OUT in block
// order. At most about 2*threads blocks are in memory at once.
class BlockCompressor {
public:
  BlockCompressor(Compression c, unsigned threads, Sink& out);
  ~BlockCompressor();  // stops the workers; output not yet written by finish() is lost
  BlockCompressor(const BlockCompressor&) = delete;
  BlockCompressor& operator=(const BlockCompressor&) = delete;

  util::Result<void> write(const void* data, size_t size);
  // Compresses the last partial block and writes everything still pending.
  util::Result<void> finish();
  uint64_t compressed_size() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envsnap::image
