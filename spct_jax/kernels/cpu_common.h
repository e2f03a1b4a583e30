// What the CPU decoding kernels share: buffer aliases and the split of work over XLA's intra-op thread pool.

#ifndef SPCT_JAX_KERNELS_CPU_COMMON_H_
#define SPCT_JAX_KERNELS_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace spct {

namespace ffi = xla::ffi;

// Aliases: the handler macros split template arguments at commas.
using Bf16Vector = ffi::Buffer<ffi::BF16, 1>;
using Bf16Matrix = ffi::Buffer<ffi::BF16, 2>;
using Bf16Tiles = ffi::Buffer<ffi::BF16, 4>;
using F32Vector = ffi::Buffer<ffi::F32, 1>;
using F32Matrix = ffi::Buffer<ffi::F32, 2>;

// Runs body(lo, hi) over [0, n) in contiguous chunks of at least `grain`, on the calling thread and XLA's intra-op
// pool, and waits for all of them. Chunks are taken from a shared counter (8 per thread): on a machine shared with
// other processes, a thread that loses its core leaves its remaining chunks to the others instead of holding the
// whole call back.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t grain, Body body) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(8 * threads, n / std::max<int64_t>(1, grain)));
  if (chunks == 1 || threads == 1) {
    body(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      body(std::min(n, c * step), std::min(n, (c + 1) * step));
  };
  const int64_t helpers = std::min(threads, chunks) - 1;
  std::atomic<int64_t> pending{helpers};
  for (int64_t h = 0; h < helpers; ++h)
    pool.Schedule([&] {
      work();
      pending.fetch_sub(1, std::memory_order_release);
    });
  work();
  while (pending.load(std::memory_order_acquire) > 0) std::this_thread::yield();
}

}  // namespace spct

#endif  // SPCT_JAX_KERNELS_CPU_COMMON_H_
