// 2-D convolutions on CPU by oneDNN, as XLA FFI custom calls (see onednn_conv.py).
//
// Activations are NHWC and filters HWIO, as jax.lax.conv_general_dilated takes them with
// dimension_numbers ("NHWC", "HWIO", "NHWC"); float32 only. oneDNN is told those layouts
// for the activations and picks its own for the filters (a small reorder per call). Its
// primitive cache makes every call after the first of a shape a lookup.
//
// Targets:
//   diffseg_onednn_conv_fwd(x, w) -> y
//   diffseg_onednn_conv_bwd(x, w, dy) -> (dx, dw)
// with int64 attributes stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right.
// The backward computes both gradients in one call, so that XLA does not run the two
// oneDNN primitives at the same time on the same cores.

#include <cstdint>
#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The memory descriptors and window of one convolution, in oneDNN's dimension order
// (N, C, H, W for activations, O, I, KH, KW for filters).
struct Convolution {
  memory::desc src, dst, weights_any, weights_hwio;
  memory::dims strides, dilates, pad_before, pad_after;

  Convolution(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
              ffi::Span<const int64_t> y, int64_t stride_h, int64_t stride_w,
              int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right)
      : src({x[0], x[3], x[1], x[2]}, memory::data_type::f32, Tag::nhwc),
        dst({y[0], y[3], y[1], y[2]}, memory::data_type::f32, Tag::nhwc),
        weights_any({w[3], w[2], w[0], w[1]}, memory::data_type::f32, Tag::any),
        weights_hwio({w[3], w[2], w[0], w[1]}, memory::data_type::f32, Tag::hwio),
        strides{stride_h, stride_w},
        dilates{0, 0},
        pad_before{pad_top, pad_left},
        pad_after{pad_bottom, pad_right} {}

  dnnl::convolution_forward::primitive_desc Forward(dnnl::prop_kind kind) const {
    return dnnl::convolution_forward::primitive_desc(
        CpuEngine(), kind, dnnl::algorithm::convolution_direct, src, weights_any, dst,
        strides, dilates, pad_before, pad_after);
  }
};

// `user` (HWIO) in the layout `wanted`: `user` itself, or a reordered copy.
memory FiltersAs(const memory::desc& wanted, memory& user, dnnl::stream& stream) {
  if (wanted == user.get_desc()) return user;
  memory reordered(wanted, CpuEngine());
  dnnl::reorder(user, reordered).execute(stream, user, reordered);
  return reordered;
}

ffi::Error Internal(const std::exception& e) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride_h, int64_t stride_w,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                       int64_t pad_right) {
  try {
    Convolution conv(x.dimensions(), w.dimensions(), y->dimensions(), stride_h, stride_w,
                     pad_top, pad_bottom, pad_left, pad_right);
    auto pd = conv.Forward(dnnl::prop_kind::forward_inference);
    dnnl::stream stream(CpuEngine());
    memory src(conv.src, CpuEngine(), x.typed_data());
    memory dst(conv.dst, CpuEngine(), y->typed_data());
    memory filters(conv.weights_hwio, CpuEngine(), w.typed_data());
    memory weights = FiltersAs(pd.weights_desc(), filters, stream);
    dnnl::convolution_forward(pd).execute(
        stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const std::exception& e) {
    return Internal(e);
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                        ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right) {
  try {
    Convolution conv(x.dimensions(), w.dimensions(), dy.dimensions(), stride_h, stride_w,
                     pad_top, pad_bottom, pad_left, pad_right);
    auto hint = conv.Forward(dnnl::prop_kind::forward_training);
    dnnl::stream stream(CpuEngine());
    memory src(conv.src, CpuEngine(), x.typed_data());
    memory diff_src(conv.src, CpuEngine(), dx->typed_data());
    memory diff_dst(conv.dst, CpuEngine(), dy.typed_data());
    memory filters(conv.weights_hwio, CpuEngine(), w.typed_data());
    memory diff_filters(conv.weights_hwio, CpuEngine(), dw->typed_data());

    dnnl::convolution_backward_data::primitive_desc data_pd(
        CpuEngine(), dnnl::algorithm::convolution_direct, conv.src, conv.weights_any,
        conv.dst, conv.strides, conv.dilates, conv.pad_before, conv.pad_after, hint);
    memory weights = FiltersAs(data_pd.weights_desc(), filters, stream);
    dnnl::convolution_backward_data(data_pd).execute(
        stream,
        {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src}});

    dnnl::convolution_backward_weights::primitive_desc weights_pd(
        CpuEngine(), dnnl::algorithm::convolution_direct, conv.src, conv.weights_any,
        conv.dst, conv.strides, conv.dilates, conv.pad_before, conv.pad_after, hint);
    bool reorder = weights_pd.diff_weights_desc() != conv.weights_hwio;
    memory diff_weights =
        reorder ? memory(weights_pd.diff_weights_desc(), CpuEngine()) : diff_filters;
    dnnl::convolution_backward_weights(weights_pd).execute(
        stream,
        {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
    if (reorder) dnnl::reorder(diff_weights, diff_filters).execute(stream, diff_weights, diff_filters);
    stream.wait();
  } catch (const std::exception& e) {
    return Internal(e);
  }
  return ffi::Error::Success();
}

}  // namespace

#define DIFFSEG_CONV_ATTRS                                                          \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")      \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegOnednnConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() DIFFSEG_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegOnednnConvBackward, ConvBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() DIFFSEG_CONV_ATTRS);
