// A CPU stand-in for the small part of CUDA that cnnfast's kernels use, so that the CUDA kernels
// and their bindings (csrc/cuda/) run, and are tested, on a machine without a GPU
// (tools/cuda_emulation/build.py, tests/test_cuda_emulation.py). Not a simulator of a GPU's timing
// or memory model: what it checks is the kernels' arithmetic, indexing and block-level logic.
//
// A launch runs its blocks one after another; the threads of a block run as fibers (ucontext) in
// one OS thread, switching only at __syncthreads(), so a block's shared memory is one buffer that
// every fiber of the block sees, and a barrier is a real barrier. Shared memory starts each block
// as NaN bytes. Not reached: races inside a warp's lockstep, the __CUDA_ARCH__ branches of the
// shared math, and nvcc's fused multiply-adds (results may differ from a GPU's in the last bit).
// What CUDA would refuse is an error here too: an empty grid or block, a block past 1024 threads or
// a grid past CUDA's limits, dynamic shared memory past 48 KiB (the default limit), and a
// __syncthreads() that not every thread of the block reaches.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using cudaStream_t = struct CUstream_st*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

namespace cuda_emulation {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kDefaultSharedBytes = 48 * 1024;
constexpr unsigned int kMaxBlockThreads = 1024;

// Garbage that reads as NaN in every floating type (and -1 in every integer one): a kernel reading
// shared memory no thread of its block wrote gets values no test can mistake for right ones.
constexpr unsigned char kPoison = 0xFF;

inline unsigned int max_grid_x_from_environment() {
  const char* value = std::getenv("CUDA_EMULATION_MAX_GRID_X");
  const long cap = value == nullptr ? 0 : std::strtol(value, nullptr, 10);
  return cap > 0 ? static_cast<unsigned int>(cap) : 0x7fffffffu;
}

// As CUDA's, per host thread.
inline thread_local cudaError_t last_error = cudaSuccess;

struct SharedArray {
  void* data;
  std::size_t bytes;
};

struct Runtime {
  std::mutex launch_mutex;  // one launch at a time: the builtins and shared memory are global
  std::vector<unsigned char> dynamic_shared;
  // The kernels' static __shared__ arrays (one storage per declaration: blocks run one at a
  // time), poisoned when allocated and at the start of every block.
  std::vector<SharedArray> shared_arrays;
  // Test schedules (tests/test_cuda_emulation.py): a block's threads in reverse order, which
  // exposes a missing barrier between a lower thread's write and a higher one's read; and gridDim.x
  // capped, so that every kernel's grid-stride loop takes more than one step.
  bool reverse_threads = std::getenv("CUDA_EMULATION_REVERSE_THREADS") != nullptr;
  unsigned int max_grid_x = max_grid_x_from_environment();
  // Fibers of the running block.
  ucontext_t scheduler;
  std::vector<ucontext_t> contexts;
  std::vector<std::vector<unsigned char>> stacks;
  std::vector<int> finished;
  int current = -1;
  void (*body)(void*) = nullptr;
  void* body_argument = nullptr;
};

inline Runtime& runtime() {
  static Runtime r;
  return r;
}

inline unsigned char* dynamic_shared_memory() { return runtime().dynamic_shared.data(); }

inline cudaError_t take_last_error() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

// Storage of a kernel's static __shared__ array: build.py rewrites `__shared__ T x[N];` into
// `static T* const x = ::cuda_emulation::shared_array<T>(N);`, one per declaration and template
// instantiation. A heap block of exactly the array's bytes rather than a function static, so that
// AddressSanitizer bounds it (GCC puts no guard zones around a template's statics, which are
// comdat); poisoned again before every block.
template <typename T>
T* shared_array(std::size_t count) {
  static_assert(std::is_trivially_default_constructible<T>::value, "__shared__ arrays hold trivial types");
  const std::size_t bytes = count * sizeof(T);
  void* data = ::operator new(bytes, std::align_val_t(alignof(T)));
  runtime().shared_arrays.push_back({data, bytes});
  std::memset(data, kPoison, bytes);
  return static_cast<T*>(data);
}

inline void fail(const char* what) {
  // A broken barrier is a kernel bug that would hang or corrupt a real GPU: stop loudly.
  std::fprintf(stderr, "cuda_emulation: %s\n", what);
  std::abort();
}

inline void fiber_entry() {
  Runtime& r = runtime();
  r.body(r.body_argument);
  r.finished[r.current] = 1;
  // Returning resumes uc_link, the scheduler.
}

inline void set_thread(int t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

// Runs every thread of the current block to completion, barrier by barrier.
inline void run_block(void (*body)(void*), void* argument) {
  Runtime& r = runtime();
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  r.body = body;
  r.body_argument = argument;
  if (static_cast<int>(r.stacks.size()) < threads) r.stacks.resize(threads);
  r.contexts.assign(threads, ucontext_t{});
  r.finished.assign(threads, 0);
  for (const SharedArray& a : r.shared_arrays) std::memset(a.data, kPoison, a.bytes);
  for (int t = 0; t < threads; ++t) {
    if (r.stacks[t].empty()) r.stacks[t].resize(kStackBytes);
    getcontext(&r.contexts[t]);
    r.contexts[t].uc_stack.ss_sp = r.stacks[t].data();
    r.contexts[t].uc_stack.ss_size = kStackBytes;
    r.contexts[t].uc_link = &r.scheduler;
    makecontext(&r.contexts[t], fiber_entry, 0);
  }
  for (;;) {
    int waiting = 0, done = 0;
    for (int i = 0; i < threads; ++i) {
      const int t = r.reverse_threads ? threads - 1 - i : i;
      if (r.finished[t]) continue;
      r.current = t;
      set_thread(t);
      swapcontext(&r.scheduler, &r.contexts[t]);
      if (r.finished[t]) {
        ++done;
      } else {
        ++waiting;
      }
    }
    if (waiting == 0) break;
    if (done > 0) fail("__syncthreads() reached by some threads of a block while others exited");
  }
  r.current = -1;
}

inline void syncthreads() {
  Runtime& r = runtime();
  if (r.current < 0) fail("__syncthreads() outside a kernel");
  const int t = r.current;
  swapcontext(&r.contexts[t], &r.scheduler);
  // Resumed by the scheduler's next pass, after every other thread reached the barrier.
  r.current = t;
  set_thread(t);
}

inline bool valid_launch(dim3 grid, dim3 block, std::size_t shared_bytes) {
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) return false;
  if (threads > kMaxBlockThreads || block.x > 1024 || block.y > 1024 || block.z > 64) return false;
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) return false;
  return shared_bytes <= kDefaultSharedBytes;
}

// `kernel` calls the kernel with the arguments it is given (a lambda the rewrite writes), so that
// the kernel's template arguments are deduced from the launch's arguments, as in CUDA.
template <typename Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  std::size_t shared_bytes;

  template <typename... Args>
  void operator()(Args&&... args) const {
    Runtime& r = runtime();
    std::lock_guard<std::mutex> lock(r.launch_mutex);
    if (!valid_launch(grid, block, shared_bytes)) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    using Parameters = std::tuple<std::decay_t<Args>...>;
    struct Call {
      const Kernel* kernel;
      const Parameters* parameters;
    };
    const Parameters parameters(std::forward<Args>(args)...);
    Call call{&kernel, &parameters};
    // Every thread calls the kernel with its own copies of the parameters (a kernel takes them
    // by value).
    auto body = [](void* p) {
      const Call* c = static_cast<const Call*>(p);
      std::apply(*c->kernel, *c->parameters);
    };
    gridDim = dim3(grid.x < r.max_grid_x ? grid.x : r.max_grid_x, grid.y, grid.z);
    blockDim = block;
    // Exactly the launch's bytes (no slack, no capacity left from a larger launch), so that
    // AddressSanitizer (tools/sanitized_build.py) stops a kernel that reaches past them.
    std::vector<unsigned char>(shared_bytes).swap(r.dynamic_shared);
    for (unsigned int z = 0; z < gridDim.z; ++z) {
      for (unsigned int y = 0; y < gridDim.y; ++y) {
        for (unsigned int x = 0; x < gridDim.x; ++x) {
          blockIdx = uint3{x, y, z};
          // Fresh, poisoned shared memory per block: a GPU's is never zeroed.
          std::fill(r.dynamic_shared.begin(), r.dynamic_shared.end(), kPoison);
          run_block(body, &call);
        }
      }
    }
  }
};

template <typename Kernel>
Launch<Kernel> launch(Kernel kernel, dim3 grid, dim3 block, std::size_t shared_bytes = 0, cudaStream_t = nullptr) {
  return Launch<Kernel>{kernel, grid, block, shared_bytes};
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::syncthreads(); }

inline cudaError_t cudaGetLastError() { return cuda_emulation::take_last_error(); }

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    default: return "unknown error (emulated)";
  }
}
