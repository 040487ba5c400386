#pragma once
// A readable summary of a lock, GPU stack first.

#include <string>

#include "envsnap/lock/lock.hpp"

namespace envsnap::lock {

std::string summarize(const LockDocument& doc);

}  // namespace envsnap::lock
