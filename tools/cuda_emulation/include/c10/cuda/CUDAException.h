// Emulated: C10_CUDA_CHECK raises as torch's does, with the emulated error's name.
#pragma once
#include <c10/util/Exception.h>
#include "cuda_emulation.h"
#define C10_CUDA_CHECK(EXPR)                                                                   \
  do {                                                                                         \
    const cudaError_t cnnfast_emulated_error = (EXPR);                                         \
    TORCH_CHECK(cnnfast_emulated_error == cudaSuccess, "CUDA error: ",                         \
                cudaGetErrorString(cnnfast_emulated_error));                                   \
  } while (0)
