// Emulated: the kernels run in the calling thread on CPU tensors, so there is no device to set.
#pragma once
#include <c10/core/Device.h>
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
