// Every schema of the cnnfast library, in one place. Kernels are registered per backend:
// csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA), and triton_kernels/ through cnnfast/ops/*.py
// (the *_triton ops, for CPU tensors under TRITON_INTERPRET=1 and for CUDA tensors).
#include <Python.h>
#include <torch/library.h>

#include "op_helpers.h"

TORCH_LIBRARY(cnnfast, m) {
  // Local response normalisation; the backward recomputes the scale from the input.
  m.def("local_response_norm(Tensor input, int size, float alpha, float beta, float k) -> Tensor");
  m.def(
      "_local_response_norm_backward(Tensor grad_output, Tensor input, int size, float alpha, "
      "float beta, float k) -> Tensor");
  m.def("local_response_norm_triton(Tensor input, int size, float alpha, float beta, float k) -> Tensor");
  m.def(
      "_local_response_norm_backward_triton(Tensor grad_output, Tensor input, int size, "
      "float alpha, float beta, float k) -> Tensor");

  // Max pooling; returns the output and the argmax as offsets inside each window (uint8 for
  // windows of up to 256 elements, int32 beyond), which is all the backward keeps.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_max_pool2d_backward(Tensor grad_output, Tensor offsets, SymInt[2] input_hw, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "max_pool2d_triton(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_max_pool2d_backward_triton(Tensor grad_output, Tensor offsets, SymInt[2] input_hw, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");

  // AlexNet's ReLU -> LRN -> max-pool in one kernel that never writes relu(input) nor the LRN
  // output; returns the pooled output and the argmax as window offsets (as max_pool2d). The backward
  // recomputes relu and the LRN from the input and takes those offsets: all that is kept.
  m.def(
      "relu_lrn_max_pool2d(Tensor input, int size, float alpha, float beta, float k, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_relu_lrn_max_pool2d_backward(Tensor grad_output, Tensor offsets, Tensor input, int size, float alpha, "
      "float beta, float k, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "relu_lrn_max_pool2d_triton(Tensor input, int size, float alpha, float beta, float k, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_relu_lrn_max_pool2d_backward_triton(Tensor grad_output, Tensor offsets, Tensor input, int size, "
      "float alpha, float beta, float k, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) "
      "-> Tensor");

  // BatchNorm -> ReLU as per-channel multiply-adds (csrc/common/batch_norm.h has the math). 4-d
  // inputs in any layout whose H and W merge into one stride, channel slices of a larger buffer
  // included. Per-channel tensors are fp32 (fp64 for fp64 inputs).
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");  // biased variance
  m.def("bn_relu(Tensor input, Tensor scale, Tensor shift) -> Tensor");
  m.def(
      "_bn_relu_backward_reduce(Tensor grad_output, Tensor input, Tensor mean, Tensor scale, "
      "Tensor shift) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  m.def(
      "_bn_relu_backward(Tensor grad_output, Tensor input, Tensor scale, Tensor shift, Tensor coef_x, "
      "Tensor coef_c) -> Tensor");
  // running_mean/var blended with momentum towards the batch's mean and unbiased variance (from
  // the biased `var` of `count` values per channel), in the statistics' dtype.
  m.def(
      "_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
      "float momentum, SymInt count) -> ()");
  // The same with `count` a one-element tensor on the statistics' device: the count summed over
  // the ranks of a process group, used where it is, without a copy to the host (a sync per layer).
  m.def(
      "_update_running_stats_counted(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, "
      "Tensor var, float momentum, Tensor count) -> ()");
  m.def("batch_norm_stats_triton(Tensor input) -> (Tensor mean, Tensor var)");
  m.def("bn_relu_triton(Tensor input, Tensor scale, Tensor shift) -> Tensor");
  m.def(
      "_bn_relu_backward_reduce_triton(Tensor grad_output, Tensor input, Tensor mean, Tensor scale, "
      "Tensor shift) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  m.def(
      "_bn_relu_backward_triton(Tensor grad_output, Tensor input, Tensor scale, Tensor shift, "
      "Tensor coef_x, Tensor coef_c) -> Tensor");

  // BN-add-ReLU, ResNet's block tail: relu(input * scale + shift + residual), the BN-ReLU kernels
  // with an optional residual (none: exactly bn_relu's). The backward's mask depends on the
  // residual; _bn_add_relu_backward also gives the residual's gradient (dz) when residual_grad.
  m.def("_bn_add_relu_apply(Tensor input, Tensor scale, Tensor shift, Tensor? residual) -> Tensor");
  m.def(
      "_bn_add_relu_backward_reduce(Tensor grad_output, Tensor input, Tensor mean, Tensor scale, Tensor shift, "
      "Tensor? residual) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  m.def(
      "_bn_add_relu_backward(Tensor grad_output, Tensor input, Tensor scale, Tensor shift, Tensor coef_x, "
      "Tensor coef_c, Tensor? residual, bool residual_grad) -> (Tensor grad_input, Tensor grad_residual)");
  m.def("_bn_add_relu_apply_triton(Tensor input, Tensor scale, Tensor shift, Tensor? residual) -> Tensor");
  m.def(
      "_bn_add_relu_backward_reduce_triton(Tensor grad_output, Tensor input, Tensor mean, Tensor scale, "
      "Tensor shift, Tensor? residual) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  m.def(
      "_bn_add_relu_backward_triton(Tensor grad_output, Tensor input, Tensor scale, Tensor shift, Tensor coef_x, "
      "Tensor coef_c, Tensor? residual, bool residual_grad) -> (Tensor grad_input, Tensor grad_residual)");
  // relu(batch_norm(input) + identity) keeping only input, identity and the per-channel mean/invstd
  // for backward (never the output). mean/invstd as bn_relu_conv2d's; `backend`: "cpp" or "triton".
  m.def(
      "bn_add_relu(Tensor input, Tensor? identity, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
      "bool training, str backend) -> Tensor");

  // conv2d(relu(batch_norm(input))) keeping only the input (and per-channel statistics) for
  // backward. mean/invstd are the batch statistics in training and the running ones in eval; the
  // kernels are cnnfast's (`backend`: "cpp" or "triton") around aten's convolution. sync_group
  // names the torch.distributed process group whose ranks share the batch statistics ("" for
  // none): the backward all-reduces BN's two gradient sums over it.
  m.def(
      "bn_relu_conv2d(Tensor input, Tensor mean, Tensor invstd, Tensor? bn_weight, Tensor? bn_bias, "
      "Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "bool training, str backend, str sync_group) -> Tensor");
  // Its gradients (input, bn_weight, bn_bias, weight, bias), each only where output_mask asks.
  m.def(
      "_bn_relu_conv2d_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor invstd, Tensor? bn_weight, "
      "Tensor? bn_bias, Tensor weight, bool has_bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "bool training, str backend, str sync_group, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The Triton 1x1 convolution with BN-ReLU fused into its GEMMs (triton_kernels/conv1x1_bn_relu.py):
  // relu(bn(x)) is applied while loading input tiles and never written.
  m.def("_conv1x1_bn_relu_triton(Tensor input, Tensor scale, Tensor shift, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "_conv1x1_bn_relu_weight_grad_triton(Tensor grad_output, Tensor input, Tensor scale, Tensor shift) "
      "-> Tensor");
  m.def(
      "_conv1x1_bn_relu_input_grad_triton(Tensor grad_output, Tensor input, Tensor weight, Tensor mean, "
      "Tensor scale, Tensor shift) -> (Tensor grad_z, Tensor sum_dz, Tensor sum_dz_xmu)");
}

// `import cnnfast._C` loads this library, which runs the registrations above. The module says how
// its CPU kernels accumulate fp32 (op_helpers.h), which the Python op layer follows.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr &&
      PyModule_AddIntConstant(m, "cpu_kernels_accumulate_fp32_in_fp64",
                              cnnfast::kCpuKernelsAccumulateFp32InFp64 ? 1 : 0) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
