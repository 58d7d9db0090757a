// treegate/kernels/x86/stream_plan.hpp — the address arithmetic the avx2 and avx512 kernels share.
// Which lines to prefetch next in a path's block stream and which GEMM panel to pack next; no intrinsics.
#ifndef TREEGATE_KERNELS_X86_STREAM_PLAN_HPP
#define TREEGATE_KERNELS_X86_STREAM_PLAN_HPP

#include "../../config.hpp"

#include <cstdint>

namespace treegate::kernels::detail {

/// How many blocks of a path the path-sum kernels read side by side, panel by panel. Two bf16
/// streams keep more lines in flight than one: measured on a Sapphire Rapids VM (one thread,
/// 9 blocks of 512 x 512 per call), the avx512 kernel 5 % and the avx2 kernel 10-13 % faster
/// on the tree's mixed L3/DRAM blocks and on DRAM-resident ones, the same from L3 or L2; float
/// weights gained nothing (within 2 %) and keep one stream. So for bf16 weights the additions
/// into y run in another order than for float weights (block pairs, column panel by panel).
template <class T>
inline constexpr int path_streams = sizeof(T) == 2 ? 2 : 1;

/// Where the prefetch stream of the panel at column c of blocks[k] starts: `dist` bytes ahead of
/// the panel in the concatenation of the blocks its stream reads (blocks k, k + streams,
/// k + 2 streams, ... when the kernel reads `streams` blocks side by side; each rows x cols,
/// ld = rows), so near a block's end it runs into the stream's next block (its start, when
/// `dist` exceeds a block); past the stream's last block it repeats this block's start (a
/// harmless hint; the address stays inside a block). Kept an integer so that no out-of-range
/// pointer is ever formed.
template <class T>
inline std::uintptr_t path_prefetch_address(const T* const* blocks, int k, int count, index_t c, index_t rows,
                                            index_t cols, index_t dist, int streams = 1) noexcept {
    const index_t block_bytes = rows * cols * static_cast<index_t>(sizeof(T));
    const auto here = reinterpret_cast<std::uintptr_t>(blocks[k]);
    const index_t start = c * rows * static_cast<index_t>(sizeof(T)) + dist;
    if (start < block_bytes) return here + static_cast<std::uintptr_t>(start);
    if (k + streams < count) {
        const auto next = reinterpret_cast<std::uintptr_t>(blocks[k + streams]);
        return start - block_bytes < block_bytes ? next + static_cast<std::uintptr_t>(start - block_bytes) : next;
    }
    return here;
}

/// The address of a second, farther prefetch stream: path_prefetch_address's, except 0 (no
/// prefetch) once `dist` runs past the stream's last block, so that the last `dist` bytes of a
/// path do not request its start again (measured: with those repeats, a single bf16 block
/// from memory was slower than with no far stream at all).
template <class T>
inline std::uintptr_t path_far_address(const T* const* blocks, int k, int count, index_t c, index_t rows, index_t cols,
                                       index_t dist, int streams = 1) noexcept {
    const index_t block_bytes = rows * cols * static_cast<index_t>(sizeof(T));
    if (c * rows * static_cast<index_t>(sizeof(T)) + dist >= block_bytes && k + streams >= count) return 0;
    return path_prefetch_address(blocks, k, count, c, rows, cols, dist, streams);
}

/// The panel a packed GEMM packs after W(r0 : r0 + mr_max, k0 : k0 + kc): the next mr_max rows of
/// this k-block, else the first rows of the next k-block (at most kc_max columns), else none
/// (cols = 0). Its lines are prefetched while the current panel is multiplied (panel_prefetch).
struct next_panel {
    std::uintptr_t address = 0;
    index_t cols = 0;
};

template <class T>
inline next_panel next_panel_after(const T* W, index_t ldw, index_t rows, index_t cols, index_t r0, index_t k0,
                                   index_t kc, index_t mr_max, index_t kc_max) noexcept {
    next_panel p;
    if (r0 + mr_max < rows) {
        p.address = reinterpret_cast<std::uintptr_t>(W + r0 + mr_max + k0 * ldw);
        p.cols = kc;
    } else if (k0 + kc < cols) {
        p.address = reinterpret_cast<std::uintptr_t>(W + (k0 + kc) * ldw);
        p.cols = cols - k0 - kc < kc_max ? cols - k0 - kc : kc_max;
    }
    return p;
}

/// The lines of a next panel (column k at address + k step; its last row's line at
/// + last_line) that a micro-kernel requests into L2 one column per k step, spread over its
/// call: requesting a panel's strided lines in one burst while packing waited on the miss
/// queues (measured: the packed GEMM on 512 x 512 blocks 5-10 % faster from memory and from
/// L2, avx512). cols = 0: nothing to request.
struct panel_prefetch {
    std::uintptr_t address = 0, step = 0, last_line = 0;
    index_t cols = 0;
};

template <class T>
inline panel_prefetch prefetch_of(next_panel p, index_t ldw, index_t mr_max) noexcept {
    return {p.address, static_cast<std::uintptr_t>(ldw) * sizeof(T), static_cast<std::uintptr_t>(mr_max - 1) * sizeof(T),
            p.cols};
}

}  // namespace treegate::kernels::detail

#endif
