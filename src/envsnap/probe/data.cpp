#include "envsnap/probe/data.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include <fmt/format.h>

#include "envsnap/util/fd.hpp"
#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

namespace fs = std::filesystem;

namespace {

struct Node {
  char type = 'f';  // f, d, l
  std::string name;
  fs::path path;
  uint64_t size = 0;
  std::string digest;  // hex; empty when unreadable
  std::vector<Node> children;
};

void scan(Node& dir, std::vector<Node*>& files, Warnings& warnings) {
  std::error_code ec;
  fs::directory_iterator it(dir.path, ec);
  if (ec) {
    warnings.add(fmt::format("{}: cannot list: {}", util::printable(dir.path.string()), ec.message()));
    return;
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    Node n;
    n.path = it->path();
    n.name = n.path.filename().string();
    struct stat st;
    if (::lstat(n.path.c_str(), &st) != 0) {
      warnings.add(fmt::format("{}: {}", util::printable(n.path.string()), std::strerror(errno)));
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      n.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      n.type = 'l';
      std::error_code lec;
      auto target = fs::read_symlink(n.path, lec);
      n.digest = util::sha256_hex(target.string());
    } else if (S_ISREG(st.st_mode)) {
      n.type = 'f';
      n.size = static_cast<uint64_t>(st.st_size);
    } else {
      warnings.add(fmt::format("{}: not a regular file, directory or symlink; left out of the digest",
                               util::printable(n.path.string())));
      continue;
    }
    dir.children.push_back(std::move(n));
  }
  if (ec) warnings.add(fmt::format("{}: cannot list: {}", util::printable(dir.path.string()), ec.message()));
  std::sort(dir.children.begin(), dir.children.end(), [](const Node& a, const Node& b) { return a.name < b.name; });
  for (auto& c : dir.children) {
    if (c.type == 'd') scan(c, files, warnings);
    if (c.type == 'f') files.push_back(&c);
  }
}

void hash_files(const std::vector<Node*>& files, Warnings& warnings, unsigned threads) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < files.size();) {
      Node& n = *files[i];
      util::UniqueFd fd(::open(n.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
      if (!fd) {
        warnings.add(fmt::format("{}: {}; left out of the digest", util::printable(n.path.string()),
                                 std::strerror(errno)));
        continue;
      }
      auto d = util::sha256_file(fd.get(), util::printable(n.path.string()));
      if (!d) {
        warnings.add(d.message() + "; left out of the digest");
        continue;
      }
      n.digest = *d;
    }
  };
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(files.size())));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// Fills directory digests bottom-up and counts what went in.
void fold(Node& dir, uint64_t& files, uint64_t& bytes) {
  std::string text;
  for (auto& c : dir.children) {
    if (c.type == 'd') fold(c, files, bytes);
    if (c.digest.empty()) continue;
    if (c.type == 'f') {
      ++files;
      bytes += c.size;
    }
    text += fmt::format("{} {} {}\n", c.type, c.name, c.digest);
  }
  dir.digest = util::sha256_hex(text);
}

}  // namespace

util::Result<DataInfo> probe_data(const std::string& path, const std::string& recorded_path, const std::string& role,
                                  Warnings& warnings, unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return util::Error{fmt::format("--{} {}: {}", role, util::printable(path), std::strerror(errno))};
  DataInfo info;
  info.path = recorded_path;
  info.role = role;
  Node root;
  root.path = path;
  std::vector<Node*> files;
  if (S_ISDIR(st.st_mode)) {
    root.type = 'd';
    scan(root, files, warnings);
    hash_files(files, warnings, threads);
    fold(root, info.files, info.bytes);
  } else if (S_ISREG(st.st_mode)) {
    root.size = static_cast<uint64_t>(st.st_size);
    files.push_back(&root);
    hash_files(files, warnings, 1);
    if (root.digest.empty())
      return util::Error{fmt::format("--{} {}: cannot read the file", role, util::printable(path))};
    info.files = 1;
    info.bytes = root.size;
  } else {
    return util::Error{fmt::format("--{} {}: not a file or directory", role, util::printable(path))};
  }
  info.digest = "sha256:" + root.digest;
  return info;
}

nlohmann::json to_json(const DataInfo& d) {
  return {{"path", d.path}, {"role", d.role}, {"files", d.files}, {"bytes", d.bytes}, {"digest", d.digest}};
}

}  // namespace envsnap::probe
