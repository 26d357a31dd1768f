// What the CUDA bindings share: CUDA's own 16-bit types for torch's, and the device check.
// Include it after the *_kernels.cuh header (which must precede every torch header).
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cnnfast {

// The kernels take CUDA's own 16-bit types, which have the same layout as torch's.
template <typename scalar_t>
struct CudaScalar {
  using type = scalar_t;
};
template <>
struct CudaScalar<at::Half> {
  using type = __half;
};
template <>
struct CudaScalar<at::BFloat16> {
  using type = __nv_bfloat16;
};

// `t` (called `name`) must be a CUDA tensor on `device`, the device of the tensor `reference_name`.
inline void check_cuda(const at::Tensor& t, const char* name, const char* op, const char* reference_name,
                       const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but ", reference_name, " is on ",
              device);
}

}  // namespace cnnfast
