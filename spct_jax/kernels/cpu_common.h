// What the CPU decoding kernels share: buffer aliases and the split of work over XLA's intra-op thread pool.

#ifndef SPCT_JAX_KERNELS_CPU_COMMON_H_
#define SPCT_JAX_KERNELS_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
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
// whole call back. And the caller never waits for a helper that has not started by the time the chunks are gone
// (a pool thread can take ~50-200 us to wake on a loaded machine, longer than a small decode matmul): such a
// helper finds the call closed and returns without touching it.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t grain, Body body) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(8 * threads, n / std::max<int64_t>(1, grain)));
  if (chunks == 1 || threads == 1) {
    body(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, active{0};
    std::atomic<bool> closed{false};
  };
  auto state = std::make_shared<State>();  // outlives the call for helpers that start after it returned
  const int64_t step = (n + chunks - 1) / chunks;
  auto work = [&body, n, chunks, step](State& st) {
    for (int64_t c = st.next.fetch_add(1); c < chunks; c = st.next.fetch_add(1))
      body(std::min(n, c * step), std::min(n, (c + 1) * step));
  };
  for (int64_t h = 0, helpers = std::min(threads, chunks) - 1; h < helpers; ++h)
    pool.Schedule([state, &work] {
      state->active.fetch_add(1);
      if (!state->closed.load()) work(*state);  // not closed: the caller waits for `active` before returning
      state->active.fetch_sub(1);
    });
  work(*state);
  state->closed.store(true);
  while (state->active.load() > 0) std::this_thread::yield();
}

}  // namespace spct

#endif  // SPCT_JAX_KERNELS_CPU_COMMON_H_
