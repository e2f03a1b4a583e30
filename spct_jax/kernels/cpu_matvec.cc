// Skinny bf16 matmul for XLA:CPU decoding, any CPU (cpu_amx.cc is the AMX path):
// y f32[M, N] = x bf16[M, K] @ w bf16[N, K]^T, M a few rows.
//
// Decoding one sequence streams every weight once per token for one or two activation rows. XLA:CPU's bf16 dot
// (YNNPACK) moves such a weight at about half the speed a plain read of it reaches on the same cores, so this
// kernel reads each weight row once, multiplies it with all M activation rows and accumulates in f32. Weights are
// [out, in] (the LM head's [V, D] table as is): every output is a dot product over one contiguous row.
// Built by spct_jax/kernels/cpu_matvec.py with -march=native; written with GCC/Clang vector extensions so it
// compiles for any ISA, with AVX-512 BF16 dot-product instructions where the CPU has them.

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu_common.h"

namespace {

using namespace spct;  // NOLINT: the shared aliases

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

constexpr int64_t kStep = 32;  // bf16 elements per vector step: one 64-byte load
constexpr int kRows = 4;       // weight rows per block

inline float Bf16ToF32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float Sum(f32x16 v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
#endif
}

// acc += the 32 pairwise products of w[0:32] and x[0:32], lane i holding those of elements 2i and 2i+1.
inline void DotStep(f32x16& acc, const uint16_t* w, const uint16_t* x) {
#if defined(__AVX512BF16__)
  acc = (f32x16)_mm512_dpbf16_ps((__m512)acc, (__m512bh)_mm512_loadu_si512(w), (__m512bh)_mm512_loadu_si512(x));
#else
  u32x16 wu, xu;
  std::memcpy(&wu, w, sizeof wu);
  std::memcpy(&xu, x, sizeof xu);
  // A 32-bit lane holds two bf16 values: the even element in the low half, the odd one in the high half.
  acc += (f32x16)(wu << 16) * (f32x16)(xu << 16);
  acc += (f32x16)(wu & 0xffff0000u) * (f32x16)(xu & 0xffff0000u);
#endif
}

// y[m0:m0+MB, n:n+R] from weight rows n .. n+R-1: R*MB independent accumulators hide the FMA latency.
template <int R, int MB>
inline void DotBlock(const uint16_t* const* xs, const uint16_t* w_rows, float* y, int64_t m0, int64_t n,
                     int64_t k_dim, int64_t n_dim) {
  const int64_t k_vec = k_dim / kStep * kStep;
  f32x16 acc[R][MB] = {};
  for (int64_t k = 0; k < k_vec; k += kStep)
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) DotStep(acc[r][m], w_rows + r * k_dim + k, xs[m] + k);
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < MB; ++m) {
      float s = Sum(acc[r][m]);
      for (int64_t k = k_vec; k < k_dim; ++k) s += Bf16ToF32(w_rows[r * k_dim + k]) * Bf16ToF32(xs[m][k]);
      y[(m0 + m) * n_dim + n + r] = s;
    }
  }
}

// Rows [lo, hi) of y for activation rows m0 .. m0+MB-1.
template <int MB>
void DotRows(const uint16_t* x, const uint16_t* w, float* y, int64_t m0, int64_t k_dim, int64_t n_dim, int64_t lo,
             int64_t hi) {
  const uint16_t* xs[MB];
  for (int m = 0; m < MB; ++m) xs[m] = x + (m0 + m) * k_dim;
  int64_t n = lo;
  for (; n + kRows <= hi; n += kRows) DotBlock<kRows, MB>(xs, w + n * k_dim, y, m0, n, k_dim, n_dim);
  for (; n < hi; ++n) DotBlock<1, MB>(xs, w + n * k_dim, y, m0, n, k_dim, n_dim);
}

// out[0] = a checksum of a bf16 buffer read as 64-byte vectors over the thread pool: the read bandwidth these
// kernels can reach (benchmarks/machine.py times it).
ffi::Error StreamRead(ffi::ThreadPool pool, Bf16Vector data, ffi::Result<F32Vector> out) {
  const auto* p = reinterpret_cast<const uint32_t*>(data.typed_data());
  const int64_t vectors = data.element_count() / 32;
  std::atomic<uint32_t> total{0};
  ParallelFor(pool, vectors / 2, 512, [&](int64_t lo, int64_t hi) {
    u32x16 acc0 = {}, acc1 = {};
    for (int64_t i = 2 * lo; i < 2 * hi; i += 2) {
      u32x16 a, b;
      std::memcpy(&a, p + i * 16, sizeof a);
      std::memcpy(&b, p + i * 16 + 16, sizeof b);
      acc0 ^= a;
      acc1 ^= b;
    }
    acc0 ^= acc1;
    uint32_t s = 0;
    for (int j = 0; j < 16; ++j) s ^= acc0[j];
    total.fetch_xor(s);
  });
  out->typed_data()[0] = float(total.load() & 0xffff);
  return ffi::Error::Success();
}

ffi::Error SkinnyMatmul(ffi::ThreadPool pool, Bf16Matrix x, Bf16Matrix w, ffi::Result<F32Matrix> y) {
  const int64_t m_dim = x.dimensions()[0], k_dim = x.dimensions()[1], n_dim = w.dimensions()[0];
  if (w.dimensions()[1] != k_dim) return ffi::Error::InvalidArgument("skinny_matmul: x and w disagree on K");
  if (y->dimensions()[0] != m_dim || y->dimensions()[1] != n_dim)
    return ffi::Error::InvalidArgument("skinny_matmul: output shape is not [M, N]");
  const auto* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  float* yp = y->typed_data();
  ParallelFor(pool, n_dim, 64, [&](int64_t lo, int64_t hi) {
    int64_t m0 = 0;
    for (; m0 + 2 <= m_dim; m0 += 2) DotRows<2>(xp, wp, yp, m0, k_dim, n_dim, lo, hi);
    if (m0 < m_dim) DotRows<1>(xp, wp, yp, m0, k_dim, n_dim, lo, hi);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpctSkinnyMatmul, SkinnyMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Bf16Matrix>()
                                  .Arg<Bf16Matrix>()
                                  .Ret<F32Matrix>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpctStreamRead, StreamRead,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Bf16Vector>()
                                  .Ret<F32Vector>());
