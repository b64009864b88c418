/* The engine's bf16 GEMM on AVX512-BF16 vector units, for CPUs without AMX (runners/engine/models/linear.py says
 * when it runs; pie_core/capability.py `select_kernels` selects it).
 *
 * y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n], then ReLU if asked), bf16 in and out, fp32 accumulation, one round
 * to bf16 at the end (round to nearest even, as PyTorch rounds).
 *
 * Why our own: a decode step multiplies 1-100 rows by every weight of the model once, and oneDNN's prepacked kernels
 * fall well short of the memory bus at small row counts and of the vector units' peak in between. On a 2-core
 * AMD EPYC Zen 4, one decode step's 49 GEMMs of OPT-125m (the 12 layers and the lm_head, 247 MB of weights, each
 * read from memory once) took 7.6 against 11.1 ms at 1 row, 7.8 against 11.4 at 8, 11.9 against 14.3 at 16, 20.9
 * against 23.1 at 32, 56.8 against 58.8 at 96 and 1,248 against 1,230 at 2,048 (docs/engine-cpu-performance.md,
 * "Zen 4").
 *
 * The weight is in the AMX GEMM's layout (runners/engine/amx_gemm.c): [n/16][k/32][16][16][2], where row r of a
 * 1 KiB tile holds, for each of 16 output columns, the pair of weights at k = 2r, 2r+1. One such 64-byte row is
 * exactly the operand VDPBF16PS multiplies by a broadcast pair of x, and the rows of one 16-column panel follow each
 * other along k, so a panel is one stream. Packing is a permutation (linear.py does it with torch).
 *
 * The loop: each thread (OpenMP, static) takes blocks of NP panels (48 output columns); for each block of up to MR
 * rows of x it keeps MR x NP accumulators in registers over all of k, loading NP weight rows and broadcasting one
 * pair of each x row per k pair; the panels stay in L1/L2 for the next rows. Calls of more than ROW_BLOCK rows run
 * a block of rows at a time, so that x stays in cache while the panels stream past it. The epilogue adds the bias
 * in fp32, applies ReLU and rounds to bf16 with VCVTNEPS2BF16.
 *
 * Shapes: k a multiple of 32 and n a multiple of 16 (the caller checks); any m.
 * Built only where AVX512-BF16 is compiled in (the avx512bf16 variant of the C kernels); other builds lack the
 * symbol, and the engine takes oneDNN's GEMMs.
 */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#include <stdint.h>

#include "bf16_dot.h"

#define MR DOT_ROWS   /* rows of x per register block */
#define NP DOT_PANELS /* 16-column panels per register block: MR x NP = 24 of the 32 vector registers */
#define ROW_BLOCK 128 /* rows of x per sweep over the panels */

static inline void store16(__m512 acc, const uint16_t *bias, int64_t relu, uint16_t *out) {
    if (bias)
        acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(
                                     _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)bias)), 16)));
    if (relu)
        acc = _mm512_max_ps(acc, _mm512_setzero_ps());
    _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh(acc));
}

/* rows [m0, m0 + mr) of x times panels [p0, p0 + np) over all of k; inlined with constant mr and np where it can */
static inline __attribute__((always_inline)) void block(const uint16_t *x, int64_t k, const uint16_t *packed, int64_t n,
                                                        const uint16_t *bias, int64_t relu, uint16_t *out, int64_t m0,
                                                        int mr, int64_t p0, int np) {
    const int64_t panel_stride = (k / 32) * 512;
    __m512 acc[MR][NP];
    bf16_dot_block(acc, (const uint32_t *)(x + m0 * k), k / 2, mr, packed + p0 * panel_stride, panel_stride, np, k / 2);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < np; j++)
            store16(acc[i][j], bias ? bias + (p0 + j) * 16 : 0, relu, out + (m0 + i) * n + (p0 + j) * 16);
}

/* one register block, specialised for each row count of a full panel block (the common case: decode rows) */
static void run_block(const uint16_t *x, int64_t k, const uint16_t *packed, int64_t n, const uint16_t *bias,
                      int64_t relu, uint16_t *out, int64_t m0, int mr, int64_t p0, int np) {
    if (np == NP) {
        switch (mr) {
        case 8: block(x, k, packed, n, bias, relu, out, m0, 8, p0, NP); return;
        case 7: block(x, k, packed, n, bias, relu, out, m0, 7, p0, NP); return;
        case 6: block(x, k, packed, n, bias, relu, out, m0, 6, p0, NP); return;
        case 5: block(x, k, packed, n, bias, relu, out, m0, 5, p0, NP); return;
        case 4: block(x, k, packed, n, bias, relu, out, m0, 4, p0, NP); return;
        case 3: block(x, k, packed, n, bias, relu, out, m0, 3, p0, NP); return;
        case 2: block(x, k, packed, n, bias, relu, out, m0, 2, p0, NP); return;
        default: block(x, k, packed, n, bias, relu, out, m0, 1, p0, NP); return;
        }
    }
    block(x, k, packed, n, bias, relu, out, m0, mr, p0, np); /* the last, narrower panel block */
}

void bf16_linear(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed, int64_t n, const uint16_t *bias,
                 int64_t relu, uint16_t *out) {
    const int64_t panels = n / 16, blocks = (panels + NP - 1) / NP;
    #pragma omp parallel
    for (int64_t first = 0; first < m; first += ROW_BLOCK) {
        const int64_t last = first + ROW_BLOCK < m ? first + ROW_BLOCK : m;
        #pragma omp for schedule(static) nowait
        for (int64_t c = 0; c < blocks; c++) {
            const int64_t p0 = c * NP;
            const int np = panels - p0 < NP ? (int)(panels - p0) : NP;
            for (int64_t m0 = first; m0 < last; m0 += MR)
                run_block(x, k, packed, n, bias, relu, out, m0, last - m0 < MR ? (int)(last - m0) : MR, p0, np);
        }
    }
}
#endif
