// Emulated CUDA runtime (see cuda_emulation.h).
#pragma once
#include "cuda_emulation.h"
