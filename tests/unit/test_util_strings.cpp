#include <gtest/gtest.h>

#include "envsnap/util/strings.hpp"

using namespace envsnap::util;

TEST(Strings, CompareVersionsFollowsDpkg) {
  EXPECT_LT(compare_versions("1.0~rc1", "1.0"), 0);
  EXPECT_LT(compare_versions("1.0", "1.0-1"), 0);
  EXPECT_GT(compare_versions("1:0.9", "2.0"), 0);
  EXPECT_EQ(compare_versions("2.36-9+deb12u4", "2.36-9+deb12u4"), 0);
  EXPECT_LT(compare_versions("2.36-9+deb12u3", "2.36-9+deb12u10"), 0);
  EXPECT_GT(compare_versions("1.10", "1.9"), 0);
}

TEST(Strings, PrintableEscapesInvalidUtf8) {
  EXPECT_EQ(printable("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(printable("a\xff" "b"), "a\\xffb");
  EXPECT_FALSE(is_utf8("\xc0\xaf"));
}

TEST(Strings, LinesDropsTrailingNewline) {
  auto l = lines("a\nb\r\n\nc\n");
  ASSERT_EQ(l.size(), 4u);
  EXPECT_EQ(l[1], "b");
  EXPECT_EQ(l[2], "");
}
