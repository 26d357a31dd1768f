// CUDA bindings of local response normalisation (the kernels: lrn_kernels.cuh; the math:
// csrc/common/lrn.h). Shapes, layouts, dtypes and checks are those of csrc/cpu/lrn.cpp.
//
// lrn_kernels.cuh comes before every torch header: it re-enables the __half / __nv_bfloat16
// conversions that torch's build flags turn off, which only works before cuda_fp16.h is included.
#include "lrn_kernels.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../op_helpers.h"
#include "binding_helpers.cuh"

namespace cnnfast {
namespace {

at::Tensor local_response_norm_forward_kernel(const at::Tensor& input, int64_t size, double alpha,
                                              double beta, double k) {
  check_cuda(input, "input", "cnnfast.local_response_norm", "input", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const LrnCall call = prepare_local_response_norm(input, nullptr);
  const at::Tensor& x = call.x;
  const at::Tensor& y = call.result;
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "local_response_norm_cuda", [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    const auto p = lrn_params<acc_t>(x, size, alpha, beta, k);
    const int64_t columns = call.geometry.columns();
    C10_CUDA_CHECK(launch_lrn_forward<cuda_t>(
        reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>()),
        reinterpret_cast<cuda_t*>(y.mutable_data_ptr<scalar_t>()), columns, call.geometry.inner,
        call.geometry.inner == 1, p, at::cuda::getCurrentCUDAStream()));
  });
  return y;
}

at::Tensor local_response_norm_backward_kernel(const at::Tensor& grad_output, const at::Tensor& input,
                                               int64_t size, double alpha, double beta, double k) {
  const char* op = "cnnfast.local_response_norm backward";
  check_cuda(input, "input", op, "input", input.device());
  check_cuda(grad_output, "grad_output", op, "input", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const LrnCall call = prepare_local_response_norm(input, &grad_output);
  const at::Tensor& x = call.x;
  const at::Tensor& dy = call.grad_output;
  const at::Tensor& dx = call.result;
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "local_response_norm_backward_cuda", [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    const auto p = lrn_params<acc_t>(x, size, alpha, beta, k);
    const int64_t columns = call.geometry.columns();
    // Only windows too long for shared memory need this; the caching allocator makes it cheap,
    // and stream order keeps it alive until the kernel is done with it.
    at::Tensor ring;
    acc_t* ring_data = nullptr;
    const int64_t ring_elements = lrn_backward_global_ring_elements(p, columns);
    if (ring_elements > 0) {
      ring = at::empty({ring_elements}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      ring_data = ring.mutable_data_ptr<acc_t>();
    }
    C10_CUDA_CHECK(launch_lrn_backward<cuda_t>(
        reinterpret_cast<const cuda_t*>(dy.const_data_ptr<scalar_t>()),
        reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>()),
        reinterpret_cast<cuda_t*>(dx.mutable_data_ptr<scalar_t>()), columns, call.geometry.inner,
        call.geometry.inner == 1, p, ring_data, at::cuda::getCurrentCUDAStream()));
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("local_response_norm", &local_response_norm_forward_kernel);
  m.impl("_local_response_norm_backward", &local_response_norm_backward_kernel);
}

}  // namespace cnnfast
