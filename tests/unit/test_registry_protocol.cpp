#include <curl/curl.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "envsnap/registry/http.hpp"
#include "envsnap/registry/reference.hpp"
#include "envsnap/registry/transfer.hpp"

using namespace envsnap::registry;

TEST(RegistryReference, Detects) {
  EXPECT_TRUE(is_registry_reference("127.0.0.1:5000/team/yolo:1"));
  EXPECT_TRUE(is_registry_reference("ghcr.io/org/img"));
  EXPECT_TRUE(is_registry_reference("localhost/img:tag"));
  EXPECT_TRUE(is_registry_reference("registry:5000/img"));
  EXPECT_FALSE(is_registry_reference("team/yolo:1"));
  EXPECT_FALSE(is_registry_reference("yolo:1"));
  EXPECT_FALSE(is_registry_reference("ubuntu"));
  EXPECT_FALSE(is_registry_reference("/ghcr.io/x"));
}

TEST(RegistryReference, Parses) {
  auto r = parse_registry_reference("127.0.0.1:5000/team/yolo-train:2025-q2");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->host, "127.0.0.1:5000");
  EXPECT_EQ(r->repository, "team/yolo-train");
  EXPECT_EQ(r->tag, "2025-q2");
  EXPECT_FALSE(r->digest.has_value());
  EXPECT_EQ(r->str(), "127.0.0.1:5000/team/yolo-train:2025-q2");
  EXPECT_EQ(r->reference(), "2025-q2");

  r = parse_registry_reference("ghcr.io/org/img");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->tag, "latest");
  EXPECT_EQ(r->str(), "ghcr.io/org/img:latest");

  std::string hex(64, 'a');
  r = parse_registry_reference("localhost:5000/a/b@sha256:" + hex);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->host, "localhost:5000");
  EXPECT_EQ(r->repository, "a/b");
  EXPECT_TRUE(r->tag.empty());
  EXPECT_EQ(r->reference(), "sha256:" + hex);
  EXPECT_EQ(r->str(), "localhost:5000/a/b@sha256:" + hex);

  EXPECT_FALSE(parse_registry_reference("team/yolo:1"));
  EXPECT_FALSE(parse_registry_reference("ghcr.io/Upper/case"));
  EXPECT_FALSE(parse_registry_reference("ghcr.io/"));
  EXPECT_FALSE(parse_registry_reference("bad_host.io/x"));
  EXPECT_FALSE(parse_registry_reference("ghcr.io/x@sha256:abc"));
}

TEST(RegistryReference, HostsAndLoopback) {
  EXPECT_EQ(normalize_host("https://127.0.0.1:5000/v2/").value(), "127.0.0.1:5000");
  EXPECT_EQ(normalize_host("ghcr.io").value(), "ghcr.io");
  EXPECT_EQ(normalize_host("http://[::1]:5000").value(), "[::1]:5000");
  EXPECT_FALSE(normalize_host(""));
  EXPECT_FALSE(normalize_host("a b"));
  EXPECT_TRUE(is_loopback_host("127.0.0.1:5000"));
  EXPECT_TRUE(is_loopback_host("127.1.2.3"));
  EXPECT_TRUE(is_loopback_host("localhost:5000"));
  EXPECT_TRUE(is_loopback_host("[::1]:5000"));
  EXPECT_FALSE(is_loopback_host("128.0.0.1:5000"));
  EXPECT_FALSE(is_loopback_host("localhost.example.com"));
  EXPECT_FALSE(is_loopback_host("ghcr.io"));
}

TEST(RegistryHttp, ContentRange) {
  auto r = parse_content_range("bytes 100-199/1000");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 100u);
  EXPECT_EQ(r->last, 199u);
  EXPECT_EQ(r->total.value(), 1000u);
  r = parse_content_range("bytes 0-0/*");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->total.has_value());
  EXPECT_FALSE(parse_content_range("bytes 5-4/10"));
  EXPECT_FALSE(parse_content_range("bytes 0-9/9"));
  EXPECT_FALSE(parse_content_range("0-9/10"));
  EXPECT_FALSE(parse_content_range("bytes */10"));
  EXPECT_FALSE(parse_content_range("bytes 0-x/10"));
}

TEST(RegistryHttp, UploadRange) {
  EXPECT_EQ(parse_upload_range("0-1023").value(), 1024u);
  EXPECT_EQ(parse_upload_range("bytes=0-8388607").value(), 8388608u);
  EXPECT_EQ(parse_upload_range("0-0").value(), 0u);
  EXPECT_FALSE(parse_upload_range(""));
  EXPECT_FALSE(parse_upload_range("5-10"));
  EXPECT_FALSE(parse_upload_range("0-"));
}

TEST(RegistryHttp, RetryClassification) {
  EXPECT_TRUE(is_retryable(CURLE_COULDNT_CONNECT, 0));
  EXPECT_TRUE(is_retryable(CURLE_PARTIAL_FILE, 200));
  EXPECT_TRUE(is_retryable(CURLE_RECV_ERROR, 0));
  EXPECT_TRUE(is_retryable(CURLE_OPERATION_TIMEDOUT, 0));
  EXPECT_TRUE(is_retryable(CURLE_GOT_NOTHING, 0));
  EXPECT_TRUE(is_retryable(0, 500));
  EXPECT_TRUE(is_retryable(0, 502));
  EXPECT_TRUE(is_retryable(0, 503));
  EXPECT_TRUE(is_retryable(0, 429));
  EXPECT_TRUE(is_retryable(0, 408));
  EXPECT_FALSE(is_retryable(0, 501));
  EXPECT_FALSE(is_retryable(0, 200));
  EXPECT_FALSE(is_retryable(0, 404));
  EXPECT_FALSE(is_retryable(0, 401));
  EXPECT_FALSE(is_retryable(0, 400));
  EXPECT_FALSE(is_retryable(CURLE_SSL_CONNECT_ERROR, 0));
  EXPECT_FALSE(is_retryable(CURLE_PEER_FAILED_VERIFICATION, 0));
  EXPECT_FALSE(is_retryable(CURLE_COULDNT_RESOLVE_HOST, 0));
  EXPECT_EQ(retry_delay(0).count(), 500);
  EXPECT_EQ(retry_delay(1).count(), 1000);
  EXPECT_EQ(retry_delay(2).count(), 2000);
  EXPECT_EQ(max_retries, 3);
}

TEST(RegistryHttp, Locations) {
  EXPECT_EQ(resolve_location("http://127.0.0.1:5000/v2/a/blobs/uploads/", "/v2/a/blobs/uploads/u1?_state=x%3D%3D"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x%3D%3D");
  EXPECT_EQ(resolve_location("http://127.0.0.1:5000/v2/a/blobs/uploads/", "https://s3.example/up?x=1"),
            "https://s3.example/up?x=1");
  EXPECT_EQ(url_encode("sha256:ab/c d"), "sha256%3Aab%2Fc%20d");
}

TEST(RegistryTransfer, ManifestTypesAndPlatforms) {
  nlohmann::json oci = {{"schemaVersion", 2}, {"config", nlohmann::json::object()}};
  EXPECT_EQ(manifest_media_type("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8", oci),
            "application/vnd.docker.distribution.manifest.v2+json");
  EXPECT_EQ(manifest_media_type("application/json", oci), "application/vnd.oci.image.manifest.v1+json");
  EXPECT_EQ(manifest_media_type("", {{"mediaType", "application/vnd.oci.image.index.v1+json"}}),
            "application/vnd.oci.image.index.v1+json");
  std::string a(64, 'a'), b(64, 'b');
  nlohmann::json index = {{"manifests",
                           {{{"digest", "sha256:" + a}, {"size", 10}, {"platform", {{"os", "linux"}, {"architecture", "arm64"}}}},
                            {{"digest", "sha256:" + b}, {"size", 11}, {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}}}}};
  EXPECT_EQ(pick_platform(index, "amd64")->digest.hex(), b);
  EXPECT_EQ(pick_platform(index, "arm64")->digest.hex(), a);
  EXPECT_FALSE(pick_platform(index, "s390x").has_value());
}
