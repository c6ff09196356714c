// The pool of large kernel buffers (buffer_pool.h says why and what the rule is), and its ops: pooled_empty
// (torch.empty from the pool, for a large buffer that Python code fills with out= products),
// buffer_pool_limit (read or set how much freed memory it may keep), buffer_pool_stats, and
// buffer_pool_debug (tests: pool every request down to min_bytes, and poison: fill every buffer it
// hands out with 0xFF bytes, a NaN in every float type, so that a kernel that reads an element before
// writing it cannot pass by reading zeros; RNNKIT_BUFFER_POOL_POISON=1 does both, from 1 byte, for a
// whole process).

#include "buffer_pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <ATen/Context.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <pthread.h>
#include <optional>
#include <string>

namespace rnnkit::pool {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;
constexpr size_t kGranule = size_t(64) << 10;
constexpr int64_t kDefaultLimitBytes = int64_t(1) << 30;
constexpr char kLimitEnv[] = "RNNKIT_BUFFER_POOL_MB", kPoisonEnv[] = "RNNKIT_BUFFER_POOL_POISON";

struct Block {
  void* data;
  size_t capacity;
  size_t bytes;  // what the tensor asked for: the profiler's count
};

class Pool final : public c10::Allocator {
 public:
  Pool() {
    if (const char* mb = std::getenv(kLimitEnv); mb != nullptr && *mb != '\0') {
      char* end = nullptr;
      const long long value = std::strtoll(mb, &end, 10);
      TORCH_CHECK(*end == '\0' && value >= 0 && value <= (1LL << 40), kLimitEnv, " must be a whole number of MiB from 0 to 2^40, got '", mb, "'");
      limit_ = static_cast<int64_t>(value) << 20;
    }
    const char* poison = std::getenv(kPoisonEnv);
    poison_ = poison != nullptr && std::string(poison) != "" && std::string(poison) != "0";
    if (poison_) min_bytes_ = 1;
    // A child forked while another thread held the lock would wait on it forever.
    pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex(); });
  }

  c10::DataPtr allocate(size_t bytes) override {
    // A pooled tensor's storage keeps this allocator: a resize to a small size is malloc's business again.
    if (bytes < min_bytes()) return c10::GetDefaultCPUAllocator()->allocate(bytes);
    const size_t capacity = (bytes + kGranule - 1) / kGranule * kGranule;
    Block* block = nullptr;
    bool poison = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = cached_.end();
      for (auto it = cached_.begin(); it != cached_.end(); ++it)
        if ((*it)->capacity >= capacity && (*it)->capacity <= capacity + capacity / 4 &&
            (best == cached_.end() || (*it)->capacity < (*best)->capacity))
          best = it;
      if (best != cached_.end()) {
        block = *best;
        cached_.erase(best);
        cached_bytes_ -= block->capacity;
        ++hits_;
      } else {
        ++misses_;
      }
      poison = poison_;
    }
    if (block == nullptr) block = new Block{system_alloc(capacity), capacity, 0};
    block->bytes = bytes;  // out of the cache, the block is this call's alone
    live_bytes_ += bytes;
    if (poison) std::memset(block->data, 0xFF, bytes);
    c10::profiledCPUMemoryReporter().New(block->data, bytes);  // what the default CPU allocator reports, in its count
    return {block->data, block, &Pool::release, c10::Device(c10::DeviceType::CPU)};
  }

  static void release(void* context) { instance().give_back(static_cast<Block*>(context)); }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  int64_t limit(std::optional<int64_t> new_limit) {
    std::vector<Block*> evicted;
    int64_t limit;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (new_limit.has_value()) {
        TORCH_CHECK(*new_limit >= 0, "buffer_pool_limit: limit_bytes must be >= 0 (0 keeps nothing), got ", *new_limit);
        limit_ = *new_limit;
        evict_over_limit(evicted);
      }
      limit = limit_;
    }
    free_blocks(evicted);
    return limit;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_bytes_), static_cast<int64_t>(cached_.size()), static_cast<int64_t>(live_bytes_), hits_, misses_, limit_,
            poison_ ? 1 : 0, static_cast<int64_t>(min_bytes())};
  }

  void debug(bool poison, int64_t min_bytes) {
    TORCH_CHECK(min_bytes >= 1, "buffer_pool_debug: min_bytes must be >= 1, got ", min_bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    poison_ = poison;
    min_bytes_ = static_cast<size_t>(min_bytes);
  }

  size_t min_bytes() const { return min_bytes_.load(std::memory_order_relaxed); }

  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: tensors may outlive static destruction at exit
    return *pool;
  }

 private:
  void give_back(Block* block) {
    std::vector<Block*> evicted;
    c10::profiledCPUMemoryReporter().Delete(block->data);
    live_bytes_ -= block->bytes;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cached_.push_back(block);
      cached_bytes_ += block->capacity;
      evict_over_limit(evicted);
    }
    free_blocks(evicted);
  }

  // The least recently freed first; called with the mutex held, frees after it is released.
  void evict_over_limit(std::vector<Block*>& evicted) {
    while (!cached_.empty() && static_cast<int64_t>(cached_bytes_) > limit_) {
      evicted.push_back(cached_.front());
      cached_bytes_ -= cached_.front()->capacity;
      cached_.pop_front();
    }
  }

  // Out of memory with blocks cached: give them all back and try once more.
  void* system_alloc(size_t capacity) {
    try {
      return c10::alloc_cpu(capacity);
    } catch (const c10::Error&) {
      std::vector<Block*> evicted;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        evicted.assign(cached_.begin(), cached_.end());
        cached_.clear();
        cached_bytes_ = 0;
      }
      if (evicted.empty()) throw;
      free_blocks(evicted);
      return c10::alloc_cpu(capacity);
    }
  }

  static void free_blocks(const std::vector<Block*>& blocks) {
    for (Block* block : blocks) {
      c10::free_cpu(block->data);
      delete block;
    }
  }

  std::mutex mutex_;
  std::list<Block*> cached_;  // in the order they were freed
  size_t cached_bytes_ = 0;
  std::atomic<size_t> live_bytes_{0};
  int64_t hits_ = 0, misses_ = 0, limit_ = kDefaultLimitBytes;
  bool poison_ = false;
  std::atomic<size_t> min_bytes_{kMinPooledBytes};
};

int64_t buffer_pool_limit(std::optional<int64_t> limit_bytes) { return Pool::instance().limit(limit_bytes); }
std::vector<int64_t> buffer_pool_stats() { return Pool::instance().stats(); }
at::Tensor pooled_empty(at::IntArrayRef size, at::ScalarType dtype) { return empty(size, at::TensorOptions().dtype(dtype)); }
void buffer_pool_debug(bool poison, int64_t min_bytes) { Pool::instance().debug(poison, min_bytes); }

}  // namespace

at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(shape) * options.dtype().itemsize();
  // torch.use_deterministic_algorithms fills new memory with NaN (at::empty does); reused memory would hold stale values.
  const bool deterministic_fill = at::globalContext().deterministicAlgorithms() && at::globalContext().deterministicFillUninitializedMemory();
  if (deterministic_fill || bytes < Pool::instance().min_bytes() || !options.device().is_cpu() || options.requires_grad()) return at::empty(shape, options);
  return at::Tensor(at::detail::empty_generic(shape, &Pool::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              c10::typeMetaToScalarType(options.dtype()), std::nullopt));
}

}  // namespace rnnkit::pool

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("buffer_pool_limit(int? limit_bytes=None) -> int");
  m.def("buffer_pool_stats() -> int[]");
  m.def("buffer_pool_debug(bool poison, int min_bytes) -> ()");
  m.def("pooled_empty(int[] size, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CompositeExplicitAutograd, m) {
  m.impl("buffer_pool_limit", &rnnkit::pool::buffer_pool_limit);
  m.impl("buffer_pool_stats", &rnnkit::pool::buffer_pool_stats);
  m.impl("buffer_pool_debug", &rnnkit::pool::buffer_pool_debug);
  m.impl("pooled_empty", &rnnkit::pool::pooled_empty);
}
