#include <gtest/gtest.h>

#include "envsnap/probe/environment.hpp"

using namespace envsnap::probe;

TEST(Environment, KeepsTrainingVariablesAndRedactsSecrets) {
  std::vector<std::string> raw = {"CUDA_VISIBLE_DEVICES=0,1", "NCCL_DEBUG=INFO", "HF_TOKEN=hf_abc",
                                  "HOME=/root", "AWS_SECRET_ACCESS_KEY=xyz", "OMP_NUM_THREADS=4",
                                  "PYTHONHASHSEED=0", "TORCH_HOME=https://u:p@h/x"};
  std::vector<char*> envp;
  for (auto& s : raw) envp.push_back(s.data());
  envp.push_back(nullptr);
  auto env = training_environment(envp.data());
  std::map<std::string, std::string> expected = {{"CUDA_VISIBLE_DEVICES", "0,1"}, {"NCCL_DEBUG", "INFO"},
                                                 {"HF_TOKEN", "<redacted>"},      {"OMP_NUM_THREADS", "4"},
                                                 {"PYTHONHASHSEED", "0"},         {"TORCH_HOME", "https://<redacted>@h/x"}};
  EXPECT_EQ(env, expected);
}

TEST(Environment, SecretNames) {
  EXPECT_TRUE(is_secret_name("AWS_SECRET_ACCESS_KEY"));
  EXPECT_TRUE(is_secret_name("WANDB_API_KEY"));
  EXPECT_TRUE(is_secret_name("KEY"));
  EXPECT_TRUE(is_secret_name("db_password"));
  EXPECT_FALSE(is_secret_name("MONKEY_BUSINESS"));
  EXPECT_FALSE(is_secret_name("CUDA_VISIBLE_DEVICES"));
}

TEST(Environment, AssignmentsAreValidated) {
  std::map<std::string, std::string> env;
  EXPECT_TRUE(add_assignments(env, {"A=1", "MY_PASSWORD=x"}, "--env").ok());
  EXPECT_EQ(env["A"], "1");
  EXPECT_EQ(env["MY_PASSWORD"], "<redacted>");
  auto bad = add_assignments(env, {"=oops"}, "--env");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("--env"), std::string::npos);
}

TEST(Environment, UrlCredentialsAndQueryTokens) {
  EXPECT_EQ(strip_url_credentials("git+https://user:pass@host/repo.git@v1"), "git+https://<redacted>@host/repo.git@v1");
  EXPECT_EQ(strip_url_credentials("https://h/x?token=abc&y=1"), "https://h/x?token=<redacted>&y=1");
  EXPECT_EQ(strip_url_credentials("plain"), "plain");
}
