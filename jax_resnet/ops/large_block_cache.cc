// Keeps the pages of large heap blocks between a process's allocations.
//
// XLA:CPU allocates each step's temporaries as one large block (hundreds of
// MB to GBs) and frees it when the step ends. glibc's malloc serves every
// block of 32 MB or more with a fresh mmap and unmaps it on free, so each step
// makes the kernel zero the whole buffer again on first touch: at ResNet-110
// that is a fifth of the step's cycles. This library, preloaded into the
// process (LD_PRELOAD, set by jax_resnet.runtime), serves blocks of
// kMinBytes or more from one reserved address range instead, first fit at the
// lowest address, and keeps a freed block's pages for the next allocation
// while the free pages it keeps stay under a cap (a quarter of physical
// memory). Everything smaller, and everything once the reserved range or the
// block table is full, goes to glibc as before.
//
// Memory handed out is never zeroed (malloc's contract); calloc is glibc's.
// The range is reserved PROT_NONE and made writable block by block, so the
// kernel's overcommit accounting sees only what is in use.

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern "C" {
void* __libc_malloc(size_t size);
void __libc_free(void* ptr);
void* __libc_realloc(void* ptr, size_t size);
void* __libc_memalign(size_t alignment, size_t size);
size_t malloc_usable_size(void* ptr);
}

namespace {

constexpr size_t kMinBytes = size_t{32} << 20;  // glibc's largest mmap threshold
constexpr size_t kGranule = size_t{2} << 20;    // a huge page
constexpr int kMaxBlocks = 1024;

// The reserved range is [base, base + reserved); blocks tile [base, base + top)
// in address order.
struct Block {
  size_t offset;
  size_t size;
  bool free;
  bool resident;  // free and its pages kept
};

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
// Set once, under the lock, before any block is handed out; read without it.
char* base = nullptr;
size_t reserved = 0;
size_t top = 0;
size_t resident_free = 0;  // bytes of free blocks whose pages are kept
size_t resident_cap = 0;
Block blocks[kMaxBlocks];
int num_blocks = 0;
bool reserve_failed = false;
size_t (*libc_usable_size)(void*) = nullptr;

void Lock() { pthread_mutex_lock(&lock); }
void Unlock() { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) void Init() {
  libc_usable_size = reinterpret_cast<size_t (*)(void*)>(
      dlsym(RTLD_NEXT, "malloc_usable_size"));
  // A child forked while another thread held the lock would wait forever.
  pthread_atfork(Lock, Unlock, Unlock);
}

size_t RoundUp(size_t n, size_t m) { return (n + m - 1) / m * m; }

bool Reserve() {
  if (base || reserve_failed) return base != nullptr;
  const size_t ram = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) *
                     static_cast<size_t>(sysconf(_SC_PAGESIZE));
  resident_cap = ram / 4;
  const size_t want = RoundUp(ram * 2, kGranule);
  // Over-reserve by a granule so the range can start on a huge page.
  void* p = mmap(nullptr, want + kGranule, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    reserve_failed = true;
    return false;
  }
  reserved = want;
  __atomic_store_n(&base,
                   reinterpret_cast<char*>(
                       RoundUp(reinterpret_cast<uintptr_t>(p), kGranule)),
                   __ATOMIC_RELEASE);
  return true;
}

bool Ours(const void* ptr) {
  const char* b = __atomic_load_n(&base, __ATOMIC_ACQUIRE);
  return b && static_cast<const char*>(ptr) >= b &&
         static_cast<size_t>(static_cast<const char*>(ptr) - b) < reserved;
}

int Find(size_t offset) {  // the block starting at offset
  int lo = 0, hi = num_blocks - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (blocks[mid].offset == offset) return mid;
    if (blocks[mid].offset < offset) lo = mid + 1; else hi = mid - 1;
  }
  return -1;
}

void Insert(int at, const Block& b) {
  memmove(&blocks[at + 1], &blocks[at], (num_blocks - at) * sizeof(Block));
  blocks[at] = b;
  ++num_blocks;
}

void Erase(int at) {
  memmove(&blocks[at], &blocks[at + 1], (num_blocks - at - 1) * sizeof(Block));
  --num_blocks;
}

void Release(Block& b) {  // drops a free block's pages
  if (!b.resident) return;
  madvise(base + b.offset, b.size, MADV_DONTNEED);
  resident_free -= b.size;
  b.resident = false;
}

// Merges free blocks i and i + 1; a kept and a dropped one make a dropped one.
void Merge(int i) {
  Block& a = blocks[i];
  Block& b = blocks[i + 1];
  if (a.resident != b.resident) {
    Release(a);
    Release(b);
  }
  a.size += b.size;
  Erase(i + 1);
}

// A block of `size` bytes (a multiple of kGranule), or nullptr.
void* Take(size_t size) {
  if (!Reserve()) return nullptr;
  for (int i = 0; i < num_blocks; ++i) {
    Block& b = blocks[i];
    if (!b.free || b.size < size) continue;
    if (b.size > size) {
      if (num_blocks == kMaxBlocks) return nullptr;
      Block rest{b.offset + size, b.size - size, true, b.resident};
      Insert(i + 1, rest);
      blocks[i].size = size;
    }
    Block& t = blocks[i];
    t.free = false;
    if (t.resident) resident_free -= t.size;
    t.resident = false;
    return base + t.offset;
  }
  if (top + size > reserved || num_blocks == kMaxBlocks) return nullptr;
  char* p = base + top;
  if (mprotect(p, size, PROT_READ | PROT_WRITE)) return nullptr;
  madvise(p, size, MADV_HUGEPAGE);
  blocks[num_blocks++] = Block{top, size, false, false};
  top += size;
  return p;
}

void Give(void* ptr) {
  const int i = Find(static_cast<char*>(ptr) - base);
  if (i < 0 || blocks[i].free) {  // as glibc does
    static const char msg[] =
        "large_block_cache: free(): invalid pointer or double free\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    abort();
  }
  Block& b = blocks[i];
  b.free = true;
  if (resident_free + b.size <= resident_cap) {
    b.resident = true;
    resident_free += b.size;
  } else {
    madvise(base + b.offset, b.size, MADV_DONTNEED);
    b.resident = false;
  }
  int at = i;
  if (at + 1 < num_blocks && blocks[at + 1].free) Merge(at);
  if (at > 0 && blocks[at - 1].free) Merge(--at);
}

size_t BlockSize(const void* ptr) {
  const int i = Find(static_cast<const char*>(ptr) - base);
  return i < 0 ? 0 : blocks[i].size;
}

void* Large(size_t size) {
  if (size > (SIZE_MAX >> 1)) return nullptr;  // rounding up would wrap
  Lock();
  void* p = Take(RoundUp(size, kGranule));
  Unlock();
  return p;
}

size_t LockedBlockSize(const void* ptr) {
  Lock();
  const size_t n = BlockSize(ptr);
  Unlock();
  return n;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* malloc(size_t size) {
  if (size >= kMinBytes) {
    if (void* p = Large(size)) return p;
  }
  return __libc_malloc(size);
}

__attribute__((visibility("default"))) void free(void* ptr) {
  if (Ours(ptr)) {
    Lock();
    Give(ptr);
    Unlock();
    return;
  }
  __libc_free(ptr);
}

__attribute__((visibility("default"))) void* realloc(void* ptr, size_t size) {
  if (!Ours(ptr)) return __libc_realloc(ptr, size);  // stays glibc's
  if (size == 0) {
    free(ptr);
    return nullptr;
  }
  const size_t have = LockedBlockSize(ptr);
  if (size <= have) return ptr;
  void* q = malloc(size);
  if (!q) return nullptr;
  memcpy(q, ptr, have);
  free(ptr);
  return q;
}

__attribute__((visibility("default"))) int posix_memalign(void** out,
                                                          size_t alignment,
                                                          size_t size) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)))
    return EINVAL;
  if (size >= kMinBytes && alignment <= kGranule) {
    if (void* p = Large(size)) {
      *out = p;
      return 0;
    }
  }
  void* p = __libc_memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

__attribute__((visibility("default"))) void* aligned_alloc(size_t alignment,
                                                          size_t size) {
  if (size >= kMinBytes && alignment <= kGranule) {
    if (void* p = Large(size)) return p;
  }
  return __libc_memalign(alignment, size);
}

__attribute__((visibility("default"))) void* memalign(size_t alignment,
                                                     size_t size) {
  return aligned_alloc(alignment, size);
}

__attribute__((visibility("default"))) size_t malloc_usable_size(void* ptr) {
  return Ours(ptr) ? LockedBlockSize(ptr) : libc_usable_size(ptr);
}

__attribute__((visibility("default"))) void* reallocarray(void* ptr,
                                                         size_t count,
                                                         size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(count, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(ptr, bytes);
}

}  // extern "C"
