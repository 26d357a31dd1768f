// Emulated: one stream, the calling thread (launches run to completion before they return).
#pragma once
#include "cuda_emulation.h"
namespace c10::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
}  // namespace c10::cuda
namespace at::cuda {
inline c10::cuda::CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace at::cuda
