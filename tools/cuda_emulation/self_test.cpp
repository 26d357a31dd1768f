// Checks of the emulated CUDA runtime itself (tests/test_cuda_emulation.py compiles and runs it):
// that what the kernels' tests then rely on holds. Written as CUDA is, launches included, and
// rewritten by build.py like the kernels. Argument: the case to run; exits 0 when it holds.
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_runtime.h"

// A block sums its threads' values through shared memory in a tree, as the BatchNorm kernels do:
// right only if every barrier waits for every thread.
__global__ void block_sum_kernel(const int* values, int* sums) {
  __shared__ int shared[256];
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  const int threads = blockDim.x * blockDim.y;
  shared[t] = values[blockIdx.x * threads + t];
  __syncthreads();
  for (int half = threads / 2; half > 0; half /= 2) {
    if (t < half) shared[t] += shared[t + half];
    __syncthreads();
  }
  if (t == 0) sums[blockIdx.x] = shared[0];
}

// Thread 0 leaves before the barrier the others wait at: a hang or worse on a GPU.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Every thread writes its slot of the dynamic shared memory and reads its neighbour's after a barrier.
__global__ void dynamic_shared_kernel(int* out) {
  extern __shared__ __align__(sizeof(double)) unsigned char bytes[];
  int* shared = reinterpret_cast<int*>(bytes);
  shared[threadIdx.x] = static_cast<int>(threadIdx.x + blockIdx.x * blockDim.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = shared[(threadIdx.x + 1) % blockDim.x];
}

static int block_sum() {
  const int blocks = 3, threads = 256;
  std::vector<int> values(blocks * threads), sums(blocks, -1);
  for (int i = 0; i < blocks * threads; ++i) values[i] = i % 7 + 1;
  block_sum_kernel<<<blocks, dim3(32, 8)>>>(values.data(), sums.data());
  if (cudaGetLastError() != cudaSuccess) return 1;
  for (int b = 0; b < blocks; ++b) {
    int expected = 0;
    for (int i = 0; i < threads; ++i) expected += values[b * threads + i];
    if (sums[b] != expected) {
      std::fprintf(stderr, "block %d: sum %d, expected %d\n", b, sums[b], expected);
      return 1;
    }
  }
  return 0;
}

static int dynamic_shared() {
  const int blocks = 2, threads = 64;
  std::vector<int> out(blocks * threads, -1);
  dynamic_shared_kernel<<<blocks, threads, threads * sizeof(int)>>>(out.data());
  if (cudaGetLastError() != cudaSuccess) return 1;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) {
      if (out[b * threads + t] != (t + 1) % threads + b * threads) return 1;
    }
  }
  return 0;
}

// Launches CUDA refuses are refused, and the refusal is reported once.
static int invalid_launches() {
  std::vector<int> out(2048, 0);
  dynamic_shared_kernel<<<0, 32, 0>>>(out.data());  // an empty grid
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 1;
  if (cudaGetLastError() != cudaSuccess) return 1;
  dynamic_shared_kernel<<<1, 2048, 0>>>(out.data());  // past 1024 threads
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 1;
  dynamic_shared_kernel<<<1, 32, 64 * 1024>>>(out.data());  // past 48 KiB of dynamic shared memory
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 1;
  dynamic_shared_kernel<<<dim3(1, 65536), 32, 0>>>(out.data());  // gridDim.y past 65535
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 1;
  for (int v : out) {
    if (v != 0) return 1;  // no refused launch ran
  }
  return 0;
}

static int divergent_barrier() {
  std::vector<int> out(32, 0);
  divergent_barrier_kernel<<<1, 32>>>(out.data());  // aborts the process
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  if (!std::strcmp(argv[1], "block_sum")) return block_sum();
  if (!std::strcmp(argv[1], "dynamic_shared")) return dynamic_shared();
  if (!std::strcmp(argv[1], "invalid_launches")) return invalid_launches();
  if (!std::strcmp(argv[1], "divergent_barrier")) return divergent_barrier();
  return 2;
}
