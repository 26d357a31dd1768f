// Cross-channel local response normalisation, the math shared by every C++ kernel.
//
//   s_c = k + alpha/size * sum_{c' in [c - before, c + after]} x_{c'}^2,  before = size/2,
//   y_c = x_c * s_c^-beta                                                 after = (size-1)/2
//   dx_j = dy_j * s_j^-beta - 2*alpha*beta/size * x_j * sum_{c: j in window(c)} dy_c x_c s_c^(-beta-1)
//
// (torch.nn.functional.local_response_norm's window and alpha/size convention.)
//
// A "column" is the C values of one (batch, spatial position). Both passes walk a column once,
// along the channels: one read of each input and one write of the output. Each window sum is
// added up afresh, in channel order, from rows still in cache: a running sum that adds the
// entering square and subtracts the leaving one is cheaper for long windows, but after a large
// value leaves it keeps a rounding residue larger than the small values that remain (and a NaN
// or inf never leaves it), where torch's sums are exact per window. Only x is kept for backward:
// s and y are recomputed there, which reads less memory than keeping y would (x, dy -> dx
// instead of x, y, dy -> dx).
//
// The routines below process `lanes` columns at once, laid out `lane_stride` apart. The CPU calls
// them with a tile of contiguous spatial positions (the inner loops over lanes vectorise); a CUDA
// thread calls them with one lane. The same code therefore runs in the CPU tests.
//
// Every routine reads x through a Load policy: LoadAsIs, or LoadRelu for the fused
// ReLU-LRN-max-pool op (csrc/common/relu_lrn_max_pool2d.h), which normalises relu(x) without ever
// writing it, and whose backward applies the ReLU's mask as it writes dx.
#pragma once

#include <cmath>

#include "host_device.h"

namespace cnnfast {

template <typename acc_t>
struct LrnParams {
  int64_t channels;        // C
  int64_t channel_stride;  // elements between channel c and c + 1 of one column
  int64_t lane_stride;     // elements between neighbouring lanes
  int64_t size;            // window length
  acc_t alpha_over_size;
  acc_t beta;
  acc_t k;
  // For beta > 1, the |s| from which torch's LRN backward is NaN (t_where_infinite): where
  // beta * s^(beta-1), or s itself, overflows the input's dtype. Set on the host (lrn_params).
  acc_t nan_scale;

  CNNFAST_HOST_DEVICE int64_t before() const { return size / 2; }
  CNNFAST_HOST_DEVICE int64_t after() const { return (size - 1) / 2; }
  // Ring buffer length the backward needs (see lrn_backward_columns).
  CNNFAST_HOST_DEVICE int64_t ring_length() const { return size < channels ? size : channels; }
};

CNNFAST_HOST_DEVICE float lrn_sqrt(float v) {
#if defined(__CUDA_ARCH__)
  return sqrtf(v);
#else
  return std::sqrt(v);
#endif
}
CNNFAST_HOST_DEVICE double lrn_sqrt(double v) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}
CNNFAST_HOST_DEVICE float lrn_pow(float b, float e) {
#if defined(__CUDA_ARCH__)
  return powf(b, e);
#else
  return std::pow(b, e);
#endif
}
CNNFAST_HOST_DEVICE double lrn_pow(double b, double e) {
#if defined(__CUDA_ARCH__)
  return ::pow(b, e);
#else
  return std::pow(b, e);
#endif
}

// s^-beta. beta = 0.75 (AlexNet, torch's default) and 0.5 avoid the general pow, which costs far
// more than the memory traffic of these kernels; sqrt is correctly rounded, so these stay within
// a few ulp of pow. The choice is a type, made once per call (lrn_dispatch_power), so that the
// inner loops over lanes have no branch and vectorise.
//
// Each also says what t = dy x s^(-beta-1) is where s is huge: 0 or tiny, as computed. torch's
// pow backward multiplies its gradient, 0 there (its div = s^beta squared overflows), by
// beta * s^(beta-1): for beta > 1 that product overflows too once |s| reaches p.nan_scale (an
// infinite s always), which makes torch's t NaN, and so every dx of that window. For beta <= 1
// it never does.
struct PowerThreeQuarters {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t) {
    const acc_t r = acc_t(1) / lrn_sqrt(s);
    return r * lrn_sqrt(r);
  }
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t t_where_infinite(acc_t t, acc_t, const LrnParams<acc_t>&) { return t; }
};
struct PowerHalf {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t) {
    return acc_t(1) / lrn_sqrt(s);
  }
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t t_where_infinite(acc_t t, acc_t, const LrnParams<acc_t>&) { return t; }
};
struct PowerAny {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t beta) {
    return lrn_pow(s, -beta);
  }
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t t_where_infinite(acc_t t, acc_t s, const LrnParams<acc_t>& p) {
    return p.beta > acc_t(1) && (s < acc_t(0) ? -s : s) >= p.nan_scale ? acc_t(NAN) : t;
  }
};

// Calls body(Power{}) with the cheapest exact form of s^-beta for this beta.
template <typename acc_t, typename Body>
CNNFAST_HOST_DEVICE void lrn_dispatch_power(acc_t beta, const Body& body) {
  if (beta == acc_t(0.75)) {
    body(PowerThreeQuarters{});
  } else if (beta == acc_t(0.5)) {
    body(PowerHalf{});
  } else {
    body(PowerAny{});
  }
}

template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t lrn_scale(acc_t window_sum, const LrnParams<acc_t>& p) {
  return p.k + p.alpha_over_size * window_sum;
}

// y_c = x_c * s_c^-beta from x_c (as loaded) and its window sum.
template <typename Power, typename acc_t>
CNNFAST_HOST_DEVICE acc_t lrn_normalize(acc_t x, acc_t window_sum, const LrnParams<acc_t>& p) {
  return x * Power::inverse(lrn_scale(window_sum, p), p.beta);
}

struct LoadAsIs {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t apply(acc_t v) { return v; }
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t mask(acc_t, acc_t grad) { return grad; }
};
// torch's ReLU: relu(NaN) is NaN, and its backward (threshold_backward) zeroes the gradient where
// x <= 0 only, so a NaN passes it on. Both are selects, which vectorise.
struct LoadRelu {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t apply(acc_t v) { return v < acc_t(0) ? acc_t(0) : v; }
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t mask(acc_t x, acc_t grad) { return x <= acc_t(0) ? acc_t(0) : grad; }
};

template <typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE acc_t lrn_load(const scalar_t* x, int64_t offset) {
  return Load::apply(static_cast<acc_t>(x[offset]));
}

template <typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE acc_t lrn_square(const scalar_t* x, int64_t offset) {
  const acc_t v = lrn_load<scalar_t, acc_t, Load>(x, offset);
  return v * v;
}

// Channels [*first, *last] of the window of channel c, clipped to the tensor.
template <typename acc_t>
CNNFAST_HOST_DEVICE void lrn_window(int64_t c, const LrnParams<acc_t>& p, int64_t* first, int64_t* last) {
  *first = c - p.before() > 0 ? c - p.before() : 0;
  *last = c + p.after() < p.channels - 1 ? c + p.after() : p.channels - 1;
}

// window_sum[l] = sum of x^2 over the window of channel c, per lane.
template <typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE void lrn_window_sum(const scalar_t* x, int64_t c, int64_t lanes, const LrnParams<acc_t>& p,
                                        acc_t* window_sum) {
  int64_t first, last;
  lrn_window(c, p, &first, &last);
  for (int64_t l = 0; l < lanes; ++l) {
    window_sum[l] = acc_t(0);
  }
  for (int64_t w = first; w <= last; ++w) {
    const scalar_t* row = x + w * p.channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      window_sum[l] += lrn_square<scalar_t, acc_t, Load>(row, l * p.lane_stride);
    }
  }
}

// Forward over `lanes` columns starting at x, written to y with its own strides (the fused op
// writes rows into a small local buffer). window_sum: scratch of `lanes` values.
template <typename Power, typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE void lrn_forward_columns_to(const scalar_t* x, scalar_t* y, int64_t y_channel_stride,
                                                int64_t y_lane_stride, int64_t lanes, const LrnParams<acc_t>& p,
                                                acc_t* window_sum) {
  for (int64_t c = 0; c < p.channels; ++c) {
    lrn_window_sum<scalar_t, acc_t, Load>(x, c, lanes, p, window_sum);
    const scalar_t* x_row = x + c * p.channel_stride;
    scalar_t* y_row = y + c * y_channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      const acc_t v = lrn_load<scalar_t, acc_t, Load>(x_row, l * p.lane_stride);
      y_row[l * y_lane_stride] = static_cast<scalar_t>(lrn_normalize<Power>(v, window_sum[l], p));
    }
  }
}

// Forward over `lanes` columns starting at x / y, y laid out as x.
template <typename Power, typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_forward_columns(const scalar_t* x, scalar_t* y, int64_t lanes,
                                             const LrnParams<acc_t>& p, acc_t* window_sum) {
  lrn_forward_columns_to<Power>(x, y, p.channel_stride, p.lane_stride, lanes, p, window_sum);
}

// Scratch of the backward: per lane, the window sum of x^2 and the reverse window sum of
// t_c = dy_c x_c s_c^(-beta-1); per ring slot and lane, t_c and s_c^-beta.
template <typename acc_t>
struct LrnBackwardScratch {
  acc_t* window_sum;   // [lanes]
  acc_t* t_sum;        // [lanes]
  acc_t* ring_t;       // [ring_length][ring_stride]
  acc_t* ring_power;   // [ring_length][ring_stride]
  int64_t ring_stride; // >= lanes (a CUDA block interleaves its threads' rings)
};

// The backward's two lane loops, as functions with __restrict__ arguments: the scratch arrays
// share one allocation, and without these promises the compiler cannot vectorise across them.
// t_c = dy_c x_c s_c^(-beta-1) joins the reverse sum and the ring, with s_c^-beta.
template <typename Power, typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE void lrn_produce_t(const scalar_t* __restrict__ x_row, const scalar_t* __restrict__ dy_row,
                                       int64_t lanes, const LrnParams<acc_t>& p,
                                       const acc_t* __restrict__ window_sum, acc_t* __restrict__ t_new,
                                       acc_t* __restrict__ power_new) {
  for (int64_t l = 0; l < lanes; ++l) {
    const int64_t o = l * p.lane_stride;
    const acc_t scale = lrn_scale(window_sum[l], p);
    const acc_t power = Power::inverse(scale, p.beta);
    const acc_t t = static_cast<acc_t>(dy_row[o]) * lrn_load<scalar_t, acc_t, Load>(x_row, o) * power / scale;
    t_new[l] = Power::t_where_infinite(t, scale, p);
    power_new[l] = power;
  }
}

// t_sum[l] = sum of t over the reverse window of channel j, [j - after, j + before], from the ring.
template <typename acc_t>
CNNFAST_HOST_DEVICE void lrn_reverse_window_sum(int64_t j, int64_t lanes, const LrnParams<acc_t>& p,
                                                const acc_t* __restrict__ ring_t, int64_t ring,
                                                int64_t ring_stride, acc_t* __restrict__ t_sum) {
  const int64_t first = j - p.after() > 0 ? j - p.after() : 0;
  const int64_t last = j + p.before() < p.channels - 1 ? j + p.before() : p.channels - 1;
  for (int64_t l = 0; l < lanes; ++l) {
    t_sum[l] = acc_t(0);
  }
  for (int64_t c = first; c <= last; ++c) {
    const acc_t* t = ring_t + (c % ring) * ring_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      t_sum[l] += t[l];
    }
  }
}

// dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * (reverse window sum of t), through Load's mask.
template <typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE void lrn_emit_dx(const scalar_t* __restrict__ x_row, const scalar_t* __restrict__ dy_row,
                                     scalar_t* __restrict__ dx_row, int64_t lanes, int64_t lane_stride,
                                     const acc_t* __restrict__ power_j, const acc_t* __restrict__ t_sum,
                                     acc_t coefficient) {
  for (int64_t l = 0; l < lanes; ++l) {
    const int64_t o = l * lane_stride;
    const acc_t x = static_cast<acc_t>(x_row[o]);
    const acc_t dx = static_cast<acc_t>(dy_row[o]) * power_j[l] - coefficient * Load::apply(x) * t_sum[l];
    dx_row[o] = static_cast<scalar_t>(Load::mask(x, dx));
  }
}

// Backward over `lanes` columns. Step c produces t_c and s_c^-beta (needs the window of c) and
// then dx_j for j = c - before, whose reverse window [j - after, j + before] ends at c. The ring
// keeps the last ring_length() = min(size, C) values of both: enough for a reverse window (at most
// that many channels), and s_j^-beta, written `before` < size steps earlier, is still there.
template <typename Power, typename scalar_t, typename acc_t, typename Load = LoadAsIs>
CNNFAST_HOST_DEVICE void lrn_backward_columns(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                              int64_t lanes, const LrnParams<acc_t>& p,
                                              const LrnBackwardScratch<acc_t>& s) {
  const int64_t ring = p.ring_length();
  const acc_t coefficient = acc_t(2) * p.alpha_over_size * p.beta;
  // With beta = 0 (y = x) the reverse window sum is exactly 0, as torch's pow backward gives 0 for
  // an exponent of 0, whatever t is (infinite or NaN where a window's scale is 0): the second term
  // of dx is x_j * 0, NaN only for a non-finite x_j, as torch's x * x backward makes it.
  const bool beta_zero = p.beta == acc_t(0);
  // Steps past C only emit; when size > C they start at `before`, where the first dx is due.
  const int64_t end = p.channels + p.before();
  for (int64_t c = 0; c < end; c = (c + 1 == p.channels && p.before() > p.channels) ? p.before() : c + 1) {
    if (c < p.channels) {
      lrn_window_sum<scalar_t, acc_t, Load>(x, c, lanes, p, s.window_sum);
      lrn_produce_t<Power, scalar_t, acc_t, Load>(x + c * p.channel_stride, dy + c * p.channel_stride, lanes, p,
                                                  s.window_sum, s.ring_t + (c % ring) * s.ring_stride,
                                                  s.ring_power + (c % ring) * s.ring_stride);
    }
    const int64_t j = c - p.before();
    if (j >= 0) {
      if (beta_zero) {
        for (int64_t l = 0; l < lanes; ++l) {
          s.t_sum[l] = acc_t(0);
        }
      } else {
        lrn_reverse_window_sum(j, lanes, p, s.ring_t, ring, s.ring_stride, s.t_sum);
      }
      lrn_emit_dx<scalar_t, acc_t, Load>(x + j * p.channel_stride, dy + j * p.channel_stride,
                                         dx + j * p.channel_stride, lanes, p.lane_stride,
                                         s.ring_power + (j % ring) * s.ring_stride, s.t_sum, coefficient);
    }
  }
}

}  // namespace cnnfast
