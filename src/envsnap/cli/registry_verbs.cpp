#include "envsnap/cli/verbs.hpp"

namespace envsnap::cli {

// Placeholder until this verb lands; registers nothing.
void add_registry_verbs(CLI::App&, int*) {}

}  // namespace envsnap::cli
