#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "temp_dir.hpp"
#include "envsnap/registry/auth.hpp"

namespace fs = std::filesystem;
using namespace envsnap::registry;

namespace {

using envsnap::test::TempDir;

void write(const fs::path& p, const std::string& text, mode_t mode = 0644) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
  ::chmod(p.c_str(), mode);
}

}  // namespace

TEST(RegistryAuth, ParsesBearerChallenge) {
  auto c = parse_www_authenticate(
      R"(Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].scheme, "bearer");
  EXPECT_EQ(c[0].params.size(), 3u);
  EXPECT_EQ(c[0].params.at("realm"), "https://auth.docker.io/token");
  EXPECT_EQ(c[0].params.at("service"), "registry.docker.io");
  EXPECT_EQ(c[0].params.at("scope"), "repository:library/ubuntu:pull");
}

TEST(RegistryAuth, ParsesQuotedCommasAndEscapes) {
  auto c = parse_www_authenticate(
      R"(Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull,push",error="insufficient_scope", note="say \"hi\", ok")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].params.at("scope"), "repository:a/b:pull,push");
  EXPECT_EQ(c[0].params.at("error"), "insufficient_scope");
  EXPECT_EQ(c[0].params.at("note"), "say \"hi\", ok");
}

TEST(RegistryAuth, ParsesBasicAndSeveralChallenges) {
  auto b = parse_www_authenticate(R"(Basic realm="Registry Realm")");
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].scheme, "basic");
  EXPECT_EQ(b[0].params.at("realm"), "Registry Realm");

  auto two = parse_www_authenticate(R"(BASIC realm=simple, Bearer realm="https://t/x",Service = "reg" )");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].scheme, "basic");
  EXPECT_EQ(two[0].params.at("realm"), "simple");
  EXPECT_EQ(two[1].scheme, "bearer");
  EXPECT_EQ(two[1].params.at("realm"), "https://t/x");
  EXPECT_EQ(two[1].params.at("service"), "reg");

  EXPECT_TRUE(parse_www_authenticate("").empty());
  auto bare = parse_www_authenticate("Negotiate");
  ASSERT_EQ(bare.size(), 1u);
  EXPECT_EQ(bare[0].scheme, "negotiate");
  EXPECT_TRUE(bare[0].params.empty());
}

TEST(RegistryAuth, ToleratesUnterminatedQuote) {
  auto c = parse_www_authenticate(R"(Bearer realm="https://t/x,service=unterminated)");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].params.at("realm"), "https://t/x,service=unterminated");
}

TEST(RegistryAuth, Base64RoundTrip) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("alice:s3cret"), "YWxpY2U6czNjcmV0");
  EXPECT_EQ(base64_decode("Zg==").value(), "f");
  EXPECT_EQ(base64_decode("Zm8=").value(), "fo");
  EXPECT_EQ(base64_decode("Zm9v").value(), "foo");
  EXPECT_EQ(base64_decode("YWxp\nY2U6czNjcmV0").value(), "alice:s3cret");
  EXPECT_EQ(base64_decode("").value(), "");
  std::string bin("\x00\xff\x10:", 4);
  EXPECT_EQ(base64_decode(base64_encode(bin)).value(), bin);
  EXPECT_FALSE(base64_decode("Zm9").has_value());
  EXPECT_FALSE(base64_decode("Zm!v").has_value());
  EXPECT_FALSE(base64_decode("Z=9v").has_value());
}

TEST(RegistryAuth, LookupOrder) {
  TempDir t;
  CredentialSources s;
  s.envsnap_auth = t.path() / "envsnap/auth.json";
  s.containers_auth = t.path() / "containers/auth.json";
  s.docker_config = t.path() / "docker/config.json";
  EXPECT_FALSE(find_credentials("reg.example:5000", s).has_value());

  write(s.docker_config, R"({"auths":{"https://reg.example:5000/v2/":{"auth":")" + base64_encode("dock:er") + R"("}}})");
  auto c = find_credentials("reg.example:5000", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "dock");
  EXPECT_EQ(c->password, "er");
  EXPECT_EQ(c->source, s.docker_config.string());

  write(s.containers_auth, R"({"auths":{"reg.example:5000":{"auth":")" + base64_encode("pod:man:colon") + R"("}}})");
  c = find_credentials("reg.example:5000", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "pod");
  EXPECT_EQ(c->password, "man:colon");

  write(s.envsnap_auth, R"({"auths":{"reg.example:5000":{"auth":")" + base64_encode("env:snap") + R"("}}})");
  c = find_credentials("reg.example:5000", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "env");
  EXPECT_EQ(c->source, s.envsnap_auth.string());
  EXPECT_FALSE(find_credentials("reg.example:5001", s).has_value());

  s.env_user = "from";
  EXPECT_EQ(find_credentials("reg.example:5000", s)->user, "env");  // both variables are needed
  s.env_password = "environment";
  c = find_credentials("reg.example:5000", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "from");
  EXPECT_EQ(c->password, "environment");
}

TEST(RegistryAuth, SkipsMalformedFiles) {
  TempDir t;
  CredentialSources s;
  s.envsnap_auth = t.path() / "a.json";
  s.containers_auth = t.path() / "b.json";
  s.docker_config = t.path() / "c.json";
  write(s.envsnap_auth, "not json");
  write(s.containers_auth, R"({"auths":{"r.io":{"auth":"!!!"}}})");
  write(s.docker_config, R"({"auths":{"r.io":{"auth":")" + base64_encode("ok:fine") + R"("}}})");
  auto c = find_credentials("r.io", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "ok");
}

TEST(RegistryAuth, CredentialHelpers) {
  TempDir t;
  fs::path bin = t.path() / "bin";
  write(bin / "docker-credential-fake",
        "#!/bin/sh\nread host\nif [ \"$1\" = get ] && [ \"$host\" = helped.io ]; then\n"
        "  printf '{\"ServerURL\":\"%s\",\"Username\":\"hu\",\"Secret\":\"hs\"}' \"$host\"\nelse\n"
        "  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        0755);
  write(bin / "docker-credential-store",
        "#!/bin/sh\nread host\nprintf '{\"Username\":\"su\",\"Secret\":\"ss-%s\"}' \"$host\"\n", 0755);
  std::string old_path = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", (bin.string() + ":" + old_path).c_str(), 1);

  CredentialSources s;
  s.docker_config = t.path() / "docker/config.json";
  write(s.docker_config, R"({"credHelpers":{"helped.io":"fake","missing.io":"fake"},"credsStore":"store",
                             "auths":{"inline.io":{"auth":")" + base64_encode("iu:ip") + R"("}}})");
  auto c = find_credentials("helped.io", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "hu");
  EXPECT_EQ(c->password, "hs");
  EXPECT_EQ(c->source, "docker-credential-fake");
  EXPECT_FALSE(find_credentials("missing.io", s).has_value());  // its helper is asked, and fails
  c = find_credentials("inline.io", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "iu");
  c = find_credentials("other.io:5000", s);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "su");
  EXPECT_EQ(c->password, "ss-other.io:5000");
  EXPECT_FALSE(run_credential_helper("absent-helper", "x.io").has_value());
  EXPECT_FALSE(run_credential_helper("../fake", "helped.io").has_value());
  ::setenv("PATH", old_path.c_str(), 1);
}

TEST(RegistryAuth, SaveAndRemove) {
  TempDir t;
  fs::path file = t.path() / "cfg/envsnap/auth.json";
  write(t.path() / "keep.json", "");
  ASSERT_TRUE(save_credentials(file, "127.0.0.1:5000", {"alice", "pw", ""}));
  struct stat st;
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(file.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_TRUE(save_credentials(file, "other.io", {"bob", "x", ""}));
  ASSERT_TRUE(save_credentials(file, "127.0.0.1:5000", {"alice", "new", ""}));
  CredentialSources s;
  s.envsnap_auth = file;
  EXPECT_EQ(find_credentials("127.0.0.1:5000", s)->password, "new");
  EXPECT_EQ(find_credentials("other.io", s)->user, "bob");
  auto r = remove_credentials(file, "127.0.0.1:5000");
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
  EXPECT_FALSE(find_credentials("127.0.0.1:5000", s).has_value());
  EXPECT_EQ(find_credentials("other.io", s)->user, "bob");
  r = remove_credentials(file, "127.0.0.1:5000");
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  r = remove_credentials(t.path() / "none.json", "x.io");
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  write(t.path() / "bad.json", "[1]");
  EXPECT_FALSE(save_credentials(t.path() / "bad.json", "x.io", {"a", "b", ""}));
}
