// AMX tiles for the loops' per-step products. Mainly the fused loop's products with bf16 operands and
// float32 accumulation, what it runs when it is handed W_hh in bf16 (rnnkit/engine/autocast.py does under
// bf16 autocast); tile_rows also serves lowp_loops.cpp's int8 products (TDPBUSD, exact integer sums).
//
// Definition, the same on every machine:
//   forward   h_{t-1} W_hh^T  ->  bf16(h_{t-1}) bf16(W_hh)^T
//   backward  dG_t W_hh       ->  bf16(dG_t) bf16(W_hh)
// with bf16() round-to-nearest-even and every product summed in float32 (a product of two bf16
// values is exact in float32: 8 + 8 significant bits). The state, the gates and dh stay float32.
// Three implementations, which differ only in the order of the float32 sums:
//   * AMX-BF16 tiles (TDPBF16PS) where the compiler targets them and Linux grants this process the
//     tile state: 16 x 32 tiles of the rounded operand times 32 x 16 tiles of W packed in pairs of k;
//   * else AVX512-BF16's VDPBF16PS (AMD Zen 4 and later, Intel Cooper Lake) over the same packed W: per
//     pair of k, a broadcast pair of the operand's bf16 values times 16 columns' pairs, into float32
//     registers (avx512_bf16_gemm below), twice the FLOPs of an FMA per instruction;
//   * elsewhere (or with RNNKIT_NO_AMX=1 set, which turns off both of the above): the operand rounded
//     and held in float32, times W rounded likewise, by the float32 register-blocked kernel of
//     loop_common.h.
// (VDPBF16PS and TDPBF16PS also read subnormal bf16 inputs as zero, which the portable path does not: the
// paths can differ there too, for values below 1.2e-38.)

#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RNNKIT_AMX 1
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define RNNKIT_AVX512_BF16 1
#endif

namespace rnnkit_bf16 {

// float32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 (c10::BFloat16's rule, so rounding here
// gives torch's bf16 bits).
inline __attribute__((always_inline)) uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : uint16_t(rounded);
}
inline __attribute__((always_inline)) float from_bf16(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline __attribute__((always_inline)) float round_bf16(float f) { return from_bf16(to_bf16(f)); }

// RNNKIT_NO_AMX set (to anything but "" or "0"): the portable float32 path, for the tests that compare the paths.
inline bool hardware_switched_off() {
  const char* off = std::getenv("RNNKIT_NO_AMX");
  return !(off == nullptr || off[0] == '\0' || (off[0] == '0' && off[1] == '\0'));
}
// Whether this call may use the AMX tiles: compiled for them, the kernel granted the tile state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process), and RNNKIT_NO_AMX unset.
inline bool amx_enabled() {
#ifdef RNNKIT_AMX
  static const bool granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  return granted && !hardware_switched_off();
#else
  return false;
#endif
}
// Whether the per-step bf16 products run on hardware bf16 dot products over TilePanels: AMX tiles where
// amx_enabled(), else AVX512-BF16 where the compiler targets it (the build is -march=native).
inline bool bf16_dot_enabled() {
#ifdef RNNKIT_AVX512_BF16
  if (!hardware_switched_off()) return true;
#endif
  return amx_enabled();
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Columns [c0, c1) (widths multiples of 16) of a K x M matrix B, element (k, c) at
// base[k * row_stride + c * col_stride], packed as AMX B tiles: per 16-column block, per chunk of 32 k,
// 16 rows (pairs of k) of 16 columns x 2 bf16 = 1 KB; k past K is zero.
struct TilePanels {
  struct Block {
    int64_t column, offset;
  };
  int64_t chunks = 0;
  std::vector<Block> blocks;
  std::vector<uint16_t> data;

  TilePanels(const float* base, int64_t row_stride, int64_t col_stride, int64_t K, const std::vector<std::pair<int64_t, int64_t>>& ranges)
      : chunks(round_up(K, 32) / 32) {
    for (const auto& [c0, c1] : ranges)
      for (int64_t c = c0; c < c1; c += 16) blocks.push_back({c, static_cast<int64_t>(blocks.size()) * chunks * 512});
    data.assign(blocks.size() * chunks * 512, 0);
    for (const auto& block : blocks)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < 16; ++j)
          data[block.offset + (k / 32) * 512 + ((k % 32) / 2) * 32 + 2 * j + (k % 2)] = to_bf16(base[k * row_stride + (block.column + j) * col_stride]);
  }
  TilePanels() = default;
};

#ifdef RNNKIT_AMX
// Tiles 0-3 accumulate C (2 x 2 blocks of 16 x 16 float32), 4-5 hold A, 6-7 hold B; all 16 rows x 64 bytes.
// A no-op where the tiles are not in use (the AVX512-BF16 path runs under one too).
struct TileScope {
  const bool active = amx_enabled();
  TileScope() {
    if (!active) return;
    alignas(64) uint8_t config[64] = {};
    config[0] = 1;  // palette 1
    for (int t = 0; t < 8; ++t) {
      config[16 + 2 * t] = 64;  // bytes per row
      config[48 + t] = 16;      // rows
    }
    _tile_loadconfig(config);
  }
  ~TileScope() {
    if (active) _tile_release();
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// The products a tile block can run: TDPBF16PS (bf16 pairs into float32) or, with AMX-INT8, TDPBUSD
// (unsigned x signed bytes, in fours, into int32; lowp_loops.cpp's int8 recurrence).
enum class Dot { kBf16, kInt8 };

// C (1-2 x 1-2 tiles of 16 x 16) = sum over `chunks` of A's 16 x 64-byte tiles times B's 1 KB tiles.
// Strides and offsets are in bytes: A rows a_stride apart (a chunk 64 bytes on), B tiles 1 KB on per chunk.
template <Dot kDot, bool kTwoRows, bool kTwoCols>
inline void tile_block(const uint8_t* A, int64_t a_stride, const uint8_t* B0, const uint8_t* B1, int64_t chunks, uint8_t* C0, uint8_t* C1,
                       int64_t c_stride) {
  _tile_zero(0);
  if constexpr (kTwoCols) _tile_zero(1);
  if constexpr (kTwoRows) _tile_zero(2);
  if constexpr (kTwoRows && kTwoCols) _tile_zero(3);
  for (int64_t kc = 0; kc < chunks; ++kc) {
    _tile_loadd(4, A + kc * 64, a_stride);
    _tile_loadd(6, B0 + kc * 1024, 64);
    if constexpr (kTwoCols) _tile_loadd(7, B1 + kc * 1024, 64);
    if constexpr (kTwoRows) _tile_loadd(5, A + 16 * a_stride + kc * 64, a_stride);
    if constexpr (kDot == Dot::kBf16) {
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (kTwoCols) _tile_dpbf16ps(1, 4, 7);
      if constexpr (kTwoRows) _tile_dpbf16ps(2, 5, 6);
      if constexpr (kTwoRows && kTwoCols) _tile_dpbf16ps(3, 5, 7);
    } else {
#ifdef __AMX_INT8__
      _tile_dpbusd(0, 4, 6);
      if constexpr (kTwoCols) _tile_dpbusd(1, 4, 7);
      if constexpr (kTwoRows) _tile_dpbusd(2, 5, 6);
      if constexpr (kTwoRows && kTwoCols) _tile_dpbusd(3, 5, 7);
#endif
    }
  }
  _tile_stored(0, C0, c_stride);
  if constexpr (kTwoCols) _tile_stored(1, C1, c_stride);
  if constexpr (kTwoRows) _tile_stored(2, C0 + 16 * c_stride, c_stride);
  if constexpr (kTwoRows && kTwoCols) _tile_stored(3, C1 + 16 * c_stride, c_stride);
}

// Every 16-row tile of A (row_tiles of them, a_stride bytes a row) times every column block of B: block i's tiles start at
// B + block_offset(i) bytes and land at C + column(i) * 4 bytes (C rows c_stride bytes apart). Needs a TileScope.
template <Dot kDot, typename Offset, typename Column>
inline void tile_rows(const uint8_t* A, int64_t a_stride, int64_t row_tiles, const uint8_t* B, int64_t count, const Offset& block_offset,
                      const Column& column, int64_t chunks, uint8_t* C, int64_t c_stride) {
  for (int64_t i = 0; i < count; i += 2) {
    const bool two_cols = i + 1 < count;
    const uint8_t* B0 = B + block_offset(i);
    const uint8_t* B1 = two_cols ? B + block_offset(i + 1) : nullptr;
    for (int64_t r = 0; r < row_tiles; r += 2) {
      const uint8_t* a = A + r * 16 * a_stride;
      uint8_t* C0 = C + r * 16 * c_stride + column(i) * 4;
      uint8_t* C1 = two_cols ? C + r * 16 * c_stride + column(i + 1) * 4 : nullptr;
      if (r + 1 < row_tiles && two_cols)
        tile_block<kDot, true, true>(a, a_stride, B0, B1, chunks, C0, C1, c_stride);
      else if (r + 1 < row_tiles)
        tile_block<kDot, true, false>(a, a_stride, B0, nullptr, chunks, C0, nullptr, c_stride);
      else if (two_cols)
        tile_block<kDot, false, true>(a, a_stride, B0, B1, chunks, C0, C1, c_stride);
      else
        tile_block<kDot, false, false>(a, a_stride, B0, nullptr, chunks, C0, nullptr, c_stride);
    }
  }
}

inline void amx_gemm(const uint16_t* A, int64_t lda, int64_t rows, const TilePanels& B, float* C, int64_t ldc) {
  tile_rows<Dot::kBf16>(
      reinterpret_cast<const uint8_t*>(A), lda * 2, round_up(rows, 16) / 16, reinterpret_cast<const uint8_t*>(B.data.data()),
      static_cast<int64_t>(B.blocks.size()), [&](int64_t i) { return B.blocks[i].offset * 2; }, [&](int64_t i) { return B.blocks[i].column; },
      B.chunks, reinterpret_cast<uint8_t*>(C), ldc * 4);
}
#else
struct TileScope {};
#endif

#ifdef RNNKIT_AVX512_BF16
// C[r0 : r0 + kRows, the columns of kBlocks blocks] = A's rows . B's blocks, in float32 registers: per pair of k,
// one load of each block's 16 column pairs and one broadcast of each row's pair (A's values k and k+1).
template <int kRows, int kBlocks>
inline void dot_block(const uint16_t* A, int64_t lda, const uint16_t* const* B, int64_t pairs, float* const* C, int64_t ldc) {
  __m512 acc[kRows][kBlocks];
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i w[kBlocks];
    for (int b = 0; b < kBlocks; ++b) w[b] = _mm512_loadu_si512(B[b] + p * 32);
    for (int r = 0; r < kRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * p, sizeof pair);
      const __m512i a = _mm512_set1_epi32(pair);
      for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], (__m512bh)a, (__m512bh)w[b]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < kBlocks; ++b) _mm512_storeu_ps(C[b] + r * ldc, acc[r][b]);
}

template <int kBlocks>
inline void dot_rows(const uint16_t* A, int64_t lda, int64_t rows, const uint16_t* const* B, int64_t pairs, float* const* C, int64_t ldc) {
  float* c[kBlocks];
  int64_t r = 0;
  const auto at = [&](int64_t row) {
    for (int b = 0; b < kBlocks; ++b) c[b] = C[b] + row * ldc;
    return A + row * lda;
  };
  for (; r + 8 <= rows; r += 8) dot_block<8, kBlocks>(at(r), lda, B, pairs, c, ldc);
  for (; r + 4 <= rows; r += 4) dot_block<4, kBlocks>(at(r), lda, B, pairs, c, ldc);
  for (; r < rows; ++r) dot_block<1, kBlocks>(at(r), lda, B, pairs, c, ldc);
}

template <int kBlocks>
inline void dot_blocks(const uint16_t* A, int64_t lda, int64_t rows, const TilePanels& B, int64_t i, float* C, int64_t ldc) {
  const uint16_t* b[kBlocks];
  float* c[kBlocks];
  for (int j = 0; j < kBlocks; ++j) b[j] = B.data.data() + B.blocks[i + j].offset, c[j] = C + B.blocks[i + j].column;
  dot_rows<kBlocks>(A, lda, rows, b, B.chunks * 16, c, ldc);
}

// C[:rows, block columns] = A[:rows, :32 chunks] . B with VDPBF16PS: two column blocks at a time (8 x 2 accumulators),
// or, below 4 rows, eight or four (a batch of one has too few rows to keep the dot products' latency covered).
inline void avx512_bf16_gemm(const uint16_t* A, int64_t lda, int64_t rows, const TilePanels& B, float* C, int64_t ldc) {
  const int64_t count = static_cast<int64_t>(B.blocks.size());
  int64_t i = 0;
  if (rows < 4) {
    for (; i + 8 <= count; i += 8) dot_blocks<8>(A, lda, rows, B, i, C, ldc);
    for (; i + 4 <= count; i += 4) dot_blocks<4>(A, lda, rows, B, i, C, ldc);
  }
  for (; i + 2 <= count; i += 2) dot_blocks<2>(A, lda, rows, B, i, C, ldc);
  for (; i < count; ++i) dot_blocks<1>(A, lda, rows, B, i, C, ldc);
}
#endif

// C[:rows, block columns] = A[:rows, :32 chunks] . B, overwriting C (ldc floats a row), on AMX tiles (`amx`, which
// the caller took from amx_enabled() once) or with AVX512-BF16. A is bf16 with lda elements a row, zero past K. On
// AMX, A and C need their rows up to a multiple of 16 (zero in A), and a TileScope must be open. Called only where
// bf16_dot_enabled(), so one of the two is compiled in.
inline void tile_gemm(const uint16_t* A, int64_t lda, int64_t rows, const TilePanels& B, float* C, int64_t ldc, bool amx) {
#ifdef RNNKIT_AMX
  if (amx) return amx_gemm(A, lda, rows, B, C, ldc);
#endif
#ifdef RNNKIT_AVX512_BF16
  avx512_bf16_gemm(A, lda, rows, B, C, ldc);
#endif
}

}  // namespace rnnkit_bf16
