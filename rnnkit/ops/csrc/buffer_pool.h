// The buffers the kernels return (state histories, gate gradients, outputs) come from a pool that keeps
// the large ones after their tensors die and hands them out again, already paged in.
//
// Why: glibc serves an allocation above its mmap threshold (at most 32 MiB) with fresh pages from the
// kernel and returns them on free, so every training step pays a page fault and a zeroing per 4 KiB of
// each large buffer it makes. On the 2-core EPYC VM that is 25,000-83,000 faults and 12-15% of a config C
// training step (64 x 256, H=512: 195 -> 166 ms for the RNN with reuse). torch's CPU allocator has no cache.
//
// The rule: a request of at least kMinPooledBytes (1 MiB; smaller blocks stay in malloc's heap, which
// already reuses them) is rounded up to 64 KiB and served by the smallest cached block that holds it and
// is at most 1/4 larger; otherwise a new block is allocated. A freed block goes back to the cache; while
// the cache holds more than its limit (default 1 GiB, `buffer_pool_limit`), the least recently freed
// blocks go back to the system. The profiler sees every hand-out and return as an allocation and a free,
// so torch.profiler's memory columns count these tensors as they count any other.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace rnnkit::pool {

// at::empty(shape, options) for a CPU tensor, its storage from the pool when it is large enough.
at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options);

}  // namespace rnnkit::pool
