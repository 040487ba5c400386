#include "envsnap/image/compress.hpp"

#include <libdeflate.h>

#include <array>
#include <zstd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace envsnap::image {

namespace {

constexpr int zstd_level = 3;
constexpr int gzip_level = 1;

// gzip members come from libdeflate: its output depends only on the input, the level
// and the libdeflate version (its CPU-specific code only fills tables and computes
// the CRC-32), and it is several times faster than zlib. One compressor per thread,
// reused: every call starts from a clean state. docs/determinism.md has the history
// (ISA-L, then zlib).
}  // namespace

namespace {

// log2(x) for x >= 1 in fixed point with 16 fraction bits, by repeated squaring of the
// mantissa: integer arithmetic only, so the same on every CPU and libm.
uint64_t log2_q16(uint64_t x) {
  int whole = 63 - __builtin_clzll(x);
  unsigned __int128 m = static_cast<unsigned __int128>(x) << (64 - whole);  // [1, 2) as Q64
  uint64_t frac = 0;
  const unsigned __int128 two = static_cast<unsigned __int128>(1) << 65;
  for (int bit = 15; bit >= 0; --bit) {
    // m*m in Q64, from m/2 (which fits 64 bits; the bit it drops does not matter here).
    uint64_t half = static_cast<uint64_t>(m >> 1);
    unsigned __int128 q = static_cast<unsigned __int128>(half) * half;  // m^2/4
    m = q >> 62;                                                    // m^2 in Q64
    if (m >= two) {
      m >>= 1;
      frac |= uint64_t{1} << bit;
    }
  }
  return (static_cast<uint64_t>(whole) << 16) | frac;
}

}  // namespace

bool looks_incompressible(const void* data, size_t size) {
  // Shannon entropy of the byte histogram of at least 7.97 bits per byte: compressed
  // or random data (CUDA's compressed fatbins, archives, weights), which deflate
  // shrinks by a percent at most. N*H = N*log2(N) - sum(c*log2(c)), in integers.
  if (size < 64 * 1024 || size > (size_t{1} << 31)) return false;
  // Four interleaved histograms: runs of one byte value would otherwise make every
  // increment wait for the previous one.
  std::array<std::array<uint32_t, 256>, 4> parts{};
  auto count = [&parts](const unsigned char* p, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      ++parts[0][p[i]];
      ++parts[1][p[i + 1]];
      ++parts[2][p[i + 2]];
      ++parts[3][p[i + 3]];
    }
    for (; i < n; ++i) ++parts[0][p[i]];
  };
  // A large block is judged by a quarter of it: 16 stretches of 1/64 of the block at
  // fixed offsets, spread over the whole block. The decision still depends on the
  // bytes alone; a quarter of a megabyte pins the entropy of a homogeneous block to
  // a thousandth of a bit, and scanning every byte cost as much as a tenth of the
  // compression time.
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t n = 0;
  if (size >= 512 * 1024) {
    size_t stretch = size / 64, step = size / 16;
    for (size_t k = 0; k < 16; ++k) count(p + k * step, stretch);
    n = 16 * uint64_t{stretch};
  } else {
    count(p, size);
    n = size;
  }
  std::array<uint64_t, 256> counts{};
  for (size_t v = 0; v < 256; ++v) counts[v] = uint64_t{parts[0][v]} + parts[1][v] + parts[2][v] + parts[3][v];
  uint64_t sum = 0;
  for (uint64_t c : counts)
    if (c > 0) sum += c * log2_q16(c);
  uint64_t bits_q16 = n * log2_q16(n) - sum;  // N*H in Q16
  return bits_q16 * 100 >= n * (uint64_t{797} << 16);
}

namespace {

util::Result<void> gzip_member(const void* data, size_t size, std::string& out) {
  struct Free {
    void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
  };
  // Level 0 writes stored blocks: for data that does not compress, the match finder's
  // time is saved and the member is a few bytes larger than the input.
  thread_local std::unique_ptr<libdeflate_compressor, Free> compressor, store;
  auto& c = looks_incompressible(data, size) ? store : compressor;
  if (!c) {
    c.reset(libdeflate_alloc_compressor(&c == &store ? 0 : gzip_level));
    if (!c) return util::Error{"gzip: cannot create a libdeflate compressor (out of memory?)"};
  }
  out.resize(libdeflate_gzip_compress_bound(c.get(), size));
  size_t n = libdeflate_gzip_compress(c.get(), data, size, out.data(), out.size());
  if (n == 0) return util::Error{fmt::format("gzip compression of a {}-byte block failed (libdeflate)", size)};
  out.resize(n);
  return {};
}

util::Result<void> zstd_frame(const void* data, size_t size, std::string& out) {
  struct Free {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  };
  thread_local std::unique_ptr<ZSTD_CCtx, Free> cctx;
  if (!cctx) {
    cctx.reset(ZSTD_createCCtx());
    if (!cctx) return util::Error{"zstd: cannot create a compression context"};
  }
  ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, zstd_level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 1);
  out.resize(ZSTD_compressBound(size));
  size_t n = ZSTD_compress2(cctx.get(), out.data(), out.size(), data, size);
  if (ZSTD_isError(n)) return util::Error{fmt::format("zstd compression failed: {}", ZSTD_getErrorName(n))};
  out.resize(n);
  return {};
}

struct Job {
  std::string input, output;
  bool done = false;
  util::Result<void> result;
};

}  // namespace

std::string gzip_cpu_caveat() { return {}; }

util::Result<void> compress_block(Compression c, const void* data, size_t size, std::string& out) {
  return c == Compression::gzip ? gzip_member(data, size, out) : zstd_frame(data, size, out);
}

struct BlockCompressor::Impl {
  Compression compression;
  unsigned threads;
  Sink& out;
  std::string current;
  std::vector<std::string> spare;
  std::deque<std::shared_ptr<Job>> in_order;  // producer only: submitted, not yet written
  uint64_t compressed = 0;
  uint64_t blocks = 0;
  std::optional<util::Error> failed;

  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::deque<std::shared_ptr<Job>> pending;  // guarded by mu
  bool stop = false;                         // guarded by mu
  std::vector<std::thread> workers;

  Impl(Compression c, unsigned t, Sink& o) : compression(c), threads(t), out(o) {
    // One worker more than cores: the thread producing the tar waits on reads, and the
    // spare worker keeps the cores busy meanwhile (the output never depends on it).
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency()) + 1;
    current.reserve(compress_block_size);
    if (threads > 1)
      for (unsigned i = 0; i < threads; ++i) workers.emplace_back([this] { work(); });
  }

  ~Impl() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    work_cv.notify_all();
    for (auto& w : workers) w.join();
  }

  void work() {
    while (true) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock lock(mu);
        work_cv.wait(lock, [&] { return stop || !pending.empty(); });
        if (stop) return;
        job = std::move(pending.front());
        pending.pop_front();
      }
      auto r = compress_block(compression, job->input.data(), job->input.size(), job->output);
      {
        std::lock_guard lock(mu);
        job->result = std::move(r);
        job->done = true;
      }
      done_cv.notify_all();
    }
  }

  util::Result<void> emit(Job& job) {
    if (!job.result) return job.result;
    compressed += job.output.size();
    auto r = out.write(job.output.data(), job.output.size());
    job.input.clear();
    spare.push_back(std::move(job.input));
    return r;
  }

  // Writes finished blocks at the front; waits while more than the bound are in flight.
  util::Result<void> drain(size_t keep) {
    while (!in_order.empty()) {
      auto job = in_order.front();
      {
        std::unique_lock lock(mu);
        if (in_order.size() <= keep && !job->done) break;
        done_cv.wait(lock, [&] { return job->done; });
      }
      in_order.pop_front();
      if (auto r = emit(*job); !r) return r;
    }
    return {};
  }

  util::Result<void> submit() {
    ++blocks;
    auto job = std::make_shared<Job>();
    job->input = std::move(current);
    if (!spare.empty()) {
      current = std::move(spare.back());
      spare.pop_back();
    } else {
      current = std::string();
      current.reserve(compress_block_size);
    }
    if (workers.empty()) {
      job->result = compress_block(compression, job->input.data(), job->input.size(), job->output);
      return emit(*job);
    }
    in_order.push_back(job);
    {
      std::lock_guard lock(mu);
      pending.push_back(job);
    }
    work_cv.notify_one();
    return drain(2 * size_t{threads});
  }

  util::Result<void> fail(util::Result<void> r) {
    if (!r) failed = r.error();
    return r;
  }
};

BlockCompressor::BlockCompressor(Compression c, unsigned threads, Sink& out)
    : m_impl(std::make_unique<Impl>(c, threads, out)) {}

BlockCompressor::~BlockCompressor() = default;

util::Result<void> BlockCompressor::write(const void* data, size_t size) {
  auto& m = *m_impl;
  if (m.failed) return *m.failed;
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    size_t n = std::min(size, compress_block_size - m.current.size());
    m.current.append(p, n);
    p += n;
    size -= n;
    if (m.current.size() == compress_block_size)
      if (auto r = m.fail(m.submit()); !r) return r;
  }
  return {};
}

util::Result<void> BlockCompressor::finish() {
  auto& m = *m_impl;
  if (m.failed) return *m.failed;
  if (!m.current.empty() || m.blocks == 0)
    if (auto r = m.fail(m.submit()); !r) return r;
  return m.fail(m.drain(0));
}

uint64_t BlockCompressor::compressed_size() const { return m_impl->compressed; }

}  // namespace envsnap::image
