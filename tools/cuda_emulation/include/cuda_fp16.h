// Emulated CUDA half: torch's c10::Half, which converts to and from float as __half does
// (round to nearest even) and computes in float.
#pragma once
#include <c10/util/Half.h>
using __half = c10::Half;
