// Cross-channel local response normalisation, the math shared by every C++ kernel.
//
//   s_c = k + alpha/size * sum_{c' in [c - before, c + after]} x_{c'}^2,  before = size/2,
//   y_c = x_c * s_c^-beta                                                 after = (size-1)/2
//   dx_j = dy_j * s_j^-beta - 2*alpha*beta/size * x_j * sum_{c: j in window(c)} dy_c x_c s_c^(-beta-1)
//
// (torch.nn.functional.local_response_norm's window and alpha/size convention.)
//
// A "column" is the C values of one (batch, spatial position). Both passes walk a column once,
// along the channels, with running window sums: O(C) work whatever the size, one read of each
// input and one write of the output. Only x is kept for backward: s and y are recomputed there,
// which reads less memory than keeping y would (x, dy -> dx instead of x, y, dy -> dx).
//
// The routines below process `lanes` columns at once, laid out `lane_stride` apart. The CPU calls
// them with a tile of contiguous spatial positions (the inner loops over lanes vectorise); a CUDA
// thread calls them with one lane. The same code therefore runs in the CPU tests.
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
struct PowerThreeQuarters {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t) {
    const acc_t r = acc_t(1) / lrn_sqrt(s);
    return r * lrn_sqrt(r);
  }
};
struct PowerHalf {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t) {
    return acc_t(1) / lrn_sqrt(s);
  }
};
struct PowerAny {
  template <typename acc_t>
  CNNFAST_HOST_DEVICE static acc_t inverse(acc_t s, acc_t beta) {
    return lrn_pow(s, -beta);
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

// Running sums add the square that enters the window and subtract the one that leaves; rounding
// can leave a tiny negative value where the true sum is 0, which must not reach pow.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t lrn_scale(acc_t window_sum, const LrnParams<acc_t>& p) {
  return p.k + p.alpha_over_size * (window_sum > acc_t(0) ? window_sum : acc_t(0));
}

template <typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE acc_t lrn_square(const scalar_t* x, int64_t offset) {
  const acc_t v = static_cast<acc_t>(x[offset]);
  return v * v;
}

// Moves window_sum (one per lane) from channel c - 1 to channel c.
template <typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_slide_window(const scalar_t* x, int64_t c, int64_t lanes,
                                          const LrnParams<acc_t>& p, acc_t* window_sum) {
  const int64_t entering = c + p.after();
  const int64_t leaving = c - p.before() - 1;
  if (entering < p.channels) {
    const scalar_t* row = x + entering * p.channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      window_sum[l] += lrn_square<scalar_t, acc_t>(row, l * p.lane_stride);
    }
  }
  if (leaving >= 0) {
    const scalar_t* row = x + leaving * p.channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      window_sum[l] -= lrn_square<scalar_t, acc_t>(row, l * p.lane_stride);
    }
  }
}

// Sets window_sum to the sum for channel -1, so that the first slide gives channel 0's.
template <typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_start_window(const scalar_t* x, int64_t lanes, const LrnParams<acc_t>& p,
                                          acc_t* window_sum) {
  for (int64_t l = 0; l < lanes; ++l) {
    window_sum[l] = acc_t(0);
  }
  const int64_t end = p.after() < p.channels ? p.after() : p.channels;
  for (int64_t c = 0; c < end; ++c) {
    const scalar_t* row = x + c * p.channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      window_sum[l] += lrn_square<scalar_t, acc_t>(row, l * p.lane_stride);
    }
  }
}

// Forward over `lanes` columns starting at x / y. window_sum: scratch of `lanes` values.
template <typename Power, typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_forward_columns(const scalar_t* x, scalar_t* y, int64_t lanes,
                                             const LrnParams<acc_t>& p, acc_t* window_sum) {
  lrn_start_window(x, lanes, p, window_sum);
  for (int64_t c = 0; c < p.channels; ++c) {
    lrn_slide_window(x, c, lanes, p, window_sum);
    const scalar_t* x_row = x + c * p.channel_stride;
    scalar_t* y_row = y + c * p.channel_stride;
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t o = l * p.lane_stride;
      const acc_t scale = lrn_scale(window_sum[l], p);
      y_row[o] = static_cast<scalar_t>(static_cast<acc_t>(x_row[o]) * Power::inverse(scale, p.beta));
    }
  }
}

// Scratch of the backward: per lane, the forward window sum and the reverse window sum of
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
template <typename Power, typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_produce_t(const scalar_t* __restrict__ x_row, const scalar_t* __restrict__ dy_row,
                                       int64_t lanes, const LrnParams<acc_t>& p,
                                       const acc_t* __restrict__ window_sum, acc_t* __restrict__ t_sum,
                                       acc_t* __restrict__ t_new, acc_t* __restrict__ power_new) {
  for (int64_t l = 0; l < lanes; ++l) {
    const int64_t o = l * p.lane_stride;
    const acc_t scale = lrn_scale(window_sum[l], p);
    const acc_t power = Power::inverse(scale, p.beta);
    const acc_t t = static_cast<acc_t>(dy_row[o]) * static_cast<acc_t>(x_row[o]) * power / scale;
    t_sum[l] += t;
    t_new[l] = t;
    power_new[l] = power;
  }
}

// dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * (reverse window sum of t).
template <typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_emit_dx(const scalar_t* __restrict__ x_row, const scalar_t* __restrict__ dy_row,
                                     scalar_t* __restrict__ dx_row, int64_t lanes, int64_t lane_stride,
                                     const acc_t* __restrict__ power_j, const acc_t* __restrict__ t_sum,
                                     acc_t coefficient) {
  for (int64_t l = 0; l < lanes; ++l) {
    const int64_t o = l * lane_stride;
    dx_row[o] = static_cast<scalar_t>(static_cast<acc_t>(dy_row[o]) * power_j[l] -
                                      coefficient * static_cast<acc_t>(x_row[o]) * t_sum[l]);
  }
}

// Backward over `lanes` columns. Step c produces t_c (needs the window of c) and then dx_j for
// j = c - before, whose reverse window [j - after, j + before] ends at c. The ring keeps the last
// ring_length() values of t (to drop t_{c-size} from the reverse sum) and of s^-beta (read again
// `before` steps later); ring_length() = min(size, C) is enough for both (a slot is rewritten only
// after it was last read).
template <typename Power, typename scalar_t, typename acc_t>
CNNFAST_HOST_DEVICE void lrn_backward_columns(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                              int64_t lanes, const LrnParams<acc_t>& p,
                                              const LrnBackwardScratch<acc_t>& s) {
  const int64_t ring = p.ring_length();
  const acc_t coefficient = acc_t(2) * p.alpha_over_size * p.beta;
  lrn_start_window(x, lanes, p, s.window_sum);
  for (int64_t l = 0; l < lanes; ++l) {
    s.t_sum[l] = acc_t(0);
  }
  for (int64_t c = 0; c < p.channels + p.before(); ++c) {
    const int64_t dropped = c - p.size;  // t_{c-size} leaves the reverse window
    if (dropped >= 0 && dropped < p.channels) {
      const acc_t* t_old = s.ring_t + (dropped % ring) * s.ring_stride;
      for (int64_t l = 0; l < lanes; ++l) {
        s.t_sum[l] -= t_old[l];
      }
    }
    if (c < p.channels) {
      lrn_slide_window(x, c, lanes, p, s.window_sum);
      lrn_produce_t<Power>(x + c * p.channel_stride, dy + c * p.channel_stride, lanes, p, s.window_sum,
                           s.t_sum, s.ring_t + (c % ring) * s.ring_stride,
                           s.ring_power + (c % ring) * s.ring_stride);
    }
    const int64_t j = c - p.before();
    if (j >= 0) {
      lrn_emit_dx(x + j * p.channel_stride, dy + j * p.channel_stride, dx + j * p.channel_stride, lanes,
                  p.lane_stride, s.ring_power + (j % ring) * s.ring_stride, s.t_sum, coefficient);
    }
  }
}

}  // namespace cnnfast
