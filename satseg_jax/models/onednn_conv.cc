// oneDNN 2-D convolutions (forward, data gradient, kernel gradient) as XLA FFI custom
// calls for JAX on the CPU.
//
// Why: jaxlib's CPU convolutions (Eigen, YNNPACK) run the U-Net's 3x3 convolutions at
// 0.6-0.9x the speed of oneDNN's (what PyTorch uses), and the kernel gradient at high
// resolution at up to 1/3.6 (benchmarks/NOTES.md sections 11-12). The public jaxlib wheel
// has no oneDNN rewriter, so satseg_jax/models/onednn_conv.py compiles this file against
// the system oneDNN (Debian: libdnnl-dev) and routes f32 NHWC/HWIO convolutions here.
//
// Layouts: activations NHWC (XLA's row-major default for our arrays; oneDNN "nhwc"),
// kernels HWIO ("hwio"). Kernels are reordered to whatever blocked format oneDNN picks;
// activations are never reordered. Primitives are built once per shape and cached.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One convolution geometry: x (n, h, w, c), kernel (kh, kw, c, o), y (n, oh, ow, o).
struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;
  auto Key() const {
    return std::make_tuple(n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr);
  }
  memory::desc X(tag t = tag::nhwc) const { return {{n, c, h, w}, dt::f32, t}; }
  memory::desc Y(tag t = tag::nhwc) const { return {{n, o, oh, ow}, dt::f32, t}; }
  memory::desc K(tag t = tag::hwio) const { return {{o, c, kh, kw}, dt::f32, t}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.X(), g.K(tag::any), g.Y(), g.Strides(), g.PadL(), g.PadR(), UserScratchpad());
#else
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training,
                                    dnnl::algorithm::convolution_direct, g.X(),
                                    g.K(tag::any), g.Y(), g.Strides(), g.PadL(), g.PadR());
  return dnnl::convolution_forward::primitive_desc(d, UserScratchpad(), Engine());
#endif
}

// A primitive, the kernel layout it wants, and the reorder between that layout and
// HWIO (to it for forward/data gradient, from it for the kernel gradient).
struct Op {
  dnnl::primitive prim;
  memory::desc kernel_md;
  bool reorder_kernel = false;
  dnnl::reorder kernel_reorder;
  memory::desc scratch_md;
};

enum Kind { kForward = 0, kDataGrad = 1, kKernelGrad = 2 };

Op Build(Kind kind, const Geometry& g) {
  Op op;
  auto fwd = ForwardPd(g);
  memory::desc want;
  if (kind == kForward) {
    op.prim = dnnl::convolution_forward(fwd);
    want = fwd.weights_desc();
    op.scratch_md = fwd.scratchpad_desc();
  } else if (kind == kDataGrad) {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.X(), g.K(tag::any), g.Y(),
        g.Strides(), g.PadL(), g.PadR(), fwd, UserScratchpad());
#else
    dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, g.X(),
                                            g.K(tag::any), g.Y(), g.Strides(), g.PadL(),
                                            g.PadR());
    dnnl::convolution_backward_data::primitive_desc pd(d, UserScratchpad(), Engine(), fwd);
#endif
    op.prim = dnnl::convolution_backward_data(pd);
    want = pd.weights_desc();
    op.scratch_md = pd.scratchpad_desc();
  } else {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.X(), g.K(tag::any), g.Y(),
        g.Strides(), g.PadL(), g.PadR(), fwd, UserScratchpad());
#else
    dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, g.X(),
                                               g.K(tag::any), g.Y(), g.Strides(),
                                               g.PadL(), g.PadR());
    dnnl::convolution_backward_weights::primitive_desc pd(d, UserScratchpad(), Engine(),
                                                          fwd);
#endif
    op.prim = dnnl::convolution_backward_weights(pd);
    want = pd.diff_weights_desc();
    op.scratch_md = pd.scratchpad_desc();
  }
  op.kernel_md = want;
  op.reorder_kernel = want != g.K();
  if (op.reorder_kernel) {
    op.kernel_reorder = kind == kKernelGrad
                            ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                  Engine(), want, Engine(), g.K()))
                            : dnnl::reorder(dnnl::reorder::primitive_desc(
                                  Engine(), g.K(), Engine(), want));
  }
  return op;
}

// Primitives are immutable and may run concurrently (scratchpads are per call), so the
// cache only needs a lock around lookup/insert.
const Op& Cached(Kind kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<std::tuple<int, decltype(g.Key())>, std::unique_ptr<Op>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[std::make_tuple(static_cast<int>(kind), g.Key())];
  if (!slot) slot = std::make_unique<Op>(Build(kind, g));
  return *slot;
}

// Per-thread scratch memory, grown on demand (64-byte aligned for AVX-512 loads).
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(ptr); }
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(ptr);
      size = (bytes + 63) / 64 * 64;
      ptr = std::aligned_alloc(64, size);
      if (ptr == nullptr) size = 0;
    }
    return ptr;
  }
};

void* ScratchBuffer(int slot, size_t bytes) {
  thread_local Scratch scratch[2];
  return scratch[slot].Get(bytes);
}

ffi::Error OutOfMemory() {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN conv: out of memory");
}

ffi::Error Run(Kind kind, const Geometry& g, float* x, float* k, float* y) {
  try {
    const Op& op = Cached(kind, g);
    dnnl::stream stream(Engine());
    memory x_mem(g.X(), Engine(), x), y_mem(g.Y(), Engine(), y);
    memory k_user(g.K(), Engine(), k);
    memory k_mem = k_user;
    if (op.reorder_kernel) {
      void* buf = ScratchBuffer(1, op.kernel_md.get_size());
      if (buf == nullptr) return OutOfMemory();
      k_mem = memory(op.kernel_md, Engine(), buf);
      if (kind != kKernelGrad) op.kernel_reorder.execute(stream, k_user, k_mem);
    }
    void* scratch = ScratchBuffer(0, op.scratch_md.get_size() + 64);
    if (scratch == nullptr) return OutOfMemory();
    memory pad(op.scratch_md, Engine(), scratch);
    if (kind == kForward) {
      op.prim.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem},
                               {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (kind == kDataGrad) {
      op.prim.execute(stream, {{DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem},
                               {DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      op.prim.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_WEIGHTS, k_mem},
                               {DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, pad}});
      if (op.reorder_kernel) op.kernel_reorder.execute(stream, k_mem, k_user);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error CheckRanks(const ffi::AnyBuffer::Dimensions& a, const ffi::AnyBuffer::Dimensions& b,
                      const ffi::AnyBuffer::Dimensions& c) {
  if (a.size() != 4 || b.size() != 4 || c.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN conv: expected rank-4 NHWC activations and HWIO kernel");
  return ffi::Error::Success();
}

Geometry Make(const ffi::AnyBuffer::Dimensions& x, const ffi::AnyBuffer::Dimensions& k,
              const ffi::AnyBuffer::Dimensions& y, int64_t sh, int64_t sw, int64_t pt,
              int64_t pb, int64_t pl, int64_t pr) {
  return Geometry{x[0], x[1], x[2], x[3], k[3], k[0], k[1], y[1], y[2],
                  sh,   sw,   pt,   pb,   pl,   pr};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckRanks(x.dimensions(), k.dimensions(), y->dimensions()); e.failure())
    return e;
  return Run(kForward,
             Make(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr),
             x.typed_data(), k.typed_data(), y->typed_data());
}

ffi::Error DataGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k,
                    ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                    int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckRanks(dx->dimensions(), k.dimensions(), dy.dimensions()); e.failure())
    return e;
  return Run(kDataGrad,
             Make(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr),
             dx->typed_data(), k.typed_data(), dy.typed_data());
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckRanks(x.dimensions(), dk->dimensions(), dy.dimensions()); e.failure())
    return e;
  return Run(kKernelGrad,
             Make(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr),
             x.typed_data(), dk->typed_data(), dy.typed_data());
}

}  // namespace

#define SATSEG_CONV_BINDING                                                           \
  ffi::Ffi::Bind()                                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()                                                   \
      .Arg<ffi::Buffer<ffi::F32>>()                                                   \
      .Ret<ffi::Buffer<ffi::F32>>()                                                   \
      .Attr<int64_t>("sh")                                                            \
      .Attr<int64_t>("sw")                                                            \
      .Attr<int64_t>("pt")                                                            \
      .Attr<int64_t>("pb")                                                            \
      .Attr<int64_t>("pl")                                                            \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SatsegConvForward, Forward, SATSEG_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SatsegConvDataGrad, DataGrad, SATSEG_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SatsegConvKernelGrad, KernelGrad, SATSEG_CONV_BINDING);
