#pragma once
// Deterministic layer blobs: a tar stream (PAX, entries in the given order, numeric
// owners, modes with special bits, mtimes kept or clamped to SOURCE_DATE_EPOCH, no
// atime/ctime/inode/device metadata, xattrs as SCHILY.xattr, hard links, long names,
// sparse files as plain files), compressed with libdeflate gzip or zstd in fixed-size
// blocks so the bytes depend neither on the thread count nor on the CPU.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "envsnap/image/compress.hpp"
#include "envsnap/image/entry.hpp"
#include "envsnap/oci/digest.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/rootfs.hpp"

namespace envsnap::image {

struct LayerOptions {
  Compression compression = Compression::gzip;
  unsigned threads = 0;                        // 0: hardware concurrency
  std::optional<int64_t> source_date_epoch;    // clamp newer mtimes to this
};

struct LayerResult {
  oci::Descriptor blob;      // compressed, as stored (mediaType set)
  oci::Digest diff_id;       // SHA-256 of the uncompressed tar
  uint64_t tar_size = 0;
};

// Called with the number of input bytes read so far, for progress bars.
using Progress = std::function<void(uint64_t bytes)>;

struct LayerStreamResult {
  oci::Digest diff_id;       // SHA-256 of the uncompressed tar
  uint64_t tar_size = 0;
  uint64_t compressed_size = 0;
};

// Writes ENTRIES (in the given order) read from ROOT as a compressed tar into OUT.
// Fails naming the file when a file cannot be read or changed while being captured.
util::Result<LayerStreamResult> write_layer_stream(const util::RootFs& root, const std::vector<FileEntry>& entries,
                                                   const LayerOptions& options, Sink& out,
                                                   const Progress& progress = {});

// Writes ENTRIES (sorted by the caller) read from ROOT as one layer blob into STORE.
util::Result<LayerResult> write_layer(const util::RootFs& root, const std::vector<FileEntry>& entries,
                                      const LayerOptions& options, store::Store& store, const Progress& progress = {});

const char* media_type(Compression c);

}  // namespace envsnap::image
