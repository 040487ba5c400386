#include "envsnap/image/compress.hpp"

#include <isa-l/igzip_lib.h>
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

// The level-1 buffer size decides where ISA-L ends its deflate blocks: it is part
// of the output format, so it is pinned here rather than taken from a default.
constexpr size_t isal_level_buf_size = ISAL_DEF_LVL1_LARGE;
constexpr int zstd_level = 3;

// ISA-L's deflate (2.30) gives other valid bytes for some 1 MiB blocks when blocks
// are compressed by more than one worker: threads, threads with every call
// serialised, and single-threaded worker processes all did, in some runs, on the
// PyTorch root; one thread compressing every block in order gave the same bytes in
// every run. The cause was not found (docs/determinism.md). Deterministic output
// matters more than parallel gzip: gzip blocks are compressed in order by the
// producing thread, while zstd frames stay parallel.
std::mutex isal_mutex;

util::Result<void> gzip_member(const void* data, size_t size, std::string& out) {
  std::lock_guard serial(isal_mutex);
  thread_local std::vector<uint8_t> level_buf(isal_level_buf_size);
  std::fill(level_buf.begin(), level_buf.end(), uint8_t{0});
  isal_zstream s;
  isal_deflate_init(&s);
  s.level = 1;
  s.level_buf = level_buf.data();
  s.level_buf_size = static_cast<uint32_t>(level_buf.size());
  s.gzip_flag = IGZIP_GZIP;  // header: no name, mtime 0, xfl 0, OS 255
  s.flush = NO_FLUSH;
  s.end_of_stream = 1;
  s.next_in = const_cast<uint8_t*>(static_cast<const uint8_t*>(data));
  s.avail_in = static_cast<uint32_t>(size);
  out.resize(size + size / 8 + 1024);
  size_t used = 0;
  while (true) {
    s.next_out = reinterpret_cast<uint8_t*>(out.data()) + used;
    s.avail_out = static_cast<uint32_t>(out.size() - used);
    int rc = isal_deflate(&s);
    if (rc != COMP_OK) return util::Error{fmt::format("gzip compression failed (ISA-L error {})", rc)};
    used = out.size() - s.avail_out;
    if (s.internal_state.state == ZSTATE_END) break;
    out.resize(out.size() * 2);
  }
  out.resize(used);
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

std::string gzip_cpu_caveat() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return {};
  return "this CPU lacks SSE4.2 (x86-64-v2): ISA-L's fallback gives gzip layers other bytes (and digests) than "
         "other CPUs; use zstd compression for layers that match other machines";
#else
  return "ISA-L on this architecture is not known to give the x86-64 gzip bytes; use zstd compression for "
         "layers that match other machines";
#endif
}

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
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    if (compression == Compression::gzip) threads = 1;  // see gzip_member
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
