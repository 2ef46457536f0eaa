// GroupNorm fused with the ADM ResBlock's per-sample scale-shift and SiLU, for XLA:CPU as FFI
// custom calls (see onednn.py: group_norm). Float32 only.
//
// For x [N, P, C] (P positions, channels last), channel c in group g = c / (C / G):
//   x_hat = (x - mean[n, g]) * rstd[n, g]     statistics over the P * C / G values of (n, g),
//                                              rstd = 1 / sqrt(biased variance + epsilon)
//   u     = (x_hat * gamma[c] + beta[c]) * (1 + scale[n, c]) + shift[n, c]
//   y     = silu ? u * sigmoid(u) : u
// Statistics are summed in float64. Each sample is one OpenMP task; within a sample every
// pass walks the [P, C] values in memory order, so a 64-channel 32x32 sample (256 KB) stays in
// the core's cache across the passes.
//
// Targets:
//   diffseg_group_norm_fwd(x, gamma, beta, scale, shift) -> (y, mean [N, G], rstd [N, G])
//   diffseg_group_norm_bwd(x, gamma, beta, scale, shift, mean, rstd, dy)
//       -> (dx, dgamma [C], dbeta [C], dscale [N, C], dshift [N, C])
//     attributes: num_groups (int64), epsilon (float32), silu (int64, 0 or 1).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;

// exp(x) in float32 to about 1 ulp (Cephes' expf polynomial), written so that loops calling
// it vectorise; inputs are clamped to [-87, 88], where 2^n stays a normal float. NaN stays NaN.
inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to an integer.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return e * __builtin_bit_cast(float, bits);
}

inline float Sigmoid(float u) { return 1.0f / (1.0f + Exp(-u)); }

// The sizes of one call, checked against every operand.
struct Shape {
  int64_t n, p, c, groups, group_channels;
};

ffi::Error CheckShape(ffi::Span<const int64_t> x, int64_t num_groups,
                      std::initializer_list<ffi::Span<const int64_t>> channel_vectors,
                      std::initializer_list<ffi::Span<const int64_t>> per_sample, Shape& s) {
  auto invalid = [](const std::string& what) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "group_norm: " + what);
  };
  if (x.size() != 3) return invalid("x must be [N, P, C]");
  s = Shape{x[0], x[1], x[2], num_groups, 0};
  if (num_groups <= 0 || s.c % num_groups) {
    return invalid(std::to_string(s.c) + " channels are not divisible into " +
                   std::to_string(num_groups) + " groups");
  }
  s.group_channels = s.c / num_groups;
  for (auto dims : channel_vectors) {
    if (dims.size() != 1 || dims[0] != s.c) return invalid("gamma and beta must be [C]");
  }
  for (auto dims : per_sample) {
    if (dims.size() != 2 || dims[0] != s.n || dims[1] != s.c) {
      return invalid("scale and shift must be [N, C]");
    }
  }
  return ffi::Error::Success();
}

// Per-channel constants of one sample: u = (x - mean_c) * k_c * rstd_c + b_c, with
// k_c = gamma_c * (1 + scale_c) and b_c = beta_c * (1 + scale_c) + shift_c.
struct Affine {
  std::vector<float> mean, rstd, k, b;

  Affine(const Shape& s, const float* group_mean, const float* group_rstd, const float* gamma,
         const float* beta, const float* scale, const float* shift)
      : mean(s.c), rstd(s.c), k(s.c), b(s.c) {
    for (int64_t c = 0; c < s.c; ++c) {
      mean[c] = group_mean[c / s.group_channels];
      rstd[c] = group_rstd[c / s.group_channels];
      k[c] = gamma[c] * (1.0f + scale[c]);
      b[c] = beta[c] * (1.0f + scale[c]) + shift[c];
    }
  }
};

// The statistics of one sample's groups, two passes (sum, then squared deviations).
void Statistics(const Shape& s, double epsilon, const float* x, float* mean, float* rstd) {
  std::vector<double> sums(s.c, 0.0), group(s.groups);
  const double count = static_cast<double>(s.p * s.group_channels);
  auto fold = [&](std::vector<double>& out) {
    for (int64_t g = 0; g < s.groups; ++g) {
      double total = 0.0;
      for (int64_t c = g * s.group_channels; c < (g + 1) * s.group_channels; ++c) {
        total += sums[c];
      }
      out[g] = total / count;
    }
  };
  for (int64_t p = 0; p < s.p; ++p) {
    const float* row = x + p * s.c;
    for (int64_t c = 0; c < s.c; ++c) sums[c] += row[c];
  }
  fold(group);
  std::vector<double> channel_mean(s.c);
  for (int64_t c = 0; c < s.c; ++c) channel_mean[c] = group[c / s.group_channels];
  std::fill(sums.begin(), sums.end(), 0.0);
  for (int64_t p = 0; p < s.p; ++p) {
    const float* row = x + p * s.c;
    for (int64_t c = 0; c < s.c; ++c) {
      const double d = row[c] - channel_mean[c];
      sums[c] += d * d;
    }
  }
  std::vector<double> variance(s.groups);
  fold(variance);
  for (int64_t g = 0; g < s.groups; ++g) {
    mean[g] = static_cast<float>(group[g]);
    rstd[g] = static_cast<float>(1.0 / std::sqrt(variance[g] + epsilon));
  }
}

// One row of outputs: u, or silu(u).
inline void NormalizeRow(int64_t channels, const float* __restrict x, const Affine& a,
                         bool silu, float* __restrict out) {
  const float* __restrict mean = a.mean.data();
  const float* __restrict rstd = a.rstd.data();
  const float* __restrict k = a.k.data();
  const float* __restrict b = a.b.data();
  if (silu) {
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float u = (x[c] - mean[c]) * rstd[c] * k[c] + b[c];
      out[c] = u * Sigmoid(u);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) out[c] = (x[c] - mean[c]) * rstd[c] * k[c] + b[c];
  }
}

ffi::Error GroupNormForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gamma,
                            ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> scale,
                            ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                            ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> rstd,
                            int64_t num_groups, float epsilon, int64_t silu) {
  Shape s;
  ffi::Error checked = CheckShape(x.dimensions(), num_groups,
                                  {gamma.dimensions(), beta.dimensions()},
                                  {scale.dimensions(), shift.dimensions()}, s);
  if (checked.failure()) return checked;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    const float* xn = x.typed_data() + n * s.p * s.c;
    float* yn = y->typed_data() + n * s.p * s.c;
    float* mean_n = mean->typed_data() + n * s.groups;
    float* rstd_n = rstd->typed_data() + n * s.groups;
    Statistics(s, epsilon, xn, mean_n, rstd_n);
    const Affine a(s, mean_n, rstd_n, gamma.typed_data(), beta.typed_data(),
                   scale.typed_data() + n * s.c, shift.typed_data() + n * s.c);
    for (int64_t p = 0; p < s.p; ++p) {
      NormalizeRow(s.c, xn + p * s.c, a, silu, yn + p * s.c);
    }
  }
  return ffi::Error::Success();
}

// The normalised values and the gradient with respect to u of one row (du = dy without SiLU).
inline void RowGradient(int64_t channels, const float* __restrict x, const float* __restrict dy,
                        const Affine& a, bool silu, float* __restrict x_hat,
                        float* __restrict du) {
  const float* __restrict mean = a.mean.data();
  const float* __restrict rstd = a.rstd.data();
  const float* __restrict k = a.k.data();
  const float* __restrict b = a.b.data();
  if (silu) {
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      x_hat[c] = (x[c] - mean[c]) * rstd[c];
      const float u = x_hat[c] * k[c] + b[c];
      const float sig = Sigmoid(u);
      du[c] = dy[c] * sig * (1.0f + u * (1.0f - sig));
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      x_hat[c] = (x[c] - mean[c]) * rstd[c];
      du[c] = dy[c];
    }
  }
}

ffi::Error GroupNormBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gamma,
                             ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> scale,
                             ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> mean,
                             ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
                             ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dgamma,
                             ffi::ResultBuffer<ffi::F32> dbeta,
                             ffi::ResultBuffer<ffi::F32> dscale,
                             ffi::ResultBuffer<ffi::F32> dshift, int64_t num_groups,
                             float epsilon, int64_t silu) {
  (void)epsilon;  // rstd holds it
  Shape s;
  ffi::Error checked = CheckShape(x.dimensions(), num_groups,
                                  {gamma.dimensions(), beta.dimensions()},
                                  {scale.dimensions(), shift.dimensions()}, s);
  if (checked.failure()) return checked;
  // Per-sample sums of du and du * x_hat, for the parameter gradients' sums over samples.
  std::vector<double> du_sums(s.n * s.c), du_x_hat_sums(s.n * s.c);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    const int64_t offset = n * s.p * s.c;
    const float* xn = x.typed_data() + offset;
    const float* dyn = dy.typed_data() + offset;
    float* dxn = dx->typed_data() + offset;
    const float* scale_n = scale.typed_data() + n * s.c;
    const Affine a(s, mean.typed_data() + n * s.groups, rstd.typed_data() + n * s.groups,
                   gamma.typed_data(), beta.typed_data(), scale_n,
                   shift.typed_data() + n * s.c);
    std::vector<float> x_hat(s.c), du(s.c);
    double* sum_du = du_sums.data() + n * s.c;
    double* sum_du_x_hat = du_x_hat_sums.data() + n * s.c;
    for (int64_t p = 0; p < s.p; ++p) {
      RowGradient(s.c, xn + p * s.c, dyn + p * s.c, a, silu, x_hat.data(), du.data());
      for (int64_t c = 0; c < s.c; ++c) {
        sum_du[c] += du[c];
        sum_du_x_hat[c] += du[c] * x_hat[c];
      }
    }
    // x_hat's gradient is du * k_c; its group means (and those of its product with x_hat)
    // enter the gradient of the normalisation.
    const double count = static_cast<double>(s.p * s.group_channels);
    std::vector<float> mean_grad(s.c), mean_grad_x_hat(s.c);
    for (int64_t g = 0; g < s.groups; ++g) {
      double m1 = 0.0, m2 = 0.0;
      for (int64_t c = g * s.group_channels; c < (g + 1) * s.group_channels; ++c) {
        m1 += a.k[c] * sum_du[c];
        m2 += a.k[c] * sum_du_x_hat[c];
      }
      std::fill_n(mean_grad.begin() + g * s.group_channels, s.group_channels,
                  static_cast<float>(m1 / count));
      std::fill_n(mean_grad_x_hat.begin() + g * s.group_channels, s.group_channels,
                  static_cast<float>(m2 / count));
    }
    for (int64_t p = 0; p < s.p; ++p) {
      RowGradient(s.c, xn + p * s.c, dyn + p * s.c, a, silu, x_hat.data(), du.data());
      float* out = dxn + p * s.c;
      for (int64_t c = 0; c < s.c; ++c) {
        out[c] = a.rstd[c] * (du[c] * a.k[c] - mean_grad[c] - x_hat[c] * mean_grad_x_hat[c]);
      }
    }
    // u = z * (1 + scale) + shift with z = x_hat * gamma + beta.
    for (int64_t c = 0; c < s.c; ++c) {
      dscale->typed_data()[n * s.c + c] =
          static_cast<float>(gamma.typed_data()[c] * sum_du_x_hat[c] +
                             beta.typed_data()[c] * sum_du[c]);
      dshift->typed_data()[n * s.c + c] = static_cast<float>(sum_du[c]);
    }
  }
  for (int64_t c = 0; c < s.c; ++c) {
    double g = 0.0, b = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const double factor = 1.0 + scale.typed_data()[n * s.c + c];
      g += factor * du_x_hat_sums[n * s.c + c];
      b += factor * du_sums[n * s.c + c];
    }
    dgamma->typed_data()[c] = static_cast<float>(g);
    dbeta->typed_data()[c] = static_cast<float>(b);
  }
  return ffi::Error::Success();
}

}  // namespace

// The operands and attributes both handlers share: x, gamma, beta, scale, shift first.
#define DIFFSEG_GROUP_NORM_INPUTS                                                      \
  .Arg<ffi::Buffer<ffi::F32>>()                                                        \
      .Arg<ffi::Buffer<ffi::F32>>()                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()
#define DIFFSEG_GROUP_NORM_ATTRS \
  .Attr<int64_t>("num_groups").Attr<float>("epsilon").Attr<int64_t>("silu")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegGroupNormForward, GroupNormForward,
                              ffi::Ffi::Bind() DIFFSEG_GROUP_NORM_INPUTS
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rstd
                                      DIFFSEG_GROUP_NORM_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegGroupNormBackward, GroupNormBackward,
                              ffi::Ffi::Bind() DIFFSEG_GROUP_NORM_INPUTS
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dgamma
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbeta
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dshift
                                      DIFFSEG_GROUP_NORM_ATTRS);
