// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Service-time models and recorded arrivals for the simulator: the shared workload model of
/// moa/core/workload.hpp (the synthetic backend and the in-process network draw from the same
/// code), under the names the queueing headers have always used.

#include "moa/core/workload.hpp"

namespace moa::queueing {

using moa::arrival;
using moa::service_model;

}  // namespace moa::queueing
