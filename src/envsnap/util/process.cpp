#include "envsnap/util/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "envsnap/util/fd.hpp"

extern char** environ;

namespace envsnap::util {

using Clock = std::chrono::steady_clock;

// Reads every given fd until EOF or the deadline; false on timeout.
static bool drain(std::vector<std::pair<int, std::string*>> fds, Clock::time_point deadline) {
  char buf[65536];
  while (!fds.empty()) {
    auto now = Clock::now();
    if (now >= deadline) return false;
    // Round up, so the child gets its whole timeout.
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    std::vector<pollfd> p;
    for (auto& [fd, s] : fds) p.push_back({fd, POLLIN, 0});
    int r = ::poll(p.data(), p.size(), static_cast<int>(left));
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    for (size_t i = p.size(); i-- > 0;) {
      if (!p[i].revents) continue;
      auto n = ::read(p[i].fd, buf, sizeof buf);
      if (n > 0) {
        fds[i].second->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds.erase(fds.begin() + static_cast<long>(i));
      }
    }
  }
  return true;
}

static int reap(pid_t pid, bool kill_first) {
  if (kill_first) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

Result<std::string> run_in_child(const std::function<std::string()>& fn, std::chrono::milliseconds timeout) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Error{fmt::format("pipe: {}", std::strerror(errno))};
  UniqueFd rd(p[0]), wr(p[1]);
  pid_t pid = ::fork();
  if (pid < 0) return Error{fmt::format("fork: {}", std::strerror(errno))};
  if (pid == 0) {
    rd.reset();
    std::string out = fn();
    size_t off = 0;
    while (off < out.size()) {
      auto n = ::write(wr.get(), out.data() + off, out.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ::_exit(3);
      off += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  wr.reset();
  std::string out;
  bool finished = drain({{rd.get(), &out}}, Clock::now() + timeout);
  int status = reap(pid, !finished);
  if (!finished) return Error{fmt::format("timed out after {} ms; the child was killed", timeout.count())};
  if (WIFSIGNALED(status)) return Error{fmt::format("the child died of signal {}", WTERMSIG(status))};
  if (WEXITSTATUS(status) != 0) return Error{fmt::format("the child exited with {}", WEXITSTATUS(status))};
  return out;
}

Result<CommandOutput> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                                  const std::vector<std::string>& extra_env) {
  int o[2], e[2], x[2];
  if (::pipe2(o, O_CLOEXEC) != 0 || ::pipe2(e, O_CLOEXEC) != 0 || ::pipe2(x, O_CLOEXEC) != 0)
    return Error{fmt::format("pipe: {}", std::strerror(errno))};
  UniqueFd ord(o[0]), owr(o[1]), erd(e[0]), ewr(e[1]), xrd(x[0]), xwr(x[1]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** ep = environ; *ep; ++ep) env_strings.emplace_back(*ep);
  for (auto& kv : extra_env) env_strings.push_back(kv);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) return Error{fmt::format("fork: {}", std::strerror(errno))};
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::dup2(owr.get(), 1);
    ::dup2(ewr.get(), 2);
    ::execvpe(args[0], args.data(), envp.data());
    int err = errno;
    (void)!::write(xwr.get(), &err, sizeof err);
    ::_exit(127);
  }
  owr.reset();
  ewr.reset();
  xwr.reset();
  int exec_errno = 0;
  if (::read(xrd.get(), &exec_errno, sizeof exec_errno) == sizeof exec_errno) {
    reap(pid, false);
    return Error{fmt::format("cannot run {}: {}", argv[0], std::strerror(exec_errno))};
  }
  CommandOutput r;
  bool finished = drain({{ord.get(), &r.out}, {erd.get(), &r.err}}, Clock::now() + timeout);
  int status = reap(pid, !finished);
  if (!finished) return Error{fmt::format("{} timed out after {} ms", argv[0], timeout.count())};
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace envsnap::util
