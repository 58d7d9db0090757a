// treegate/kernels/generic/gemm.hpp — the packed GEMM driver and the gemm entry point, written once for every SIMD level.
// Included (no include guard) inside an ISA's kernel namespace, with TREEGATE_DETAIL_KERNEL_TARGET defined; alone it is empty.
//
// The including namespace provides `traits` (mr, nr, kc, small_max, small_max_bf16), its
// micro-kernels pack_panel and micro<NC>, and gemv, path_sum and gemm_small. Each level
// compiles this text under its own target attribute, so the driver is inlined into its
// kernels with the level's instructions (a portable build has no -march flag); GCC and Clang
// both accept it, since nothing here relies on inlining across target attributes.
#ifdef TREEGATE_DETAIL_KERNEL_TARGET

// A column tail of nc < traits::nr columns: micro<nc>, chosen at run time.
template <int NC = 1>
TREEGATE_DETAIL_KERNEL_TARGET inline void micro_tail(index_t nc, index_t mr, index_t kc, const float* panel,
                                                     const float* X, index_t ldx, float* Y, index_t ldy,
                                                     panel_prefetch pf) noexcept {
    if constexpr (NC < traits::nr) {
        if (nc == NC) return micro<NC>(mr, kc, panel, X, ldx, Y, ldy, pf);
        micro_tail<NC + 1>(nc, mr, kc, panel, X, ldx, Y, ldy, pf);
    }
}

// Larger groups: k-blocked, a packed panel of traits::mr rows reused across every column block
// of traits::nr. The accumulators of micro start from Y, so the k-blocks continue one FMA chain
// per element (batch invariance).
template <class T>
TREEGATE_DETAIL_KERNEL_TARGET inline void gemm_packed(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                                      const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    alignas(64) float panel[traits::mr * traits::kc];
    for (index_t k0 = 0; k0 < cols; k0 += traits::kc) {
        const index_t kc = cols - k0 < traits::kc ? cols - k0 : traits::kc;
        for (index_t r0 = 0; r0 < rows; r0 += traits::mr) {
            const index_t mr = rows - r0 < traits::mr ? rows - r0 : traits::mr;
            pack_panel(mr, kc, W + r0 + k0 * ldw, ldw, panel);
            // The next panel is requested during the first micro-kernel call on this one.
            panel_prefetch pf = prefetch_of<T>(next_panel_after(W, ldw, rows, cols, r0, k0, kc, traits::mr, traits::kc),
                                               ldw, traits::mr);
            const float* Xk = X + k0;
            float* Yr = Y + r0;
            index_t j = 0;
            for (; j + traits::nr <= n; j += traits::nr, pf.cols = 0)
                micro<traits::nr>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy, pf);
            if (j < n) micro_tail(n - j, mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy, pf);
        }
    }
}

template <class T>
TREEGATE_DETAIL_KERNEL_TARGET inline void gemm(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                               const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (rows <= 0 || n <= 0) return;
    if (n == 1) {
        // A contiguous block (ldw == rows, as in the layers) takes the path-sum kernel, whose
        // software prefetch runs ahead inside the block: a column of a few hundred rows is only
        // a few cache lines, too short for the hardware prefetcher to ramp up (measured with
        // avx2 on 256 x 256 blocks from memory: bf16 14 us instead of 23 us, float 26 us instead
        // of 32 us).
        if (ldw == rows) return path_sum(rows, cols, &W, 1, X, Y);
        return gemv(rows, cols, W, ldw, X, Y);
    }
    if (n <= (std::is_same_v<T, bf16> ? traits::small_max_bf16 : traits::small_max))
        return gemm_small(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    gemm_packed(rows, cols, n, W, ldw, X, ldx, Y, ldy);
}

#endif  // TREEGATE_DETAIL_KERNEL_TARGET
