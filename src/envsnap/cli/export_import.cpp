#include <memory>
#include <string>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/image/archive.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::cli {

namespace {
constexpr int exit_bad_input = 2;
constexpr int exit_store = 3;
constexpr int exit_corrupt = 6;

int exit_for(image::FailureKind kind) { return kind == image::FailureKind::corrupt ? exit_corrupt : exit_bad_input; }
}  // namespace

void add_export_import(CLI::App& app, int* exit_code) {
  {
    auto ref = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto format = std::make_shared<std::string>("docker");
    auto store_flag = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("export", "Write an image as one tar that docker load, podman load and skopeo read");
    cmd->add_option("ref", *ref, "NAME[:TAG], NAME@sha256:... or a manifest digest prefix")->required();
    cmd->add_option("-o,--output", *out, "Archive to write (.tar, or .tar.gz/.tgz for a gzip wrapper; - for stdout)")
        ->required();
    cmd->add_option("--format", *format, "docker: docker-archive and OCI layout in one tar (default); oci: OCI layout only")
        ->check(CLI::IsMember({"docker", "oci"}));
    add_store_option(*cmd, *store_flag);
    cmd->callback([=] {
      auto s = store::Store::open(store::default_store_path(*store_flag), store::OpenMode::must_exist);
      if (!s) throw util::Fatal(exit_store, s.message());
      image::ExportOptions options;
      options.format = *format == "oci" ? image::ArchiveFormat::oci : image::ArchiveFormat::docker;
      options.gzip = image::wants_gzip(*out);
      image::FailureKind kind = image::FailureKind::other;
      auto r = image::export_image(*s, *ref, *out, options, &kind);
      if (!r) throw util::Fatal(exit_for(kind), r.message());
      if (*out != "-") fmt::print("{} {} exported to {}\n", *ref, r->digest.str(), *out);
      *exit_code = 0;
    });
  }
  {
    auto file = std::make_shared<std::string>();
    auto tag = std::make_shared<std::string>();
    auto store_flag = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("import", "Read a docker-archive or OCI archive (plain, gzip or zstd tar) into the store");
    cmd->add_option("file", *file, "Archive: envsnap export, docker save, podman save, skopeo oci-archive/docker-archive")
        ->required();
    cmd->add_option("-t,--tag", *tag, "NAME:TAG for the image (default: the name the archive gives)");
    add_store_option(*cmd, *store_flag);
    cmd->callback([=] {
      auto s = store::Store::open(store::default_store_path(*store_flag), store::OpenMode::create_if_missing);
      if (!s) throw util::Fatal(exit_store, s.message());
      image::FailureKind kind = image::FailureKind::other;
      auto r = image::import_archive(*s, *file, *tag, &kind);
      if (!r) throw util::Fatal(exit_for(kind), r.message());
      for (auto& img : *r) fmt::print("{} {}\n", img.name, img.manifest.digest.str());
      *exit_code = 0;
    });
  }
}

}  // namespace envsnap::cli
