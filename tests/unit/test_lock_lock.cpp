#include <gtest/gtest.h>

#include "envsnap/lock/lock.hpp"

using namespace envsnap;
using nlohmann::json;

TEST(Lock, CanonicalFormSortsKeysAndIsCompact) {
  json j = json::parse(R"({"b": [3, {"z": 1, "a": "é"}], "a": true})");
  EXPECT_EQ(lock::canonical(j), R"({"a":true,"b":[3,{"a":"é","z":1}]})");
}

TEST(Lock, SerializeThenParseRoundTripsAndKeepsDigest) {
  auto doc = lock::make_document(json{{"system", {{"arch", "x86_64"}}}}, json{{"at", "2026-01-01T00:00:00Z"}});
  auto bytes = lock::serialize(doc);
  auto back = lock::parse(bytes, "test");
  ASSERT_TRUE(back.ok()) << back.message();
  EXPECT_EQ(back->digest, doc.digest);
  EXPECT_EQ(back->lock, doc.lock);
  // The digest is the SHA-256 of the exact "lock" bytes in the file.
  auto start = bytes.find("\"lock\":") + 7;
  auto lock_bytes = bytes.substr(start, bytes.rfind('}') - start);
  EXPECT_EQ(doc.digest, lock::compute_digest(json::parse(lock_bytes)));
  EXPECT_EQ(lock_bytes, lock::canonical(doc.lock));
}

TEST(Lock, CapturedFactsDoNotChangeTheDigest) {
  auto a = lock::make_document(json{{"env", json::object()}}, json{{"at", "1"}});
  auto b = lock::make_document(json{{"env", json::object()}}, json{{"at", "2"}, {"warnings", {"x"}}});
  EXPECT_EQ(a.digest, b.digest);
}

TEST(Lock, EditedLockIsRefusedWithItsName) {
  auto doc = lock::make_document(json{{"env", {{"A", "1"}}}}, json::object());
  auto bytes = lock::serialize(doc);
  bytes.replace(bytes.find("\"A\":\"1\""), 7, "\"A\":\"2\"");
  auto back = lock::parse(bytes, "edited.lock.json");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("edited.lock.json"), std::string::npos);
  EXPECT_NE(back.message().find("digest"), std::string::npos);
}

TEST(Lock, NotALockIsAnError) {
  EXPECT_FALSE(lock::parse("[1,2]", "x").ok());
  EXPECT_FALSE(lock::parse("{\"lockVersion\":99,\"lock\":{},\"digest\":\"\"}", "x").ok());
  EXPECT_FALSE(lock::parse("garbage", "x").ok());
}
