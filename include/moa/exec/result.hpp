// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Deprecated, kept so that 0.1.x includes still compile: what a run returns lives in
/// moa/core/result.hpp, below every family that reads it. To be removed in 1.0.

#include "moa/core/result.hpp"
