// AMX bf16 matmuls for XLA:CPU decoding: y f32[M, N] = bf16(x f32[M, K]) @ w^T, and the LM head with softmax summaries.
//
// TDPBF16PS multiplies a 16 x 32 bf16 tile A by a 32 x 16 tile B (16 rows of 16 bf16 pairs) into a 16 x 16 f32
// tile C, ~16x faster than memory delivers weights at 32 rows. So the weights are A, read once, and the activations
// B, repacked per call: C holds [16 outputs][16 activation rows] and is written to y transposed.
// Weights are pre-tiled, w bf16[N/32, K/32, 32, 32] with w[nb, kb, i, j] = W[32 nb + i, 32 kb + j]
// (cpu_matvec.tile): each 2 KB block is two A tiles, and the blocks are read in memory order. With the plain
// [N, K] layout, a tile load reads 16 rows 1280 bytes apart and the loads (which wait for the multiplies reading
// the previous tile) ran at ~60% of read speed; in tile order, with the next block prefetched, at ~90%.
// Built only where the compiler targets AMX (-march=native on such a CPU); SpctAmxAvailable() also asks Linux for
// the tile state, which a process must request before its first tile instruction.

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
#define SPCT_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(SPCT_AMX)
namespace {

using namespace spct;  // NOLINT: the shared aliases

constexpr int64_t kBlockRows = 32;    // weight rows per 2 KB block (two A tiles)
constexpr int64_t kBlockK = 32;       // inputs per block
constexpr int64_t kStatsBlock = 512;  // vocabulary entries per softmax summary (strategies.BLOCK)

struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows x 64 bytes: C tiles 0-3, weight tiles 4-5, activation tiles 6-7. Tile state is per thread.
// A global: GCC 12 does not count LDTILECFG as reading its operand and dropped the stores into a local config.
const TileConfig kTileConfig = [] {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  return cfg;
}();

// f32 -> bf16, rounding to nearest even (as XLA's convert; NaN stays NaN).
inline uint32_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// x f32[M, K], rounded to bf16 -> B tiles [K/32][m_blocks][16 input pairs][16 rows] of bf16 pairs, zero past row M.
// Taking f32 saves the decode step a convert per matmul (72 of them, ~70 us each on 2 cores). VCVTNE2PS2BF16 rounds
// to nearest even like ToBf16 (it reads denormal inputs as zero: below 1e-38, no matter for a product's sum).
std::vector<uint32_t> PackActivations(const float* x, int64_t m_dim, int64_t k_dim, int64_t m_blocks) {
  std::vector<uint32_t> out(k_dim / kBlockK * m_blocks * 256, 0);
  const __m512i pair_rows = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
  for (int64_t m = 0; m < m_dim; ++m)
    for (int64_t kb = 0; kb < k_dim / kBlockK; ++kb) {
      const float* row = x + m * k_dim + kb * kBlockK;
      uint32_t* tile = &out[(kb * m_blocks + m / 16) * 256 + m % 16];
#if defined(__AVX512BF16__)
      const __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 16), _mm512_loadu_ps(row));
      _mm512_i32scatter_epi32(tile, pair_rows, pairs, 4);
#else
      for (int64_t r = 0; r < 16; ++r) tile[r * 16] = ToBf16(row[2 * r]) | ToBf16(row[2 * r + 1]) << 16;
#endif
    }
  return out;
}

// out[i][m] (row stride m_blocks * 16 floats) = W[i] . x[m] for the 32 weight rows of block row `w` and activation
// rows in blocks mb (and mb + 1 if TWO) of 16. With `prefetch`, asks for the next 2 KB block one step ahead.
template <bool TWO>
inline void Tiles(const uint16_t* w, int64_t k_blocks, const uint32_t* xb, int64_t m_blocks, int64_t mb, float* out,
                  bool prefetch) {
  const int64_t ldo = m_blocks * 16;
  _tile_zero(0);
  _tile_zero(2);
  if (TWO) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    const uint16_t* a = w + kb * kBlockRows * kBlockK;
    if (prefetch)
      for (int l = 0; l < 32; ++l) _mm_prefetch(reinterpret_cast<const char*>(a) + 2048 + 64 * l, _MM_HINT_T0);
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 16 * kBlockK, 64);
    const uint32_t* b = xb + (kb * m_blocks + mb) * 256;
    _tile_loadd(6, b, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (TWO) {
      _tile_loadd(7, b + 256, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  float* o = out + mb * 16;
  _tile_stored(0, o, ldo * 4);
  _tile_stored(2, o + 16 * ldo, ldo * 4);
  if (TWO) {
    _tile_stored(1, o + 16, ldo * 4);
    _tile_stored(3, o + 16 + 16 * ldo, ldo * 4);
  }
}

// out[32][m_blocks * 16] for block row `w`; the weights come from memory once, later passes over m find them in L1.
inline void Block(const uint16_t* w, int64_t k_blocks, const uint32_t* xb, int64_t m_blocks, float* out) {
  int64_t mb = 0;
  for (; mb + 2 <= m_blocks; mb += 2) Tiles<true>(w, k_blocks, xb, m_blocks, mb, out, mb == 0);
  if (mb < m_blocks) Tiles<false>(w, k_blocks, xb, m_blocks, mb, out, mb == 0);
}

// y[m][n0 + i] = out[i][m] for i < 32, m < M. STREAM: non-temporal stores (y 64-byte aligned, N a multiple of 16),
// for the head's [M, 262144] logits: no read for ownership, and they do not evict the weights being streamed
// (a C++ harness at 32 rows: ~76% of read speed vs ~69% with plain stores, over 8 loaded samples). The caller
// fences (_mm_sfence) before the results are used.
template <bool STREAM>
inline void StoreTransposed(const float* out, int64_t m_dim, int64_t m_blocks, float* y, int64_t n0, int64_t n_dim) {
  const int64_t ldo = m_blocks * 16;
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(int(ldo)));
  for (int64_t m = 0; m < m_dim; ++m) {
    const __m512 lo = _mm512_i32gather_ps(rows, out + m, 4), hi = _mm512_i32gather_ps(rows, out + 16 * ldo + m, 4);
    float* dst = y + m * n_dim + n0;
    if (STREAM) {
      _mm512_stream_ps(dst, lo);
      _mm512_stream_ps(dst + 16, hi);
    } else {
      _mm512_storeu_ps(dst, lo);
      _mm512_storeu_ps(dst + 16, hi);
    }
  }
}

// exp(x) for x <= 0 (Cephes' expf polynomial, ~1 ulp); -inf and anything below -104 give 0.
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// Summaries of one vocabulary block whose logits are out[i][m], i < rows: per activation row, the max, the sum of
// exp(l - max) and of exp(l / T - max / T), written to column b of the [M, NB] outputs.
// Meanwhile the next block's weights (`next_bytes` at `next`) are prefetched into L2: this is compute, and without
// it memory would idle until the next block's tile loads (in a C++ harness: 55% -> 65% of read speed at 32 rows).
void Summarize(const float* out, int64_t rows, int64_t m_dim, int64_t m_blocks, float temperature, int64_t b,
               int64_t nb, float* block_max, float* block_sum, float* tempered_sum, const char* next,
               int64_t next_bytes) {
  const int64_t ldo = m_blocks * 16;
  const __m512 t = _mm512_set1_ps(temperature);
  const int64_t lines = next_bytes / 64, per_row = (lines + rows * m_blocks - 1) / (rows * m_blocks);
  int64_t issued = 0;
  for (int64_t g = 0; g < m_blocks; ++g) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < rows; ++i) mx = _mm512_max_ps(mx, _mm512_loadu_ps(out + i * ldo + g * 16));
    __m512 sum = _mm512_setzero_ps(), tsum = _mm512_setzero_ps();
    const __m512 tmx = _mm512_div_ps(mx, t);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t l = 0; l < per_row && issued < lines; ++l, ++issued)
        _mm_prefetch(next + 64 * issued, _MM_HINT_T1);
      const __m512 l = _mm512_loadu_ps(out + i * ldo + g * 16);
      sum = _mm512_add_ps(sum, Exp(_mm512_sub_ps(l, mx)));
      if (temperature != 1.f) tsum = _mm512_add_ps(tsum, Exp(_mm512_sub_ps(_mm512_div_ps(l, t), tmx)));
    }
    alignas(64) float lanes[3][16];
    _mm512_store_ps(lanes[0], mx);
    _mm512_store_ps(lanes[1], sum);
    _mm512_store_ps(lanes[2], temperature != 1.f ? tsum : sum);
    for (int64_t j = 0; j < 16 && g * 16 + j < m_dim; ++j) {
      const int64_t at = (g * 16 + j) * nb + b;
      block_max[at] = lanes[0][j];
      block_sum[at] = lanes[1][j];
      tempered_sum[at] = lanes[2][j];
    }
  }
}

struct Shapes {
  int64_t m_dim, k_dim, n_dim, k_blocks, m_blocks;
};

ffi::Error CheckShapes(const F32Matrix& x, const Bf16Tiles& w, const F32Matrix& y, Shapes& s) {
  const auto wd = w.dimensions();
  s = Shapes{x.dimensions()[0], x.dimensions()[1], wd[0] * kBlockRows, wd[1], (x.dimensions()[0] + 15) / 16};
  if (wd[2] != kBlockRows || wd[3] != kBlockK || wd[1] * kBlockK != s.k_dim)
    return ffi::Error::InvalidArgument("amx: w must be [N/32, K/32, 32, 32] for x [M, K]");
  if (y.dimensions()[0] != s.m_dim || y.dimensions()[1] != s.n_dim)
    return ffi::Error::InvalidArgument("amx: the output is not [M, N]");
  return ffi::Error::Success();
}

ffi::Error AmxMatmul(ffi::ThreadPool pool, F32Matrix x, Bf16Tiles w, ffi::Result<F32Matrix> y) {
  Shapes s;
  if (ffi::Error e = CheckShapes(x, w, *y, s); e.failure()) return e;
  const auto* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  const auto xb = PackActivations(x.typed_data(), s.m_dim, s.k_dim, s.m_blocks);
  float* yp = y->typed_data();
  ParallelFor(pool, s.n_dim / kBlockRows, 2, [&](int64_t lo, int64_t hi) {
    _tile_loadconfig(&kTileConfig);
    std::vector<float> out(kBlockRows * s.m_blocks * 16);
    for (int64_t nb = lo; nb < hi; ++nb) {
      Block(wp + nb * s.k_blocks * kBlockRows * kBlockK, s.k_blocks, xb.data(), s.m_blocks, out.data());
      StoreTransposed<false>(out.data(), s.m_dim, s.m_blocks, yp, nb * kBlockRows, s.n_dim);
    }
    _tile_release();
  });
  return ffi::Error::Success();
}

// The LM head: logits y = x @ w^T and, per block of kStatsBlock vocabulary entries, their softmax summaries (see
// strategies.Logits), computed while the block's logits are still in cache.
ffi::Error AmxHead(ffi::ThreadPool pool, F32Matrix x, Bf16Tiles w, float temperature, ffi::Result<F32Matrix> y,
                   ffi::Result<F32Matrix> block_max, ffi::Result<F32Matrix> block_sum,
                   ffi::Result<F32Matrix> tempered_sum) {
  Shapes s;
  if (ffi::Error e = CheckShapes(x, w, *y, s); e.failure()) return e;
  const int64_t nb = (s.n_dim + kStatsBlock - 1) / kStatsBlock;
  if (block_max->dimensions()[1] != nb || block_sum->dimensions()[1] != nb || tempered_sum->dimensions()[1] != nb)
    return ffi::Error::InvalidArgument("amx_head: summaries must be [M, ceil(N / 512)]");
  const auto* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  const auto xb = PackActivations(x.typed_data(), s.m_dim, s.k_dim, s.m_blocks);
  float* yp = y->typed_data();
  const bool stream = reinterpret_cast<uintptr_t>(yp) % 64 == 0 && s.n_dim % 16 == 0;
  ParallelFor(pool, nb, 1, [&](int64_t lo, int64_t hi) {
    _tile_loadconfig(&kTileConfig);
    const int64_t ldo = s.m_blocks * 16;
    std::vector<float> out(kStatsBlock * ldo);
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t n0 = b * kStatsBlock, rows = std::min(kStatsBlock, s.n_dim - n0);
      for (int64_t i = 0; i < rows; i += kBlockRows) {
        Block(wp + (n0 + i) * s.k_dim, s.k_blocks, xb.data(), s.m_blocks, out.data() + i * ldo);
        if (stream)
          StoreTransposed<true>(out.data() + i * ldo, s.m_dim, s.m_blocks, yp, n0 + i, s.n_dim);
        else
          StoreTransposed<false>(out.data() + i * ldo, s.m_dim, s.m_blocks, yp, n0 + i, s.n_dim);
      }
      const int64_t next_rows = b + 1 < hi ? std::min(kStatsBlock, s.n_dim - n0 - rows) : 0;
      Summarize(out.data(), rows, s.m_dim, s.m_blocks, temperature, b, nb, block_max->typed_data(),
                block_sum->typed_data(), tempered_sum->typed_data(),
                reinterpret_cast<const char*>(wp + (n0 + rows) * s.k_dim), next_rows * s.k_dim * 2);
    }
    _mm_sfence();  // the streamed logits are visible before ParallelFor reports this chunk done
    _tile_release();
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpctAmxMatmul, AmxMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Matrix>()
                                  .Arg<Bf16Tiles>()
                                  .Ret<F32Matrix>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpctAmxHead, AmxHead,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Matrix>()
                                  .Arg<Bf16Tiles>()
                                  .Attr<float>("temperature")
                                  .Ret<F32Matrix>()
                                  .Ret<F32Matrix>()
                                  .Ret<F32Matrix>()
                                  .Ret<F32Matrix>());
#endif  // SPCT_AMX

// 1 when this build has the AMX kernels and Linux granted this process the tile state (ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); 0 otherwise, and then SpctAmxMatmul / SpctAmxHead must not be called (nor exist).
extern "C" int SpctAmxAvailable() {
#if defined(SPCT_AMX)
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return 0;
#endif
}
