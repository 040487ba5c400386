#include "envsnap/run/runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/magic.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "envsnap/image/archive.hpp"
#include "envsnap/image/restore.hpp"
#include "envsnap/image/snapshot.hpp"
#include "envsnap/image/unpack.hpp"
#include "envsnap/registry/reference.hpp"
#include "envsnap/run/bundle.hpp"
#include "envsnap/run/checks.hpp"
#include "envsnap/run/gpu.hpp"
#include "envsnap/run/layer_cache.hpp"
#include "envsnap/run/ports.hpp"
#include "envsnap/run/spec.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/process.hpp"
#include "envsnap/util/rootfs.hpp"
#include "envsnap/util/strings.hpp"

extern char** environ;

namespace envsnap::run {

namespace fs = std::filesystem;
using nlohmann::json;
using util::Error;
using util::Fatal;
using util::Result;
using util::UniqueFd;

namespace {

[[noreturn]] void fail(std::string message) { throw Fatal(exit_run_failed, std::move(message)); }

bool parse_id(std::string_view s, uint32_t& out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + static_cast<uint64_t>(ch - '0');
  }
  if (v > UINT32_MAX) return false;
  out = static_cast<uint32_t>(v);
  return true;
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string random_id() {
  std::random_device rd;
  return fmt::format("{:08x}{:04x}", rd(), rd() & 0xffff);
}

std::vector<std::string> host_environment() {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) out.emplace_back(*e);
  return out;
}

// ARGV0 on PATH (or as given when it has a slash); empty when absent or not executable.
std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  for (auto dir : util::split(path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string p = fmt::format("{}/{}", dir, name);
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

bool cgroup_hybrid() {
  struct statfs root {}, unified {};
  return ::statfs("/sys/fs/cgroup", &root) == 0 && root.f_type == TMPFS_MAGIC &&
         ::statfs("/sys/fs/cgroup/unified", &unified) == 0 && unified.f_type == CGROUP2_SUPER_MAGIC;
}

uint64_t default_shm_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{1} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
}

std::vector<std::string> json_strings(const json& j) {
  std::vector<std::string> out;
  if (j.is_array())
    for (const auto& v : j)
      if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

// --- the image -----------------------------------------------------------------------

struct ResolvedImage {
  store::Store store;
  image::ImageBlobs blobs;
  std::string display;  // what the user gave, or the pulled NAME:TAG
  std::vector<std::string> tags;  // filled only where needed (podman)
};

ResolvedImage resolve_image(const RunRequest& req) {
  std::string ref = req.ref;
  if (registry::is_registry_reference(ref)) {
    try {
      auto pulled = cli::pull_remote(ref, "", req.store_flag, req.net, req.quiet);
      if (!req.quiet) fmt::print(stderr, "envsnap: pulled {} as {}\n", ref, pulled.name);
      ref = pulled.result.manifest.digest.str();
    } catch (const Fatal& f) {
      fail(fmt::format("cannot pull {}: {}", req.ref, f.what()));
    }
  }
  auto s = store::Store::open(store::default_store_path(req.store_flag), store::OpenMode::must_exist);
  if (!s) fail(s.message());
  image::FailureKind kind = image::FailureKind::other;
  auto blobs = image::read_image(*s, ref, &kind);
  if (!blobs) fail(blobs.message());
  return ResolvedImage{std::move(*s), std::move(*blobs), req.ref, {}};
}

// The file REL as the merged image shows it: the topmost layer that has it (a
// whiteout hides it); nullopt when absent.
std::optional<std::string> read_image_file(const std::vector<fs::path>& layers, std::string_view rel) {
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    struct stat st {};
    fs::path p = *it / std::string(rel);
    if (::lstat(p.c_str(), &st) != 0) continue;
    if (S_ISCHR(st.st_mode) && st.st_rdev == 0) return std::nullopt;
    auto root = util::RootFs::open(*it);
    if (!root) return std::nullopt;
    auto text = root->read_file(rel, 16u << 20);
    if (!text) return std::nullopt;
    return std::move(*text);
  }
  return std::nullopt;
}

// NAME or number -> id, from a passwd/group style file (name:x:id:...).
std::optional<uint32_t> lookup_id(const std::optional<std::string>& file, const std::string& name, uint32_t* gid_out) {
  if (!file) return std::nullopt;
  for (auto line : util::split(*file, '\n')) {
    auto f = util::split(line, ':');
    if (f.size() < 3 || f[0] != name) continue;
    uint32_t id = 0;
    if (!parse_id(f[2], id)) continue;
    if (gid_out && f.size() >= 4) parse_id(f[3], *gid_out);
    return id;
  }
  return std::nullopt;
}

struct ResolvedUser {
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups from the image's /etc/group
  std::string home;              // from the image's /etc/passwd; empty when unknown
};

// The supplementary groups of NAME in an /etc/group text (gid of each line listing it).
std::vector<uint32_t> member_groups(const std::optional<std::string>& group, const std::string& name, uint32_t primary) {
  std::vector<uint32_t> out;
  if (!group || name.empty()) return out;
  for (auto line : util::split(*group, '\n')) {
    auto f = util::split(line, ':');
    uint32_t gid = 0;
    if (f.size() < 4 || !parse_id(f[2], gid) || gid == primary) continue;
    for (auto member : util::split(f[3], ','))
      if (member == name) {
        out.push_back(gid);
        break;
      }
  }
  return out;
}

// docker's rules: a name must be in the image's /etc/passwd; a number need not be (its
// group is then 0 unless given); the group defaults to the passwd entry's; the
// supplementary groups come from /etc/group.
ResolvedUser resolve_user(const std::string& text, const std::vector<fs::path>& layers) {
  ResolvedUser u;
  auto spec = text.empty() ? Result<UserSpec>(UserSpec{"0", ""}) : parse_user(text);
  if (!spec) fail(spec.message());
  auto passwd = read_image_file(layers, "etc/passwd");
  auto group = read_image_file(layers, "etc/group");
  // The passwd line of the user, by name or by number.
  std::string name;
  bool known = false;
  uint32_t primary = 0;
  bool numeric = parse_id(spec->user, u.uid);
  if (passwd)
    for (auto line : util::split(*passwd, '\n')) {
      auto f = util::split(line, ':');
      uint32_t id = 0, g = 0;
      if (f.size() < 6 || !parse_id(f[2], id) || !parse_id(f[3], g)) continue;
      if (numeric ? id != u.uid : f[0] != spec->user) continue;
      u.uid = id;
      primary = g;
      name = std::string(f[0]);
      u.home = std::string(f[5]);
      known = true;
      break;
    }
  if (!numeric && !known)
    fail(fmt::format("-u {}: no user \"{}\" in the image's /etc/passwd; give a number (e.g. -u 1000:1000)", text,
                     spec->user));
  if (!spec->group.empty()) {
    if (!parse_id(spec->group, u.gid)) {
      auto id = lookup_id(group, spec->group, nullptr);
      if (!id) fail(fmt::format("-u {}: no group \"{}\" in the image's /etc/group; give a number", text, spec->group));
      u.gid = *id;
    }
  } else {
    u.gid = known ? primary : 0;
  }
  u.groups = member_groups(group, name, u.gid);
  return u;
}

std::string find_init() {
  if (const char* e = std::getenv("ENVSNAP_INIT"); e && *e) return ::access(e, X_OK) == 0 ? e : "";
  for (const char* p : {"/usr/bin/tini-static", "/usr/libexec/envsnap/tini-static", "/usr/local/bin/tini-static"})
    if (::access(p, X_OK) == 0) return p;
  return find_program("tini-static");
}

// --- the run directory and record -----------------------------------------------------

struct RunDir {
  std::string id;
  fs::path dir, bundle, rootfs, upper, work, log, record, pid_file;
};

RunDir make_run_dir(const store::Store& store) {
  RunDir r;
  r.id = random_id();
  r.dir = store.cache_dir("runs") / r.id;
  r.bundle = r.dir / "bundle";
  r.rootfs = r.bundle / "rootfs";
  r.upper = r.dir / "upper";
  r.work = r.dir / "work";
  r.log = r.dir / "output.log";
  r.record = r.dir / "record.json";
  r.pid_file = r.dir / "container.pid";
  std::error_code ec;
  fs::create_directories(r.rootfs, ec);
  if (!ec) fs::create_directories(r.upper, ec);
  if (!ec) fs::create_directories(r.work, ec);
  if (ec) fail(fmt::format("cannot create the run directory {}: {}", r.dir.string(), ec.message()));
  ::chmod(r.dir.c_str(), 0700);
  ::chmod(r.rootfs.c_str(), 0755);
  return r;
}

void write_json_file(const fs::path& file, const json& j) {
  fs::path tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) fail(fmt::format("cannot write {}", tmp.string()));
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) fail(fmt::format("cannot write {}: {}", file.string(), std::strerror(errno)));
}

// The run's record as it starts; "ended", "status" and "exit_code" are set at the end.
json new_record(const RunDir& dir, const RunRequest& req, const ResolvedImage& image, const char* runtime,
                const std::vector<std::string>& command, const std::vector<std::string>& gpus) {
  return json{{"id", dir.id},
              {"name", req.name},
              {"image", image.display},
              {"manifest", image.blobs.manifest.digest.str()},
              {"runtime", runtime},
              {"command", command},
              {"gpus", gpus},
              {"started", now_utc()},
              {"status", "running"}};
}

// Drops the writable layer and the bundle; the record and the log stay.
void remove_run_files(const RunDir& r) {
  for (const auto& p : {r.bundle, r.upper, r.work, r.pid_file}) {
    if (auto res = image::remove_tree(p); !res) fmt::print(stderr, "envsnap: warning: {}\n", res.message());
  }
}

// --- supervising the runtime ------------------------------------------------------------

enum class Engine { runc, crun, podman, docker };

const char* engine_name(Engine e) {
  switch (e) {
    case Engine::runc: return "runc";
    case Engine::crun: return "crun";
    case Engine::podman: return "podman";
    case Engine::docker: return "docker";
  }
  return "?";
}

struct EngineChoice {
  Engine engine;
  std::string path;
};

EngineChoice choose_engine(const std::string& flag) {
  std::string want = flag;
  if (want == "auto" || want.empty()) {
    if (const char* e = std::getenv("ENVSNAP_RUNTIME"); e && *e) want = e;
  }
  auto pick = [](Engine e) -> std::optional<EngineChoice> {
    std::string p = find_program(engine_name(e));
    if (p.empty()) return std::nullopt;
    return EngineChoice{e, p};
  };
  if (want == "auto" || want.empty()) {
    // runc first: it works with every cgroup layout; crun needs a workaround on hybrid ones.
    for (Engine e : {Engine::runc, Engine::crun})
      if (auto c = pick(e)) return *c;
    fail("no usable OCI runtime: neither runc nor crun is on PATH; install one (apt-get install runc), or give "
         "--runtime podman|docker");
  }
  for (Engine e : {Engine::runc, Engine::crun, Engine::podman, Engine::docker}) {
    if (want != engine_name(e)) continue;
    if (auto c = pick(e)) return *c;
    fail(fmt::format("--runtime {}: {} is not on PATH; install it or choose another runtime (runc, crun, podman, "
                     "docker)",
                     want, want));
  }
  fail(fmt::format("--runtime {}: unknown runtime; give runc, crun, podman or docker", want));
}

// Output relay: every byte goes to its stream and to the run's log.
class Relay {
public:
  explicit Relay(int log_fd) : m_log(log_fd) {}
  // Returns false at end of file. A stream whose reader went away (EPIPE: `| head`)
  // is no longer written; the log still gets everything.
  bool pump(int from, int to) {
    char buf[65536];
    ssize_t n = ::read(from, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) return false;
    bool& closed = to == STDOUT_FILENO ? m_out_closed : m_err_closed;
    if (!closed) closed = !write_all(to, buf, static_cast<size_t>(n));
    if (m_log >= 0) write_all(m_log, buf, static_cast<size_t>(n));
    return true;
  }

private:
  static bool write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  int m_log;
  bool m_out_closed = false, m_err_closed = false;
};

struct ChildSetup {
  bool new_mount_ns = false;
  bool umount_cgroup2 = false;    // crun on a hybrid cgroup host
  bool overlay = false;
  fs::path layer_root;            // the layer cache: lowerdirs are named relative to it
  std::vector<std::string> lower; // top layer first
  fs::path upper, work, rootfs;
  int stdin_fd = -1;              // -1: /dev/null
  int stdout_fd = -1, stderr_fd = -1;
  std::vector<int> inherited_fds;  // held open by the runtime (the layers' flocks)
  std::vector<std::string> argv;
};

constexpr std::string_view kOverlayRefused = "overlay-refused:";

void child_fail(int err_fd, std::string_view message) {
  (void)!::write(err_fd, message.data(), message.size());
  ::_exit(exit_run_failed);
}

// In the child, between fork and exec: only async-signal-safe work except for
// building strings, which is fine since the parent has no other threads yet.
[[noreturn]] void child_main(const ChildSetup& c, int err_fd, const sigset_t& old_mask) {
  if (c.new_mount_ns) {
    if (::unshare(CLONE_NEWNS) != 0)
      child_fail(err_fd, fmt::format("cannot create a mount namespace: {}", std::strerror(errno)));
    if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      child_fail(err_fd, fmt::format("cannot make the mount namespace private: {}", std::strerror(errno)));
    if (c.umount_cgroup2 && ::umount2("/sys/fs/cgroup/unified", MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
      child_fail(err_fd, fmt::format("cannot hide /sys/fs/cgroup/unified from crun: {}", std::strerror(errno)));
    if (c.overlay) {
      if (::chdir(c.layer_root.c_str()) != 0)
        child_fail(err_fd, fmt::format("cannot enter {}: {}", c.layer_root.string(), std::strerror(errno)));
      std::string lower;
      for (const auto& l : c.lower) lower += (lower.empty() ? "" : ":") + l;
      std::string options = fmt::format("lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off", lower,
                                        c.upper.string(), c.work.string());
      if (options.size() >= 4000) {
        child_fail(err_fd, fmt::format("{}the image has too many layers for one overlay mount", kOverlayRefused));
      }
      if (::mount("overlay", c.rootfs.c_str(), "overlay", 0, options.c_str()) != 0) {
        int err = errno;
        // Older kernels do not know index= or redirect_dir=: try without them.
        std::string plain = fmt::format("lowerdir={},upperdir={},workdir={}", lower, c.upper.string(), c.work.string());
        if (::mount("overlay", c.rootfs.c_str(), "overlay", 0, plain.c_str()) != 0)
          child_fail(err_fd, fmt::format("{}{}", kOverlayRefused, std::strerror(err)));
      }
      if (::chdir("/") != 0) child_fail(err_fd, "cannot return to /");
    }
  }
  int in = c.stdin_fd >= 0 ? c.stdin_fd : ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (in < 0 || ::dup2(in, 0) < 0) child_fail(err_fd, "cannot set up stdin");
  if (c.stdout_fd >= 0 && ::dup2(c.stdout_fd, 1) < 0) child_fail(err_fd, "cannot set up stdout");
  if (c.stderr_fd >= 0 && ::dup2(c.stderr_fd, 2) < 0) child_fail(err_fd, "cannot set up stderr");
  // The runtime keeps the layers' shared flocks for as long as it lives, so a gc cannot
  // take them even if this supervisor is killed.
  for (int fd : c.inherited_fds) ::fcntl(fd, F_SETFD, 0);
  for (int s = 1; s < NSIG; ++s) ::signal(s, SIG_DFL);
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  std::vector<char*> argv;
  for (const auto& a : c.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  child_fail(err_fd, fmt::format("cannot execute {}: {}", c.argv[0], std::strerror(errno)));
  ::_exit(exit_run_failed);
}

struct Outcome {
  bool started = false;          // the container's init ran (its pid file appeared)
  int exit_code = exit_run_failed;
  std::string setup_error;       // the child failed before exec
  bool overlay_refused = false;
};

struct SuperviseOptions {
  bool tty = false;
  fs::path pid_file;             // empty: started as soon as exec succeeded
  const std::vector<PortMap>* ports = nullptr;
  std::vector<UniqueFd>* listeners = nullptr;
  int log_fd = -1;
  std::function<void()> kill_container;  // a second SIGINT/SIGTERM
};

Outcome supervise(const ChildSetup& base, const SuperviseOptions& opt) {
  Outcome out;
  // A reader of our output that goes away must not kill the supervisor; an inherited
  // "ignore SIGCHLD" would make the runtime's exit status unobtainable.
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGCHLD, SIG_DFL);
  sigset_t forwarded, old_mask;
  sigemptyset(&forwarded);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD, SIGCONT})
    sigaddset(&forwarded, s);
  ::sigprocmask(SIG_BLOCK, &forwarded, &old_mask);
  UniqueFd sfd(::signalfd(-1, &forwarded, SFD_CLOEXEC | SFD_NONBLOCK));
  auto restore_mask = [&] { ::sigprocmask(SIG_SETMASK, &old_mask, nullptr); };
  if (!sfd) {
    restore_mask();
    fail(fmt::format("cannot watch signals: {}", std::strerror(errno)));
  }

  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, status_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0 || ::pipe2(status_pipe, O_CLOEXEC) != 0) {
    restore_mask();
    fail(fmt::format("cannot create pipes: {}", std::strerror(errno)));
  }
  ChildSetup c = base;
  c.stdout_fd = out_pipe[1];
  c.stderr_fd = err_pipe[1];
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = ::fork();
  if (pid < 0) {
    restore_mask();
    fail(fmt::format("cannot fork: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    ::close(status_pipe[0]);
    child_main(c, status_pipe[1], old_mask);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(status_pipe[1]);
  UniqueFd out_r(out_pipe[0]), err_r(err_pipe[0]), status_r(status_pipe[0]);
  {
    std::string msg;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(status_r.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) msg.append(buf, static_cast<size_t>(n));
    if (!msg.empty()) {
      int st = 0;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      restore_mask();
      if (msg.rfind(kOverlayRefused, 0) == 0) {
        out.overlay_refused = true;
        out.setup_error = msg.substr(kOverlayRefused.size());
      } else {
        out.setup_error = msg;
      }
      return out;
    }
  }

  Relay relay(opt.log_fd);
  bool child_done = false;
  int status = 0;
  int terminations = 0;
  std::unique_ptr<PortProxy> proxy;
  bool want_pid = !opt.pid_file.empty();
  if (!want_pid) out.started = true;
  auto check_started = [&] {
    if (!want_pid || out.started) return;
    std::ifstream in(opt.pid_file);
    long cpid = 0;
    if (!(in >> cpid) || cpid <= 0) return;
    out.started = true;
    // Only while the runtime runs is the pid the container's (not a reused one).
    if (opt.ports && !opt.ports->empty() && !child_done) {
      proxy = std::make_unique<PortProxy>(static_cast<pid_t>(cpid), *opt.ports, std::move(*opt.listeners));
      if (auto r = proxy->start(); !r) fmt::print(stderr, "envsnap: warning: {}\n", r.message());
    }
  };
  auto deadline = std::optional<std::chrono::steady_clock::time_point>();
  while (out_r || err_r || !child_done) {
    pollfd fds[3];
    int n = 0;
    int i_out = -1, i_err = -1;
    fds[n] = {sfd.get(), POLLIN, 0};
    int i_sig = n++;
    if (out_r) {
      fds[n] = {out_r.get(), POLLIN, 0};
      i_out = n++;
    }
    if (err_r) {
      fds[n] = {err_r.get(), POLLIN, 0};
      i_err = n++;
    }
    int timeout = -1;
    if (want_pid && !out.started) timeout = 20;
    if (child_done) timeout = 100;
    int r = ::poll(fds, static_cast<nfds_t>(n), timeout);
    if (r < 0 && errno != EINTR) {
      fmt::print(stderr, "envsnap: warning: poll: {}; waiting for the runtime\n", std::strerror(errno));
      break;
    }
    check_started();
    if (i_out >= 0 && (fds[i_out].revents & (POLLIN | POLLHUP | POLLERR)))
      if (!relay.pump(out_r.get(), STDOUT_FILENO)) out_r.reset();
    if (i_err >= 0 && (fds[i_err].revents & (POLLIN | POLLHUP | POLLERR)))
      if (!relay.pump(err_r.get(), STDERR_FILENO)) err_r.reset();
    if (fds[i_sig].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(sfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) {
          if (!child_done) {
            pid_t w = ::waitpid(pid, &status, WNOHANG);
            if (w == pid || (w < 0 && errno == ECHILD)) {
              child_done = true;
              deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
            }
          }
          continue;
        }
        if (child_done) continue;
        // A key on the terminal signals the whole foreground group, the runtime included.
        bool from_terminal = si.ssi_code == SI_KERNEL && (sig == SIGINT || sig == SIGQUIT || sig == SIGWINCH);
        if (!from_terminal) ::kill(pid, sig);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
          if (++terminations >= 2 && opt.kill_container) {
            fmt::print(stderr, "envsnap: killing the container\n");
            opt.kill_container();
          }
        }
      }
    }
    if (!child_done && ::waitpid(pid, &status, WNOHANG) == pid) {
      child_done = true;
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    }
    // Whatever still holds the pipes after the runtime ended (nothing, normally) is not waited for.
    if (child_done && deadline && std::chrono::steady_clock::now() > *deadline) break;
  }
  if (!child_done) {
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  check_started();
  if (proxy) proxy->stop();
  // Signals that arrived since the last read are consumed here, not acted on after the
  // mask is lifted: the caller still has the record and --rm cleanup to do. The mask
  // stays as it is until envsnap exits.
  signalfd_siginfo drained{};
  while (::read(sfd.get(), &drained, sizeof drained) == static_cast<ssize_t>(sizeof drained)) {
  }
  if (WIFEXITED(status)) out.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) out.exit_code = 128 + WTERMSIG(status);
  (void)opt.tty;
  return out;
}

// --- podman and docker -----------------------------------------------------------------

std::vector<std::string> engine_run_args(const RunRequest& req, const std::vector<Volume>& volumes,
                                         const std::vector<std::string>& extra_env, const std::string& image,
                                         const std::vector<std::string>& command, Engine engine, uint64_t shm,
                                         const std::string& init, const std::string& container_name,
                                         const std::string& user_text, const std::vector<std::string>& gpu_args) {
  std::vector<std::string> a = {"run", "--rm", "--name", container_name};
  if (!init.empty() && engine == Engine::podman) {
    a.push_back("--init");
    a.push_back("--init-path=" + init);
  } else {
    a.push_back("--init");
  }
  if (req.interactive) a.push_back("-i");
  if (req.tty) a.push_back("-t");
  if (req.ports.empty()) a.push_back("--network=host");
  for (const auto& p : req.ports) a.push_back("-p=" + p);
  for (const auto& v : volumes) a.push_back(fmt::format("-v={}:{}{}", v.source, v.destination, v.read_only ? ":ro" : ""));
  for (const auto& e : extra_env) a.push_back("-e=" + e);
  if (!req.workdir.empty()) a.push_back("-w=" + req.workdir);
  if (!user_text.empty()) a.push_back("-u=" + user_text);
  if (req.ipc == "host") a.push_back("--ipc=host");
  else a.push_back(fmt::format("--shm-size={}", shm));
  for (const auto& u : req.ulimits) a.push_back("--ulimit=" + u);
  a.insert(a.end(), gpu_args.begin(), gpu_args.end());
  a.push_back(image);
  a.insert(a.end(), command.begin(), command.end());
  return a;
}

}  // namespace

int run(const RunRequest& req) {
  // Everything the flags say is checked before anything is unpacked or started.
  fs::path cwd = fs::current_path();
  std::vector<Volume> volumes;
  for (const auto& v : req.volumes) {
    auto parsed = parse_volume(v, cwd);
    if (!parsed) fail(parsed.message());
    struct stat st {};
    if (::stat(parsed->source.c_str(), &st) != 0)
      fail(fmt::format("-v {}: the source {} does not exist; create it first (envsnap does not create volume "
                       "sources)",
                       v, parsed->source));
    volumes.push_back(std::move(*parsed));
  }
  std::vector<PortMap> ports;
  for (const auto& p : req.ports) {
    auto parsed = parse_port(p);
    if (!parsed) fail(parsed.message());
    ports.push_back(*parsed);
  }
  std::vector<Ulimit> ulimits;
  for (const auto& u : req.ulimits) {
    auto parsed = parse_ulimit(u);
    if (!parsed) fail(parsed.message());
    ulimits.push_back(*parsed);
  }
  uint64_t shm = default_shm_bytes();
  if (!req.shm_size.empty()) {
    auto parsed = parse_size(req.shm_size, "--shm-size");
    if (!parsed) fail(parsed.message());
    shm = *parsed;
  }
  if (!req.ipc.empty() && req.ipc != "host" && req.ipc != "private")
    fail(fmt::format("--ipc {}: give host or private", req.ipc));
  if (!req.user.empty()) {
    if (auto u = parse_user(req.user); !u) fail(u.message());
  }
  if (req.tty && !req.print_config && ::isatty(STDIN_FILENO) != 1)
    fail("-t needs a terminal on stdin (this one is a pipe or a file); leave out -t, or give -i alone to pass stdin");
  if (!req.workdir.empty() && req.workdir.front() != '/') fail(fmt::format("-w {}: give an absolute path", req.workdir));
  auto host_env = host_environment();
  std::vector<std::string> extra_env;
  for (const auto& f : req.env_files) {
    auto lines = read_env_file(f, host_env);
    if (!lines) fail(lines.message());
    merge_env(extra_env, *lines);
  }
  for (const auto& e : req.env) {
    auto kv = parse_env(e, host_env);
    if (!kv) fail(kv.message());
    if (kv.value()) merge_env(extra_env, {**kv});
  }
  EngineChoice engine{Engine::runc, ""};
  if (!req.print_config) engine = choose_engine(req.runtime);

  auto image = resolve_image(req);
  const json& config = image.blobs.config_json;
  const json cc = config.contains("config") && config["config"].is_object() ? config["config"] : json::object();

  // The host's GPUs and the snapshot's requirements.
  json lock = json::object();
  if (auto l = image::lock_from_config(config, image.display)) lock = l->lock;
  auto gpu = plan_gpus(req.gpus, req.driver_root);
  if (!gpu) fail(gpu.message());
  CheckInput check{lock, gpu->host, !gpu->selected.empty(), req.gpus == "none"};
  bool refused = false;
  for (const auto& f : check_host(check)) {
    fmt::print(stderr, "envsnap: {}: {}\n", f.error ? (req.force ? "warning (--force)" : "error") : "warning", f.message);
    refused = refused || f.error;
  }
  if (refused && !req.force) fail("the snapshot cannot run on this host as it is (see above); --force runs it anyway");

  // docker's rule: the entrypoint stays, a given command replaces the image's Cmd.
  std::vector<std::string> command = json_strings(cc.value("Entrypoint", json::array()));
  if (req.entrypoint) command = req.entrypoint->empty() ? std::vector<std::string>{} : std::vector<std::string>{*req.entrypoint};
  std::vector<std::string> args = req.command;
  if (args.empty() && !req.entrypoint) args = json_strings(cc.value("Cmd", json::array()));
  command.insert(command.end(), args.begin(), args.end());
  if (command.empty()) fail(fmt::format("{} has no command; give one after --, e.g. envsnap run {} -- python3 train.py",
                                        image.display, image.display));
  std::string workdir = !req.workdir.empty() ? req.workdir : cc.value("WorkingDir", "");
  if (workdir.empty()) workdir = "/";
  std::string user_text = !req.user.empty() ? req.user : cc.value("User", "");
  std::string init = find_init();
  if (init.empty() && !req.quiet)
    fmt::print(stderr, "envsnap: warning: no tini-static found (apt-get install tini): the command runs as PID 1 "
                       "and may ignore SIGTERM\n");

  // podman and docker get the image and the flags; the rest is theirs.
  if (engine.engine == Engine::podman || engine.engine == Engine::docker) {
    auto dir = make_run_dir(image.store);
    std::string image_ref;
    std::vector<std::string> load;
    fs::path archive;
    if (engine.engine == Engine::podman) {
      if (auto list = image.store.list())
        for (const auto& t : *list)
          if (t.manifest.digest == image.blobs.manifest.digest) image.tags.push_back(t.name);
      std::string tag = image.tags.empty() ? "" : image.tags.front();
      if (tag.empty()) fail(fmt::format("{} has no tag in the store; tag it (envsnap pull/capture -t) to run it with podman",
                                        image.display));
      auto pulled = util::run_command({engine.path, "pull", "-q", fmt::format("oci:{}:{}", image.store.path().string(), tag)},
                                      std::chrono::minutes(30));
      if (!pulled || pulled->exit_code != 0)
        fail(fmt::format("podman could not load {}: {}", image.display,
                         pulled ? util::trim(pulled->err) : std::string_view(pulled.message())));
      image_ref = std::string(util::trim(pulled->out));
    } else {
      std::string id = config.empty() ? "" : image.blobs.manifest_json["config"].value("digest", "");
      auto have = util::run_command({engine.path, "image", "inspect", "--format", "{{.Id}}", id}, std::chrono::minutes(1));
      if (!have || have->exit_code != 0) {
        archive = dir.dir / "image.tar";
        image::FailureKind kind = image::FailureKind::other;
        auto ex = image::export_image(image.store, image.blobs.manifest.digest.str(), archive, {}, &kind);
        if (!ex) fail(ex.message());
        auto loaded = util::run_command({engine.path, "load", "-i", archive.string()}, std::chrono::minutes(30));
        ::unlink(archive.c_str());
        if (!loaded || loaded->exit_code != 0)
          fail(fmt::format("docker could not load {}: {}", image.display,
                           loaded ? util::trim(loaded->err) : std::string_view(loaded.message())));
      }
      image_ref = id;
    }
    auto args = engine_run_args(req, volumes, extra_env, image_ref, command, engine.engine, shm, init,
                                "envsnap-" + dir.id, req.user,
                                engine.engine == Engine::docker ? gpu->docker_args : gpu->podman_args);
    args.insert(args.begin(), engine.path);
    json record = new_record(dir, req, image, engine_name(engine.engine), command, gpu->selected);
    write_json_file(dir.record, record);
    UniqueFd log(::open(dir.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ChildSetup c;
    c.argv = args;
    c.stdin_fd = req.interactive ? STDIN_FILENO : -1;
    SuperviseOptions so;
    so.tty = req.tty;
    so.log_fd = log.get();
    auto outcome = supervise(c, so);
    if (!outcome.setup_error.empty()) fail(outcome.setup_error);
    record["ended"] = now_utc();
    record["exit_code"] = outcome.exit_code;
    record["status"] = "exited";
    write_json_file(dir.record, record);
    remove_run_files(dir);
    return outcome.exit_code;
  }

  // runc and crun: the layer cache, a bundle, a mount namespace.
  auto layers = unpack_layers(image.store, image.blobs, [&](const std::string& line) {
    if (!req.quiet) fmt::print(stderr, "envsnap: {}\n", line);
  });
  if (!layers) fail(layers.message());
  auto user = resolve_user(user_text, layers->dirs);
  if (!gpu->ldconfig_dirs.empty() && gpu->ldconfig_path.empty()) {
    // No ldconfig on this host: the loader finds the driver through LD_LIBRARY_PATH.
    std::string dirs;
    for (const auto& d : gpu->ldconfig_dirs) dirs += (dirs.empty() ? "" : ":") + d;
    auto old = env_value(json_strings(cc.value("Env", json::array())), "LD_LIBRARY_PATH");
    gpu->env.push_back("LD_LIBRARY_PATH=" + dirs + (old && !old->empty() ? ":" + *old : ""));
    if (!req.quiet)
      fmt::print(stderr, "envsnap: warning: no ldconfig on this host: the driver's libraries are found through "
                         "LD_LIBRARY_PATH={}\n", dirs);
  }

  BundleSpec spec;
  std::vector<std::string> env = json_strings(cc.value("Env", json::array()));
  if (!env_value(env, "PATH")) env.insert(env.begin(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  if (!env_value(env, "HOME")) env.push_back("HOME=" + (!user.home.empty() ? user.home : user.uid == 0 ? "/root" : "/"));
  if (req.tty && !env_value(env, "TERM")) env.push_back("TERM=xterm");
  merge_env(env, gpu->env);
  merge_env(env, extra_env);
  spec.env = env;
  spec.cwd = workdir;
  spec.uid = user.uid;
  spec.gid = user.gid;
  spec.additional_gids = user.groups;
  spec.terminal = req.tty;
  spec.host_network = ports.empty();
  spec.host_ipc = req.ipc == "host";
  spec.shm_bytes = shm;
  spec.init_path = init;
  spec.volumes = volumes;
  spec.devices = gpu->devices;
  spec.device_mounts = gpu->mounts;

  char host_name[256] = {};
  ::gethostname(host_name, sizeof host_name - 1);
  spec.hostname = !req.name.empty() ? req.name : (spec.host_network ? host_name : "envsnap");
  // Training defaults, as the NGC containers recommend: many open files, pinned memory.
  // Raising a hard limit needs CAP_SYS_RESOURCE, which envsnap may lack: the soft limits
  // go up to this process's hard ones.
  for (auto [name, res] : {std::pair{"RLIMIT_NOFILE", RLIMIT_NOFILE}, std::pair{"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK}}) {
    rlimit rl{};
    if (::getrlimit(res, &rl) != 0) continue;
    uint64_t hard = rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(rl.rlim_max);
    spec.rlimits.push_back({name, hard, hard});
  }
  for (const auto& u : ulimits) {
    auto it = std::find_if(spec.rlimits.begin(), spec.rlimits.end(), [&](const Ulimit& o) { return o.name == u.name; });
    if (it != spec.rlimits.end()) *it = u;
    else spec.rlimits.push_back(u);
  }
  if (!init.empty()) spec.args = {init_mount_path, "-g", "--"};
  spec.args.insert(spec.args.end(), command.begin(), command.end());

  auto dir = make_run_dir(image.store);
  if (!gpu->ldconfig_dirs.empty() && !gpu->ldconfig_path.empty())
    spec.create_container_hooks.push_back(ldconfig_hook(gpu->ldconfig_path, dir.rootfs.string(), gpu->ldconfig_dirs));
  if (spec.host_network) {
    for (const char* f : {"/etc/resolv.conf", "/etc/hosts"})
      if (::access(f, R_OK) == 0) spec.host_files.push_back({f, f, true});
  } else {
    fs::path hosts = dir.dir / "hosts";
    std::ofstream(hosts) << fmt::format("127.0.0.1\tlocalhost {}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                                        spec.hostname);
    spec.host_files.push_back({hosts.string(), "/etc/hosts", true});
  }
  json bundle = bundle_config(spec);
  if (req.print_config) {
    fmt::print("{}\n", bundle.dump(2));
    remove_run_files(dir);
    std::error_code ec;
    fs::remove_all(dir.dir, ec);
    return 0;
  }
  write_json_file(dir.bundle / "config.json", bundle);

  // -p listens before anything starts, so a port in use is envsnap's failure (125).
  std::vector<UniqueFd> listeners;
  for (const auto& p : ports) {
    auto l = listen_port(p);
    if (!l) {
      remove_run_files(dir);
      fail(l.message());
    }
    listeners.push_back(std::move(*l));
  }

  std::string container_id = "envsnap-" + dir.id;
  json record = new_record(dir, req, image, engine_name(engine.engine), command, gpu->selected);
  write_json_file(dir.record, record);
  UniqueFd log(::open(dir.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));

  ChildSetup c;
  c.new_mount_ns = true;
  c.umount_cgroup2 = engine.engine == Engine::crun && cgroup_hybrid();
  const char* force_copy = std::getenv("ENVSNAP_ROOTFS");
  c.overlay = !(force_copy && std::string_view(force_copy) == "copy");
  c.layer_root = unpacked_root(image.store);
  for (auto it = layers->dirs.rbegin(); it != layers->dirs.rend(); ++it) c.lower.push_back(it->filename().string());
  c.upper = dir.upper;
  c.work = dir.work;
  c.rootfs = dir.rootfs;
  c.stdin_fd = req.interactive || req.tty ? STDIN_FILENO : -1;
  c.argv = {engine.path, "run", "--bundle", dir.bundle.string(), "--pid-file", dir.pid_file.string(), container_id};
  for (const auto& l : layers->locks) c.inherited_fds.push_back(l.get());
  SuperviseOptions so;
  so.tty = req.tty;
  so.pid_file = dir.pid_file;
  so.ports = &ports;
  so.listeners = &listeners;
  so.log_fd = log.get();
  so.kill_container = [&] {
    (void)util::run_command({engine.path, "kill", container_id, "KILL"}, std::chrono::seconds(10));
  };

  auto copy_rootfs = [&](const std::string& why) {
    if (!req.quiet) fmt::print(stderr, "envsnap: overlayfs is not available here ({}): the run uses a copy of the image\n", why);
    image::RestoreOptions ro;
    ro.progress = !req.quiet && ::isatty(STDERR_FILENO) == 1;
    image::FailureKind kind = image::FailureKind::other;
    std::error_code ec;
    fs::remove(dir.rootfs, ec);
    if (auto r = image::restore_image(image.store, image.blobs.manifest.digest.str(), dir.rootfs, ro, &kind); !r) {
      remove_run_files(dir);
      fail(r.message());
    }
    c.overlay = false;
  };
  if (!c.overlay) copy_rootfs("ENVSNAP_ROOTFS=copy");
  auto outcome = supervise(c, so);
  if (outcome.overlay_refused) {
    copy_rootfs(outcome.setup_error);
    outcome = supervise(c, so);
  }
  record["ended"] = now_utc();
  record["status"] = outcome.started ? "exited" : "failed";
  record["exit_code"] = outcome.started ? outcome.exit_code : exit_run_failed;
  write_json_file(dir.record, record);
  if (req.remove) remove_run_files(dir);
  if (!outcome.setup_error.empty()) fail(outcome.setup_error);
  if (!outcome.started)
    fail(fmt::format("{} could not start the container (its message is above); the bundle is {}",
                     engine_name(engine.engine), req.remove ? "removed (run without --rm to keep it)" : dir.bundle.string()));
  return outcome.exit_code;
}

}  // namespace envsnap::run
