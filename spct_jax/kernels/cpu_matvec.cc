// bf16 matmuls for XLA:CPU decoding, any CPU (cpu_amx.cc is the AMX path):
// y f32[M, N] = x bf16[M, K] @ w bf16[N, K]^T, M from one row to a decode batch (up to cpu_matvec.max_rows()).
//
// Decoding one sequence streams every weight once per token for one or two activation rows, and XLA:CPU's bf16 dot
// (YNNPACK) moves such a weight at about half the speed a plain read of it reaches on the same cores; a decode
// batch (8-64 rows) on a CPU without AMX is bound by FLOPs, not bytes, and XLA:CPU's bf16 dot (which widens bf16
// itself where the ISA has no bf16 arithmetic) reaches about half the GEMM peak there. So `BlockedRows` keeps a
// tile of weight rows in L2 (prefetching the next one) and multiplies it with every activation row from
// registers: accumulators for kBlockR weight rows x kBlockM activation rows, each weight vector loaded (and widened)
// once per step and used kBlockM times, accumulated in f32. Weights are [out, in] (the LM head's [V, D] table as
// is): every output is a dot product over one contiguous row, its lanes summed at the end of the block.
// Built by spct_jax/kernels/cpu_matvec.py with -march=native; written with GCC/Clang vector extensions so it
// compiles for any ISA, with AVX-512 BF16 dot-product instructions where the CPU has them. (A separate path for one
// or two rows, without tiles or prefetch, was 1.35x slower per decode step on Zen 4 and was removed.)

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

#include "cpu_common.h"

namespace {

using namespace spct;  // NOLINT: the shared aliases

typedef uint32_t u32x16 __attribute__((vector_size(64)));

inline float Bf16ToF32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // f32 lanes of one native vector
#else
constexpr int kLanes = 8;
#endif
typedef float f32xN __attribute__((vector_size(4 * kLanes)));
typedef uint32_t u32xN __attribute__((vector_size(4 * kLanes)));

#if defined(__AVX512BF16__)
constexpr int64_t kBlockStep = 32;  // K elements per step: one 64-byte bf16 load
constexpr int kBlockR = 4, kBlockM = 6;  // 24 accumulators + 4 weight vectors of the 32 zmm registers
#elif defined(__AVX512F__)
constexpr int64_t kBlockStep = 2 * kLanes;
constexpr int kBlockR = 4, kBlockM = 4;  // 16 accumulators + 8 widened weight vectors + 2 for x
#else
constexpr int64_t kBlockStep = 2 * kLanes;
// 8 accumulators + 4 widened weight vectors + 2 for x + the mask: 15 of 16 ymm (on 2 Zen 3 cores, at 32 rows,
// 2 x 5 and 1 x 8 were 15-40% slower, 3 x 3 50%)
constexpr int kBlockR = 2, kBlockM = 4;
#endif
// Weight rows kept in L2 while every activation row passes over them (48 and 192 KiB measured ~10% slower).
constexpr int64_t kTileBytes = 96 * 1024;
inline f32xN Fma(f32xN acc, f32xN a, f32xN b) {
#if defined(__AVX512F__)
  return (f32xN)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__FMA__)
  return (f32xN)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
  return acc + a * b;
#endif
}

#if defined(__AVX512F__)
// Transposing lane sums: each step shuffles two vectors' lanes into place and adds them, halving the vectors left,
// so 16 sums take 45 shuffles and adds where 16 `_mm512_reduce_add_ps` take ~128.
// Per 128-bit chunk of a and b, [a0+a2, b0+b2, a1+a3, b1+b3] of that chunk's lanes.
inline __m512 SumPairs(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}

// Chunk j of the result: [a, b, c, d]'s sums of chunk j's 4 lanes.
inline __m512 SumQuads(const f32xN* v) {
  const __m512 ab = SumPairs((__m512)v[0], (__m512)v[1]), cd = SumPairs((__m512)v[2], (__m512)v[3]);
  return _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Sums of neighbouring 128-bit chunks: [p0 + p1, p2 + p3, q0 + q1, q2 + q3].
inline __m512 SumChunkPairs(__m512 p, __m512 q) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
}

// out[0:16] = the lane sums of v[0:16].
inline void LaneSums16(const f32xN* v, float* out) {
  const __m512 low = SumChunkPairs(SumQuads(v), SumQuads(v + 4));
  const __m512 high = SumChunkPairs(SumQuads(v + 8), SumQuads(v + 12));
  _mm512_storeu_ps(out, SumChunkPairs(low, high));
}

// out[0:8] = the lane sums of v[0:8].
inline void LaneSums8(const f32xN* v, float* out) {
  const __m512 o = SumChunkPairs(SumQuads(v), SumQuads(v + 4));  // [v0-3 01, v0-3 23, v4-7 01, v4-7 23]
  const __m512 s = _mm512_add_ps(o, _mm512_shuffle_f32x4(o, o, _MM_SHUFFLE(2, 3, 0, 1)));  // chunks 0, 2 hold the sums
  _mm256_storeu_ps(out, _mm512_castps512_ps256(_mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(2, 0, 2, 0))));
}
#endif

// out[i] = the sum of v[i]'s lanes, i < count: through transposing horizontal adds, 16 or 8 at a time on AVX-512
// and 8 at a time on AVX2 (the epilogue of a block is ~R * MB reductions against its R MB dot steps per K step; a
// serial sum of lanes per output cost as much as a third of the block for K = 640).
inline void LaneSums(const f32xN* v, int count, float* out) {
  int i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= count; i += 16) LaneSums16(v + i, out + i);
  for (; i + 8 <= count; i += 8) LaneSums8(v + i, out + i);
#elif defined(__AVX__)
  for (; i + 8 <= count; i += 8) {
    const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)v[i], (__m256)v[i + 1]),
                                     _mm256_hadd_ps((__m256)v[i + 2], (__m256)v[i + 3]));
    const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)v[i + 4], (__m256)v[i + 5]),
                                     _mm256_hadd_ps((__m256)v[i + 6], (__m256)v[i + 7]));
    const __m256 low = _mm256_permute2f128_ps(t0, t1, 0x20), high = _mm256_permute2f128_ps(t0, t1, 0x31);
    _mm256_storeu_ps(out + i, _mm256_add_ps(low, high));
  }
#endif
  for (; i < count; ++i) {
#if defined(__AVX512F__)
    out[i] = _mm512_reduce_add_ps((__m512)v[i]);
#else
    f32xN x = v[i];
    float s = 0.f;
    for (int j = 0; j < kLanes; ++j) s += x[j];
    out[i] = s;
#endif
  }
}

// The activations as the blocked kernel reads them. With bf16 dot-product instructions: x itself (pairs of bf16 in
// each 32-bit lane). Otherwise x widened once per call to f32 and split by parity, so that a weight vector read as
// u32 lanes (element 2i in the low half, 2i+1 in the high half) widens with one shift / one mask: even[m][i] =
// x[m][2i], odd[m][i] = x[m][2i+1].
struct Activations {
  const uint16_t* x;
  int64_t k_dim;
  std::vector<float> even, odd;  // [M, K / 2] each (empty with bf16 dot products)

  Activations(const uint16_t* x_, int64_t m_dim, int64_t k_dim_) : x(x_), k_dim(k_dim_) {
#if !defined(__AVX512BF16__)
    const int64_t half = k_dim / 2;
    even.resize(m_dim * half);
    odd.resize(m_dim * half);
    for (int64_t m = 0; m < m_dim; ++m)
      for (int64_t i = 0; i < half; ++i) {
        even[m * half + i] = Bf16ToF32(x[m * k_dim + 2 * i]);
        odd[m * half + i] = Bf16ToF32(x[m * k_dim + 2 * i + 1]);
      }
#endif
  }
};

// y[m0:m0+MB, n:n+R] over the whole of K.
template <int R, int MB>
inline void Block(const Activations& a, const uint16_t* w, float* y, int64_t m0, int64_t n, int64_t n_dim) {
  const int64_t k_dim = a.k_dim, k_vec = k_dim / kBlockStep * kBlockStep;
  const uint16_t* w_rows = w + n * k_dim;
  f32xN acc[R][MB] = {};
#if defined(__AVX512BF16__)
  for (int64_t k = 0; k < k_vec; k += kBlockStep) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w_rows + r * k_dim + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(a.x + (m0 + m) * k_dim + k);
      for (int r = 0; r < R; ++r) acc[r][m] = (f32xN)_mm512_dpbf16_ps((__m512)acc[r][m], wv[r], xv);
    }
  }
#else
  const int64_t half = k_dim / 2;
  for (int64_t k = 0; k < k_vec; k += kBlockStep) {
    f32xN we[R], wo[R];
    for (int r = 0; r < R; ++r) {
      u32xN wu;
      std::memcpy(&wu, w_rows + r * k_dim + k, sizeof wu);
      we[r] = (f32xN)(wu << 16);
      wo[r] = (f32xN)(wu & 0xffff0000u);
    }
    for (int m = 0; m < MB; ++m) {
      f32xN xe, xo;
      std::memcpy(&xe, a.even.data() + (m0 + m) * half + k / 2, sizeof xe);
      std::memcpy(&xo, a.odd.data() + (m0 + m) * half + k / 2, sizeof xo);
      for (int r = 0; r < R; ++r) acc[r][m] = Fma(Fma(acc[r][m], we[r], xe), wo[r], xo);
    }
  }
#endif
  float sums[R * MB];
  LaneSums(&acc[0][0], R * MB, sums);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      float s = sums[r * MB + m];
      for (int64_t k = k_vec; k < k_dim; ++k)
        s += Bf16ToF32(w_rows[r * k_dim + k]) * Bf16ToF32(a.x[(m0 + m) * k_dim + k]);
      y[(m0 + m) * n_dim + n + r] = s;
    }
}

// The next tile's bytes, requested a slice per block over all the passes of the current tile (into L2, where the
// next passes read it). Without it the first pass over a tile waits on memory: the hardware prefetchers lose the
// stream while the other passes re-read the tile (half the time at 8 rows).
struct Prefetcher {
  const char *next, *end;
  int64_t per_block;

  void Step() {
    for (const char* stop = std::min(end, next + per_block); next < stop; next += 64)
      __builtin_prefetch(next, 0, 2);  // prefetcht1: into L2
  }
};

// Weight rows per block for MB activation rows: fewer activation rows get more weight rows, their FMAs having
// fewer independent accumulators to hide their latency behind.
template <int MB>
constexpr int kRowsFor = MB == 1 ? 2 * kBlockR : MB == 2 ? kBlockR + 1 : kBlockR;

// y[m0:m0+MB, lo:hi].
template <int MB>
void BlockColumns(const Activations& a, const uint16_t* w, float* y, int64_t m0, int64_t n_dim, int64_t lo,
                  int64_t hi, Prefetcher& prefetch) {
  constexpr int R = kRowsFor<MB>;
  int64_t n = lo;
  for (; n + R <= hi; n += R) {
    prefetch.Step();
    Block<R, MB>(a, w, y, m0, n, n_dim);
  }
  for (; n < hi; ++n) Block<1, MB>(a, w, y, m0, n, n_dim);
}

// The last m_dim % kBlockM activation rows in one pass (MB = the remainder).
template <int MB>
void RemainingRows(const Activations& a, const uint16_t* w, float* y, int64_t m0, int64_t rest, int64_t n_dim,
                   int64_t lo, int64_t hi, Prefetcher& prefetch) {
  if constexpr (MB > 0) {
    if (rest == MB) return BlockColumns<MB>(a, w, y, m0, n_dim, lo, hi, prefetch);
    RemainingRows<MB - 1>(a, w, y, m0, rest, n_dim, lo, hi, prefetch);
  }
}

// Weight rows [lo, hi) for every activation row, one L2-sized tile of rows at a time.
void BlockedRows(const Activations& a, const uint16_t* w, float* y, int64_t m_dim, int64_t n_dim, int64_t lo,
                 int64_t hi) {
  const int64_t row_bytes = 2 * a.k_dim;
  const int64_t tile = std::max<int64_t>(kBlockR, kTileBytes / row_bytes / kBlockR * kBlockR);
  const int64_t passes = (m_dim + kBlockM - 1) / kBlockM, blocks = passes * ((tile + kBlockR - 1) / kBlockR);
  const char* base = reinterpret_cast<const char*>(w);
  for (int64_t t0 = lo; t0 < hi; t0 += tile) {
    const int64_t t1 = std::min(hi, t0 + tile), t2 = std::min(hi, t1 + tile);
    Prefetcher prefetch{base + t1 * row_bytes, base + t2 * row_bytes, ((t2 - t1) * row_bytes / blocks + 63) / 64 * 64};
    int64_t m0 = 0;
    for (; m0 + kBlockM <= m_dim; m0 += kBlockM) BlockColumns<kBlockM>(a, w, y, m0, n_dim, t0, t1, prefetch);
    RemainingRows<kBlockM - 1>(a, w, y, m0, m_dim - m0, n_dim, t0, t1, prefetch);
  }
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
  const Activations a(xp, m_dim, k_dim);
  ParallelFor(pool, n_dim, 16, [&](int64_t lo, int64_t hi) { BlockedRows(a, wp, yp, m_dim, n_dim, lo, hi); });
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
