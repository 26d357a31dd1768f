// Emulated CUDA bfloat16: torch's c10::BFloat16 (round to nearest even, computes in float).
#pragma once
#include <c10/util/BFloat16.h>
using __nv_bfloat16 = c10::BFloat16;
