// Included first by every *_kernels.cuh.
#pragma once

// torch's CUDAExtension compiles with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the float <-> __half / __nv_bfloat16 conversions
// that the shared math is written with (static_cast<acc_t>(x[i]), static_cast<scalar_t>(acc)).
// Re-enabling them only works before cuda_fp16.h / cuda_bf16.h are first included, hence a
// binding includes this header before any torch header.
#if (defined(__CUDA_FP16_H__) && defined(__CUDA_NO_HALF_CONVERSIONS__)) || \
    (defined(__CUDA_BF16_H__) && defined(__CUDA_NO_BFLOAT16_CONVERSIONS__))
#error "cnnfast: include the *_kernels.cuh headers before torch's (cuda_fp16.h / cuda_bf16.h came first without conversions)"
#endif
#undef __CUDA_NO_HALF_CONVERSIONS__
#undef __CUDA_NO_BFLOAT16_CONVERSIONS__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
