#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "envsnap/probe/python.hpp"

using namespace envsnap;
using namespace envsnap::probe;
namespace fs = std::filesystem;

namespace {

const char* k_record = "mylib/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\nmylib-0.1.dist-info/RECORD,,\n";
const char* k_record_sha = "sha256:b16be51a7c5c842da093d27ca40ff78383c8473913d7371b44ae08b8632daaf0";
const char* k_conda_record = "conda/__init__.py,,\n";
const char* k_conda_record_sha = "sha256:5f8925232106150504131cec459a4669283fd44b278452bf5f4ba60d187a39da";

class PythonProbe : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/envsnap-python-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    m_dir = tmpl;

    // /usr/lib/python3/dist-packages, the Debian system environment.
    symlink("usr/bin/python3", "python3.11");
    write("usr/bin/python3.11", "");
    mkdir("usr/lib/python3.11");
    mkdir("usr/lib/python3.12");
    const std::string dp = "usr/lib/python3/dist-packages";
    write(dp + "/numpy-1.24.2.egg-info/PKG-INFO", "Metadata-Version: 2.1\nName: numpy\nVersion: 1.24.2\n\nName: not-this\n");
    write(dp + "/six-1.16.0.egg-info", "Metadata-Version: 1.2\nName: six\nVersion: 1.16.0\nSummary: Python 2 and 3\n");
    write(dp + "/mylib-0.1.dist-info/METADATA", "Metadata-Version: 2.1\r\nName: mylib\r\nVersion: 0.1\r\n");
    write(dp + "/mylib-0.1.dist-info/INSTALLER", "pip\n");
    write(dp + "/mylib-0.1.dist-info/RECORD", k_record);
    write(dp + "/mylib-0.1.dist-info/direct_url.json",
          R"({"url": "git+https://user:s3cret@example.com/team/mylib.git",)"
          R"( "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef0123456789abcdef01234567"}})");
    write(dp + "/broken_pkg-2.0.dist-info/METADATA", std::string("\x7f" "ELF\x00\x01\xff garbage", 14));
    write(dp + "/nover.dist-info/METADATA", "\xff\xfe not a header line\n");
    write(dp + "/caf\xe9-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n");
    // The same directory reached through a symlink is listed once, under its real path.
    mkdir("usr/local/lib/python3.11");
    symlink("usr/local/lib/python3.11/dist-packages", "../../../lib/python3/dist-packages");

    // A venv in a project, one with a non-UTF-8 name, one three levels down, and one
    // inside .git that is never looked at.
    write("home/u/proj/.venv/pyvenv.cfg", "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n");
    write("home/u/proj/.venv/lib/python3.11/site-packages/requests-2.31.0.dist-info/METADATA",
          "Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\n");
    write("home/u/proj/.venv/lib/python3.11/site-packages/requests-2.31.0.dist-info/INSTALLER", "uv");
    symlink("home/u/proj/.venv/lib64", "lib");
    write("home/u/\xff/pyvenv.cfg", "version_info = 3.11.4.final.0\n");
    mkdir("home/u/\xff/lib/python3.11/site-packages");
    write("opt/app/venvs/y/pyvenv.cfg", "implementation = CPython\nversion_info = 3.12.1\n");
    mkdir("opt/app/venvs/y/lib/python3.12/site-packages");
    write("home/u/proj/.git/x/pyvenv.cfg", "version = 3.9.0\n");
    mkdir("home/u/proj/.git/x/lib/python3.9/site-packages");

    // A conda root with one environment.
    mkdir("opt/conda/conda-meta");
    write("opt/conda/lib/python3.12/site-packages/conda-24.1.0.dist-info/METADATA",
          "Metadata-Version: 2.1\nName: conda\nVersion: 24.1.0\n");
    write("opt/conda/lib/python3.12/site-packages/conda-24.1.0.dist-info/INSTALLER", "conda\n");
    write("opt/conda/lib/python3.12/site-packages/conda-24.1.0.dist-info/RECORD", k_conda_record);
    mkdir("opt/conda/envs/x/conda-meta");
    write("opt/conda/envs/x/lib/python3.10/site-packages/torch-2.3.1.dist-info/METADATA",
          "Metadata-Version: 2.1\nName: torch\nVersion: 2.3.1\nLicense: BSD\n  second line\nRequires-Dist: filelock\n\nbody\n");

    auto root = util::RootFs::open(m_dir);
    ASSERT_TRUE(root.ok());
    m_root.emplace(std::move(*root));
  }

  void TearDown() override { fs::remove_all(m_dir); }

  void write(const std::string& rel, const std::string& content) {
    fs::create_directories((m_dir / rel).parent_path());
    std::ofstream(m_dir / rel, std::ios::binary) << content;
  }
  void mkdir(const std::string& rel) { fs::create_directories(m_dir / rel); }
  void symlink(const std::string& rel, const std::string& target) {
    fs::create_directories((m_dir / rel).parent_path());
    fs::create_symlink(target, m_dir / rel);
  }

  nlohmann::json run(const std::vector<std::string>& extra = {}) {
    Context ctx{*m_root, Liveness::other_root, m_warnings};
    auto out = nlohmann::json::array();
    for (const auto& env : probe_python(ctx, extra)) out.push_back(to_json(env));
    return out;
  }

  fs::path m_dir;
  std::optional<util::RootFs> m_root;
  Warnings m_warnings;
};

nlohmann::json expected_usual_places() {
  return nlohmann::json::parse(fmt::format(R"([
  {{"path": "/home/u/proj/.venv/lib/python3.11/site-packages", "kind": "venv", "python": "3.11.2",
    "distributions": [ {{"name": "requests", "version": "2.31.0", "installer": "uv"}} ]}},
  {{"path": "/home/u/\\xff/lib/python3.11/site-packages", "kind": "venv", "python": "3.11.4", "distributions": []}},
  {{"path": "/opt/app/venvs/y/lib/python3.12/site-packages", "kind": "venv", "python": "3.12.1", "distributions": []}},
  {{"path": "/opt/conda/envs/x/lib/python3.10/site-packages", "kind": "conda", "python": "3.10",
    "distributions": [ {{"name": "torch", "version": "2.3.1"}} ]}},
  {{"path": "/opt/conda/lib/python3.12/site-packages", "kind": "conda", "python": "3.12",
    "distributions": [ {{"name": "conda", "version": "24.1.0", "installer": "conda", "record_digest": "{}"}} ]}},
  {{"path": "/usr/lib/python3/dist-packages", "kind": "system", "python": "3.11",
    "distributions": [
      {{"name": "broken_pkg", "version": "2.0"}},
      {{"name": "caf\\xe9", "version": "1.0"}},
      {{"name": "mylib", "version": "0.1", "installer": "pip", "record_digest": "{}",
        "direct_url": "git+https://example.com/team/mylib.git", "vcs_commit": "0123456789abcdef0123456789abcdef01234567"}},
      {{"name": "numpy", "version": "1.24.2", "installer": "debian"}},
      {{"name": "six", "version": "1.16.0", "installer": "debian"}}
    ]}}
])",
                                           k_conda_record_sha, k_record_sha));
}

const std::vector<std::string> k_expected_warnings = {
    "/usr/lib/python3/dist-packages/broken_pkg-2.0.dist-info/METADATA: binary content, not metadata; "
    "name and version taken from the directory name",
    "/usr/lib/python3/dist-packages/caf\\xe9-1.0.dist-info/METADATA: missing; name and version taken from the "
    "directory name",
    "/usr/lib/python3/dist-packages/nover.dist-info/METADATA: no Name or Version header; no version in the "
    "directory name either, distribution skipped",
};

}  // namespace

TEST_F(PythonProbe, FindsTheUsualPlacesWithExactDistributions) {
  auto got = run();
  EXPECT_EQ(got.dump(1), expected_usual_places().dump(1));
  EXPECT_EQ(m_warnings.items(), k_expected_warnings);
}

TEST_F(PythonProbe, ExtraPathsAddInterpretersPrefixesAndSitePackagesOnce) {
  symlink("opt/x/bin/python3", "python3.9");
  write("opt/x/bin/python3.9", "");
  write("opt/x/lib/python3.9/site-packages/attrs-23.1.0.dist-info/METADATA", "Name: attrs\nVersion: 23.1.0\n");
  write("srv/pkgs/foo-1.0.dist-info/METADATA", "Name: foo\nVersion: 1.0\n");

  auto got = run({"/opt/x/bin/python3", "srv/pkgs/", "/usr/bin/python3", "/missing"});

  auto expected = expected_usual_places();
  expected.insert(expected.begin() + 5, nlohmann::json::parse(R"(
    {"path": "/opt/x/lib/python3.9/site-packages", "kind": "extra", "python": "3.9",
     "distributions": [ {"name": "attrs", "version": "23.1.0"} ]})"));
  expected.insert(expected.begin() + 6, nlohmann::json::parse(R"(
    {"path": "/srv/pkgs", "kind": "extra", "distributions": [ {"name": "foo", "version": "1.0"} ]})"));
  EXPECT_EQ(got.dump(1), expected.dump(1));

  auto warnings = k_expected_warnings;
  warnings.insert(warnings.begin(), fmt::format("--python /missing: not found in the root ({}/missing: No such file or directory)",
                                                m_dir.string()));
  EXPECT_EQ(m_warnings.items(), warnings);
}

TEST_F(PythonProbe, PythonVersionFallsBackToTheHighestLibDir) {
  fs::remove(m_dir / "usr/bin/python3");
  mkdir("usr/lib/python3.9");
  auto got = run();
  EXPECT_EQ(got.back()["path"], "/usr/lib/python3/dist-packages");
  EXPECT_EQ(got.back()["python"], "3.12");
}

TEST(PythonMetadata, ParsesHeadersUntilTheBlankLine) {
  auto headers = parse_metadata_headers("Name: torch\r\nVersion:2.3.1 \nLicense: BSD\n  more\n\tand more\n\nName: body\n");
  std::vector<std::pair<std::string, std::string>> expected = {
      {"Name", "torch"}, {"Version", "2.3.1"}, {"License", "BSD\nmore\nand more"}};
  EXPECT_EQ(headers, expected);
}

TEST(PythonMetadata, StopsAtANonHeaderLine) {
  auto headers = parse_metadata_headers("Name: a\ngarbage without colon\nVersion: 1\n");
  std::vector<std::pair<std::string, std::string>> expected = {{"Name", "a"}};
  EXPECT_EQ(headers, expected);
  EXPECT_TRUE(parse_metadata_headers("  leading continuation\nName: a\n").empty());
  EXPECT_TRUE(parse_metadata_headers("\xff\xfe: x\n").empty());
}

TEST(PythonMetadata, NormalizesNamesPerPep503) {
  EXPECT_EQ(normalize_dist_name("Typing_Extensions"), "typing-extensions");
  EXPECT_EQ(normalize_dist_name("zope.interface"), "zope-interface");
  EXPECT_EQ(normalize_dist_name("a-_.-b"), "a-b");
  EXPECT_EQ(normalize_dist_name("PyYAML"), "pyyaml");
}
