// oneDNN kernels for XLA:CPU as FFI custom calls (see onednn.py): 2-D convolutions and
// batched matrix products, float32 only.
//
// Convolutions take NHWC activations, HWIO filters and a bias per output channel, as
// jax.lax.conv_general_dilated with dimension_numbers ("NHWC", "HWIO", "NHWC") plus the bias;
// the filter-gradient kernel also sums the bias gradient. The forward pass and the input gradient run
// oneDNN's NHWC kernels directly; the filter gradient runs on oneDNN's blocked layouts
// (nChw8c on AVX2), into which its two operands are reordered first: on AVX2 that kernel is
// 15-35% faster there, reorders included (benchmarks/README.md). Filters are reordered to the
// layout each kernel wants on every call (they change every step; the copy is small).
//
// Matrix products take row-major [B, M, K] and [B, K, N] operands, either of which may be
// stored transposed ([B, K, M], [B, N, K]): oneDNN reads them through strides, no copies.
//
// Primitive descriptors and primitives are built once per shape and kept (building the
// input-gradient descriptor alone takes 0.3-0.5 ms); oneDNN primitives may be executed from
// several threads at once.
//
// Targets:
//   diffseg_onednn_conv_fwd(x, w, bias) -> y
//   diffseg_onednn_conv_bwd(x, w, dy) -> (dx, dw, dbias)
//     int64 attributes stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right. The
//     backward computes both gradients in one call, so that XLA does not run two oneDNN
//     primitives at the same time on the same cores.
//   diffseg_onednn_matmul(a, b) -> c
//     int64 attributes transpose_a, transpose_b (0 or 1).

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using Key = std::vector<int64_t>;

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The value built by `make()` for `key`, built on the first call and kept for the process.
template <class Plan, class Make>
const Plan& Cached(const Key& key, Make make) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) plan = std::make_unique<Plan>(make());
  return *plan;
}

// Memory for `desc` in this thread's scratch buffer number `slot`, which grows to the largest
// size asked for and is kept: fresh buffers of tens of MB would be fresh mmaps, page-faulted
// anew on every call.
memory Scratch(int slot, const memory::desc& desc) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[3];
  Buffer& buffer = buffers[slot];
  size_t size = (desc.get_size() + 63) / 64 * 64;
  if (size > buffer.size) {
    std::free(buffer.data);
    buffer.data = std::aligned_alloc(64, size);
    buffer.size = buffer.data ? size : 0;
    if (!buffer.data) throw std::bad_alloc();
  }
  return memory(desc, CpuEngine(), buffer.data);
}

// `user` in the layout `wanted`: `user` itself, or a copy made by `reorder` into scratch
// buffer `slot` (or, without a slot, into fresh memory).
memory As(const memory::desc& wanted, memory user, const dnnl::reorder& reorder,
          dnnl::stream& stream, int slot = -1) {
  if (wanted == user.get_desc()) return user;
  memory copy = slot < 0 ? memory(wanted, CpuEngine()) : Scratch(slot, wanted);
  reorder.execute(stream, user, copy);
  return copy;
}

// A reorder between two layouts, or an empty one when they are the same.
dnnl::reorder MakeReorder(const memory::desc& from, const memory::desc& to) {
  if (from == to) return dnnl::reorder();
  return dnnl::reorder(dnnl::reorder::primitive_desc(CpuEngine(), from, CpuEngine(), to));
}

// One convolution's window and memory descriptors, in oneDNN's dimension order (N, C, H, W
// for activations, O, I, KH, KW for filters): the user's NHWC/HWIO ones and `any` ones.
struct Window {
  memory::desc src, dst, weights, bias;             // NHWC, NHWC, HWIO, [C_out]
  memory::desc src_any, dst_any, weights_any;
  memory::dims strides, dilates, pad_before, pad_after;
  Key key;  // what identifies the convolution: shapes, strides, padding

  Window(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
         int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
         int64_t pad_left, int64_t pad_right)
      : src({x[0], x[3], x[1], x[2]}, memory::data_type::f32, Tag::nhwc),
        dst({y[0], y[3], y[1], y[2]}, memory::data_type::f32, Tag::nhwc),
        weights({w[3], w[2], w[0], w[1]}, memory::data_type::f32, Tag::hwio),
        bias({w[3]}, memory::data_type::f32, Tag::a),
        src_any(src.get_dims(), memory::data_type::f32, Tag::any),
        dst_any(dst.get_dims(), memory::data_type::f32, Tag::any),
        weights_any(weights.get_dims(), memory::data_type::f32, Tag::any),
        strides{stride_h, stride_w},
        dilates{0, 0},
        pad_before{pad_top, pad_left},
        pad_after{pad_bottom, pad_right},
        key{x[0], x[1], x[2], x[3], w[0], w[1], w[2], w[3],
            stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right} {}

  // A forward descriptor on the given activation layouts (the hint for the backward ones).
  dnnl::convolution_forward::primitive_desc Forward(dnnl::prop_kind kind,
                                                    const memory::desc& src_layout,
                                                    const memory::desc& dst_layout) const {
    return dnnl::convolution_forward::primitive_desc(
        CpuEngine(), kind, dnnl::algorithm::convolution_direct, src_layout, weights_any, bias,
        dst_layout, strides, dilates, pad_before, pad_after);
  }
};

struct ForwardPlan {
  dnnl::convolution_forward conv;
  memory::desc weights;
  dnnl::reorder weights_reorder;

  explicit ForwardPlan(const Window& window) {
    auto pd = window.Forward(dnnl::prop_kind::forward_inference, window.src, window.dst);
    conv = dnnl::convolution_forward(pd);
    weights = pd.weights_desc();
    weights_reorder = MakeReorder(window.weights, weights);
  }
};

struct BackwardPlan {
  // Input gradient, on NHWC activations.
  dnnl::convolution_backward_data data;
  memory::desc data_weights;
  dnnl::reorder data_weights_reorder;
  // Filter gradient, on the blocked layouts oneDNN picks.
  dnnl::convolution_backward_weights filters;
  memory::desc filters_src, filters_diff_dst, filters_diff_weights;
  dnnl::reorder src_reorder, diff_dst_reorder, diff_weights_reorder;

  explicit BackwardPlan(const Window& w) {
    auto hint = w.Forward(dnnl::prop_kind::forward_training, w.src, w.dst);
    dnnl::convolution_backward_data::primitive_desc data_pd(
        CpuEngine(), dnnl::algorithm::convolution_direct, w.src, w.weights_any, w.dst,
        w.strides, w.dilates, w.pad_before, w.pad_after, hint);
    data = dnnl::convolution_backward_data(data_pd);
    data_weights = data_pd.weights_desc();
    data_weights_reorder = MakeReorder(w.weights, data_weights);

    auto blocked_hint = w.Forward(dnnl::prop_kind::forward_training, w.src_any, w.dst_any);
    dnnl::convolution_backward_weights::primitive_desc filters_pd(
        CpuEngine(), dnnl::algorithm::convolution_direct, w.src_any, w.weights_any, w.bias,
        w.dst_any, w.strides, w.dilates, w.pad_before, w.pad_after, blocked_hint);
    filters = dnnl::convolution_backward_weights(filters_pd);
    filters_src = filters_pd.src_desc();
    filters_diff_dst = filters_pd.diff_dst_desc();
    filters_diff_weights = filters_pd.diff_weights_desc();
    src_reorder = MakeReorder(w.src, filters_src);
    diff_dst_reorder = MakeReorder(w.dst, filters_diff_dst);
    diff_weights_reorder = MakeReorder(filters_diff_weights, w.weights);
  }
};

struct MatmulPlan {
  dnnl::matmul matmul;
  memory::desc a, b, c;

  MatmulPlan(int64_t batch, int64_t m, int64_t k, int64_t n, bool transpose_a,
             bool transpose_b)
      : a({batch, m, k}, memory::data_type::f32,
          transpose_a ? memory::dims{m * k, 1, m} : memory::dims{m * k, k, 1}),
        b({batch, k, n}, memory::data_type::f32,
          transpose_b ? memory::dims{k * n, 1, k} : memory::dims{k * n, n, 1}),
        c({batch, m, n}, memory::data_type::f32, Tag::abc) {
    matmul = dnnl::matmul(dnnl::matmul::primitive_desc(CpuEngine(), a, b, c));
  }
};

ffi::Error Internal(const char* what, const std::exception& e) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN ") + what + ": " + e.what());
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y,
                       int64_t stride_h, int64_t stride_w,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                       int64_t pad_right) {
  try {
    Window window(x.dimensions(), w.dimensions(), y->dimensions(), stride_h, stride_w,
                  pad_top, pad_bottom, pad_left, pad_right);
    const auto& plan = Cached<ForwardPlan>(window.key, [&] { return ForwardPlan(window); });
    dnnl::stream stream(CpuEngine());
    memory src(window.src, CpuEngine(), x.typed_data());
    memory dst(window.dst, CpuEngine(), y->typed_data());
    memory filters(window.weights, CpuEngine(), w.typed_data());
    memory bias(window.bias, CpuEngine(), b.typed_data());
    memory weights = As(plan.weights, filters, plan.weights_reorder, stream);
    plan.conv.execute(stream, {{DNNL_ARG_SRC, src},
                               {DNNL_ARG_WEIGHTS, weights},
                               {DNNL_ARG_BIAS, bias},
                               {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const std::exception& e) {
    return Internal("convolution", e);
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                        ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db,
                        int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right) {
  try {
    Window window(x.dimensions(), w.dimensions(), dy.dimensions(), stride_h, stride_w,
                  pad_top, pad_bottom, pad_left, pad_right);
    const auto& plan = Cached<BackwardPlan>(window.key, [&] { return BackwardPlan(window); });
    dnnl::stream stream(CpuEngine());
    memory src(window.src, CpuEngine(), x.typed_data());
    memory diff_src(window.src, CpuEngine(), dx->typed_data());
    memory diff_dst(window.dst, CpuEngine(), dy.typed_data());
    memory filters(window.weights, CpuEngine(), w.typed_data());
    memory diff_filters(window.weights, CpuEngine(), dw->typed_data());
    memory diff_bias(window.bias, CpuEngine(), db->typed_data());

    memory weights = As(plan.data_weights, filters, plan.data_weights_reorder, stream);
    plan.data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                               {DNNL_ARG_WEIGHTS, weights},
                               {DNNL_ARG_DIFF_SRC, diff_src}});

    memory blocked_src = As(plan.filters_src, src, plan.src_reorder, stream, 0);
    memory blocked_diff_dst =
        As(plan.filters_diff_dst, diff_dst, plan.diff_dst_reorder, stream, 1);
    bool reorder_out = plan.filters_diff_weights != window.weights;
    memory diff_weights = reorder_out ? Scratch(2, plan.filters_diff_weights) : diff_filters;
    plan.filters.execute(stream, {{DNNL_ARG_SRC, blocked_src},
                                  {DNNL_ARG_DIFF_DST, blocked_diff_dst},
                                  {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                  {DNNL_ARG_DIFF_BIAS, diff_bias}});
    if (reorder_out) plan.diff_weights_reorder.execute(stream, diff_weights, diff_filters);
    stream.wait();
  } catch (const std::exception& e) {
    return Internal("convolution", e);
  }
  return ffi::Error::Success();
}

ffi::Error Matmul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, int64_t transpose_a, int64_t transpose_b) {
  try {
    auto a_dims = a.dimensions(), b_dims = b.dimensions(), c_dims = c->dimensions();
    if (a_dims.size() != 3 || b_dims.size() != 3 || c_dims.size() != 3) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "oneDNN matmul: operands must be [batch, rows, columns]");
    }
    int64_t batch = c_dims[0], m = c_dims[1], n = c_dims[2];
    int64_t k = transpose_a ? a_dims[1] : a_dims[2];
    const auto& plan = Cached<MatmulPlan>(
        {batch, m, k, n, transpose_a, transpose_b},
        [&] { return MatmulPlan(batch, m, k, n, transpose_a != 0, transpose_b != 0); });
    dnnl::stream stream(CpuEngine());
    memory a_mem(plan.a, CpuEngine(), a.typed_data());
    memory b_mem(plan.b, CpuEngine(), b.typed_data());
    memory c_mem(plan.c, CpuEngine(), c->typed_data());
    plan.matmul.execute(stream,
                        {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
    stream.wait();
  } catch (const std::exception& e) {
    return Internal("matmul", e);
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
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() DIFFSEG_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegOnednnConvBackward, ConvBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() DIFFSEG_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DiffsegOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b"));
