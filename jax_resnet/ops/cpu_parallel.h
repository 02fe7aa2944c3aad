// Threads, scratch memory and error handling shared by the project's CPU
// kernels.
//
// ParallelFor splits work between the calling thread and helpers on XLA's own
// intra-op thread pool (so nothing is oversubscribed): every thread claims
// work items from an atomic counter, and the caller waits only for items that
// were claimed, never for a helper that has not started, so two kernels
// running at once on a busy pool cannot deadlock.

#ifndef JAX_RESNET_CPU_PARALLEL_H_
#define JAX_RESNET_CPU_PARALLEL_H_

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jax_resnet {

using i64 = int64_t;

struct WorkQueue {
  std::atomic<i64> next{0};
  std::atomic<i64> done{0};
  i64 total = 0;
  std::function<void(int, i64)> body;  // Valid while done < total.
};

inline void Drain(WorkQueue& q, int slot) {
  i64 finished = 0;
  for (i64 i; (i = q.next.fetch_add(1, std::memory_order_relaxed)) < q.total;
       ++finished) {
    q.body(slot, i);
  }
  if (finished) q.done.fetch_add(finished, std::memory_order_release);
}

// Runs body(slot, i) for i in [0, total) on up to `threads` threads; slot is
// the thread's index in [0, threads), the caller's being 0.
template <typename F>
void ParallelFor(xla::ffi::ThreadPool& pool, int threads, i64 total,
                 F&& body) {
  if (total <= 0) return;
  threads = static_cast<int>(std::max<i64>(1, std::min<i64>(threads, total)));
  if (threads == 1) {
    for (i64 i = 0; i < total; ++i) body(0, i);
    return;
  }
  auto q = std::make_shared<WorkQueue>();
  q->total = total;
  q->body = [&body](int slot, i64 i) { body(slot, i); };
  for (int t = 1; t < threads; ++t) {
    pool.Schedule([q, t] { Drain(*q, t); });
  }
  Drain(*q, 0);
  for (int spins = 0; q->done.load(std::memory_order_acquire) < total;
       ++spins) {
    if (spins < 4096) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// Allocates on 64-byte boundaries: a kernel's operand rows then start on a
// cache line, however malloc happened to place the block. (Operands that
// straddle lines made whole runs up to a fifth slower, by the luck of one
// process's heap.)
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}  // NOLINT
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// A thread's scratch buffer `which` (0-2) of T, grown as needed and reused
// across calls; 64-byte aligned.
template <typename T = float>
T* Scratch(int which, i64 size) {
  thread_local AlignedVector<T> buffers[3];
  AlignedVector<T>& b = buffers[which];
  if (static_cast<i64>(b.size()) < size) b.resize(size);
  return b.data();
}

}  // namespace jax_resnet

// Returns from an FFI handler with the error of `expr`, if it failed.
#define JR_TRY(expr)                          \
  do {                                        \
    ::xla::ffi::Error jr_error = (expr);      \
    if (jr_error.failure()) return jr_error;  \
  } while (0)

#endif  // JAX_RESNET_CPU_PARALLEL_H_
