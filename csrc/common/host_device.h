// Torch-free definitions shared by the CPU (g++) and CUDA (nvcc) kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CNNFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNFAST_HOST_DEVICE inline
#endif

namespace cnnfast {

// Accumulation type: fp16/bf16 (and fp32) accumulate in fp32, fp64 in fp64.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccType<scalar_t>::type;

template <typename acc_t>
CNNFAST_HOST_DEVICE bool is_finite(acc_t v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

}  // namespace cnnfast
