// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Kept for existing includes: what a run returns lives in moa/core/result.hpp, below every
/// family that reads it.

#include "moa/core/result.hpp"
