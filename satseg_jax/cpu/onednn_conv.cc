// oneDNN 2-D convolutions (forward, data gradient, kernel gradient) and training-mode
// batch normalisation + ReLU (forward, backward) as XLA FFI custom calls for JAX on the CPU.
//
// Why: jaxlib's CPU convolutions (Eigen, YNNPACK) run the U-Net's 3x3 convolutions at
// 0.6-0.9x the speed of oneDNN's (what PyTorch uses), and the kernel gradient at high
// resolution at up to 1/3.6 (benchmarks/NOTES.md sections 11-12). The public jaxlib wheel
// has no oneDNN rewriter, so satseg_jax/cpu/onednn_conv.py compiles this file against
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


// ---------------------------------------------------------------------------------------
// Training-mode batch normalisation with a fused ReLU: y = max(0, (x - mean) / sqrt(var +
// eps) * scale + shift), mean / var the biased statistics of this batch over N, H, W.
// Why: in XLA this is two reductions plus element-wise passes that also store the centred
// input for the backward pass; oneDNN does it in two passes over x and keeps only a
// 1-bit-per-element ReLU mask (the "workspace") for the backward pass.

struct BatchNormOp {
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
  memory::desc x_md, c_md, ws_md, fwd_scratch, bwd_scratch;
};

const BatchNormOp& CachedBatchNorm(int64_t n, int64_t h, int64_t w, int64_t c, float eps) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float>,
                  std::unique_ptr<BatchNormOp>>
      cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[std::make_tuple(n, h, w, c, eps)];
  if (slot) return *slot;
  auto op = std::make_unique<BatchNormOp>();
  op->x_md = memory::desc({n, c, h, w}, dt::f32, tag::nhwc);
  op->c_md = memory::desc({c}, dt::f32, tag::a);
  const auto flags = dnnl::normalization_flags::use_scale |
                     dnnl::normalization_flags::use_shift |
                     dnnl::normalization_flags::fuse_norm_relu;
#if DNNL_VERSION_MAJOR >= 3
  dnnl::batch_normalization_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, op->x_md, op->x_md, eps, flags,
      UserScratchpad());
  dnnl::batch_normalization_backward::primitive_desc bwd(
      Engine(), dnnl::prop_kind::backward, op->x_md, op->x_md, op->x_md, eps, flags, fwd,
      UserScratchpad());
#else
  dnnl::batch_normalization_forward::desc fd(dnnl::prop_kind::forward_training, op->x_md,
                                             eps, flags);
  dnnl::batch_normalization_forward::primitive_desc fwd(fd, UserScratchpad(), Engine());
  dnnl::batch_normalization_backward::desc bd(dnnl::prop_kind::backward, op->x_md, op->x_md,
                                              eps, flags);
  dnnl::batch_normalization_backward::primitive_desc bwd(bd, UserScratchpad(), Engine(),
                                                         fwd);
#endif
  op->fwd = dnnl::batch_normalization_forward(fwd);
  op->bwd = dnnl::batch_normalization_backward(bwd);
  op->ws_md = fwd.workspace_desc();
  op->fwd_scratch = fwd.scratchpad_desc();
  op->bwd_scratch = bwd.scratchpad_desc();
  slot = std::move(op);
  return *slot;
}

ffi::Error CheckBatchNorm(int64_t ws_bytes, const BatchNormOp& op) {
  if (static_cast<int64_t>(op.ws_md.get_size()) != ws_bytes)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN batch norm: workspace size differs from the library's");
  return ffi::Error::Success();
}

ffi::Error BatchNormReluForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                                ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                                ffi::ResultBuffer<ffi::F32> mean,
                                ffi::ResultBuffer<ffi::F32> var,
                                ffi::ResultBuffer<ffi::U8> ws, float eps) {
  auto d = x.dimensions();
  if (d.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN batch norm: expected NHWC");
  try {
    const BatchNormOp& op = CachedBatchNorm(d[0], d[1], d[2], d[3], eps);
    if (auto e = CheckBatchNorm(ws->element_count(), op); e.failure()) return e;
    void* scratch = ScratchBuffer(0, op.fwd_scratch.get_size() + 64);
    if (scratch == nullptr) return OutOfMemory();
    dnnl::stream stream(Engine());
    memory xm(op.x_md, Engine(), x.typed_data()), ym(op.x_md, Engine(), y->typed_data());
    memory sc(op.c_md, Engine(), scale.typed_data()), sh(op.c_md, Engine(), shift.typed_data());
    memory mm(op.c_md, Engine(), mean->typed_data()), vm(op.c_md, Engine(), var->typed_data());
    memory wm(op.ws_md, Engine(), ws->typed_data()), pad(op.fwd_scratch, Engine(), scratch);
    op.fwd.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DST, ym}, {DNNL_ARG_SCALE, sc},
                            {DNNL_ARG_SHIFT, sh}, {DNNL_ARG_MEAN, mm},
                            {DNNL_ARG_VARIANCE, vm}, {DNNL_ARG_WORKSPACE, wm},
                            {DNNL_ARG_SCRATCHPAD, pad}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error BatchNormReluBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                 ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
                                 ffi::Buffer<ffi::F32> var,
                                 ffi::Buffer<ffi::U8> ws, ffi::ResultBuffer<ffi::F32> dx,
                                 ffi::ResultBuffer<ffi::F32> dscale,
                                 ffi::ResultBuffer<ffi::F32> dshift, float eps) {
  auto d = x.dimensions();
  if (d.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN batch norm: expected NHWC");
  try {
    const BatchNormOp& op = CachedBatchNorm(d[0], d[1], d[2], d[3], eps);
    if (auto e = CheckBatchNorm(ws.element_count(), op); e.failure()) return e;
    void* scratch = ScratchBuffer(0, op.bwd_scratch.get_size() + 64);
    if (scratch == nullptr) return OutOfMemory();
    dnnl::stream stream(Engine());
    memory xm(op.x_md, Engine(), x.typed_data()), dym(op.x_md, Engine(), dy.typed_data());
    memory dxm(op.x_md, Engine(), dx->typed_data());
    memory sc(op.c_md, Engine(), scale.typed_data());
    memory mm(op.c_md, Engine(), mean.typed_data()), vm(op.c_md, Engine(), var.typed_data());
    memory dsc(op.c_md, Engine(), dscale->typed_data());
    memory dsh(op.c_md, Engine(), dshift->typed_data());
    memory wm(op.ws_md, Engine(), ws.typed_data()), pad(op.bwd_scratch, Engine(), scratch);
    op.bwd.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym},
                            {DNNL_ARG_SCALE, sc}, {DNNL_ARG_MEAN, mm},
                            {DNNL_ARG_VARIANCE, vm},
                            {DNNL_ARG_WORKSPACE, wm}, {DNNL_ARG_DIFF_SRC, dxm},
                            {DNNL_ARG_DIFF_SCALE, dsc}, {DNNL_ARG_DIFF_SHIFT, dsh},
                            {DNNL_ARG_SCRATCHPAD, pad}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(SatsegBatchNormReluForward, BatchNormReluForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<float>("eps"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SatsegBatchNormReluBackward, BatchNormReluBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

// Bytes of the ReLU mask the forward pass keeps for the backward pass (the FFI result's
// shape must be known when JAX traces; it depends on oneDNN's implementation). -1: error.
extern "C" int64_t SatsegBatchNormWorkspaceBytes(int64_t n, int64_t h, int64_t w, int64_t c,
                                                 float eps) {
  try {
    return static_cast<int64_t>(CachedBatchNorm(n, h, w, c, eps).ws_md.get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}
