/* The register block of the engine's two AVX512-BF16 kernels (bf16_gemm.c, prefill_attention.c): rows of bf16
 * pairs times 16-column panels in the AMX GEMM's layout, fp32 sums kept in 8 x 3 zmm registers over all of k.
 *
 * A panel holds, for each pair kp of k, one 64-byte row: the pairs (2kp, 2kp + 1) of its 16 columns, which is
 * exactly the operand VDPBF16PS multiplies by a broadcast pair of a row. Per pair the block loads NP panel rows
 * and broadcasts one pair of each of its rows: 24 of the 32 vector registers hold sums, 3 the panel rows.
 *
 * Included by the sources of the avx512bf16 build only (runners/engine/c_kernels.py writes it beside them).
 */
#ifndef PIE_BF16_DOT_H
#define PIE_BF16_DOT_H
#include <immintrin.h>
#include <stdint.h>

#define DOT_ROWS 8   /* rows per register block */
#define DOT_PANELS 3 /* 16-column panels per register block */

/* acc[i][j] = sum over pairs kp < pairs of a[i * a_stride + kp] . row kp of panel j (the panels panel_stride
 * elements apart from w on), for rows i < mr and panels j < np; the other sums are left at zero. Inlined with
 * constant mr and np, the loops unroll and acc stays in registers. */
static inline __attribute__((always_inline)) void bf16_dot_block(__m512 acc[DOT_ROWS][DOT_PANELS], const uint32_t *a,
                                                                 int64_t a_stride, int mr, const uint16_t *w,
                                                                 int64_t panel_stride, int np, int64_t pairs) {
    for (int i = 0; i < DOT_ROWS; i++)
        for (int j = 0; j < DOT_PANELS; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < pairs; kp++) {
        __m512bh b[DOT_PANELS];
        for (int j = 0; j < DOT_PANELS; j++)
            if (j < np)
                b[j] = (__m512bh)_mm512_loadu_si512(w + j * panel_stride + kp * 32);
        for (int i = 0; i < DOT_ROWS; i++)
            if (i < mr) {
                const __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[i * a_stride + kp]);
                for (int j = 0; j < DOT_PANELS; j++)
                    if (j < np)
                        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], x, b[j]);
            }
    }
}
#endif
