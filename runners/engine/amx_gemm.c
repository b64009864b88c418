/* The engine's bf16 GEMM on Intel AMX (runners/engine/models/linear.py says when it runs).
 *
 * y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n], then ReLU if asked), bf16 in and out, fp32 accumulation, one
 * round to bf16 at the end (round to nearest even, as PyTorch rounds).
 *
 * Why our own: a decode step multiplies ~100 rows by every weight of the model once, so the GEMMs are a
 * stream of weights through the tile unit. oneDNN's prepacked kernels took 26.1 ms for the 12 layers of
 * OPT-125m at 96 rows where this loop takes 21.0 ms (benchmarks/bench_decode_step.py, 2-core Xeon; more in
 * docs/engine-cpu-performance.md, "GEMMs on AMX tiles"). The layout and loop are the plainest AMX can take:
 *
 * - The weight is packed once (`amx_pack_weight`) into 1 KiB B tiles, [n/16][k/32][16 rows][16 cols][2]:
 *   row r of a tile holds, for each of 16 output columns, the pair of weights at k = 2r, 2r+1 (the VNNI pairs
 *   TDPBF16PS multiplies), and the tiles of one 16-column panel follow each other along k, so a panel is
 *   one contiguous stream.
 * - x stays row-major: an A tile is 16 rows of 32 consecutive k, loaded with the row stride.
 * - For each block of up to ROW_BLOCK rows of x (which then stays in L2), each thread (OpenMP, static, no
 *   barrier between blocks) takes pairs of panels (32 output columns) and, for every pair of 16-row tiles
 *   of the block, accumulates a 32 x 32 block in four C tiles over all of k (2 A + 2 B + 4 C = the 8
 *   tiles), so each B tile loaded serves two row tiles and each A tile two column panels; the panel pair
 *   stays in L1/L2 for the block's next rows. A decode step's ~100 rows are one block: every weight is
 *   read from memory once. Without row blocks a 2,048-row call streamed all of x past every panel pair
 *   and ran at half oneDNN's speed; with them it is about 0.8x oneDNN's there.
 * - An odd row tile left over in a block takes a 16 x 32 loop (2 C tiles, half the products), and a call of
 *   fewer than 16 rows configures its tiles to that many rows, so small decode batches neither multiply
 *   padding nor copy x: at 1-16 rows the 12 layers' GEMMs of OPT-125m took 5.7-6.5 ms against 7.2-7.8 when
 *   every call was padded to 32 rows (bit-identical outputs; 17-100 rows 4-15% faster).
 * - The epilogue stores the C tiles, adds the bias in fp32, applies ReLU and rounds to bf16 with
 *   AVX512-BF16's VCVTNEPS2BF16; it writes the call's rows only.
 * - `amx_linear_argmax` runs the same loop for greedy sampling's lm_head: its epilogue keeps, per row, 16 lanes of
 *   first maxima of the bf16-rounded values instead of writing them, and the threads' lanes are merged at the end
 *   (the lowest column wins ties), so a decode step's logits are neither written nor read back (0.4-0.5 ms of a
 *   96-row step; docs/engine-cpu-performance.md, "The random run sampled, ...").
 *
 * Shapes: k a multiple of 32 and n a multiple of 32 (the caller checks; every registry model has them);
 * any m: beyond 16 rows, the last m % 16 rows are copied into one tile padded with zero rows.
 * Linux hands out AMX state per process on request (arch_prctl ARCH_REQ_XCOMP_PERM), which `amx_gemm_init`
 * makes; it returns nonzero where the kernel refuses it (no AMX, or an old kernel), and nothing here runs then.
 * `amx_unpack_weight` is the inverse of the packing (a plain copy for inputs that are not bf16, and tests).
 *
 * Left out: fp16/int8 tiles, k or n tails. Tried on a 2-core Xeon and dropped (the same or slower): prefetching
 * the next panel into L1 or L2 while the row tiles run, 1-4 panels ahead; 6x1 and 3x1 tile shapes; x copied
 * into tile order first.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define ROW_BLOCK 256 /* rows of x per sweep over the weight panels (x's block stays in L2) */

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

int64_t amx_gemm_init(void) {
    return (int64_t)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

/* tiles 0-3 (C) and 4-5 (A) hold `rows` rows of x (16, or all of a call with fewer), 6-7 (B) 16 rows of k pairs */
static void configure_tiles(int64_t rows) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = t < 6 ? (uint8_t)rows : 16;
        config.colsb[t] = 64;
    }
    /* LDTILECFG with the whole 64-byte record as the asm's input. GCC 12's _tile_loadconfig declares that it reads
       only the first 8 bytes, so the compiler may drop the stores to rows and colsb as dead (a variant of this
       file with the tile stores removed was built that way, and crashed with SIGSEGV). */
    __asm__ volatile("ldtilecfg %0" : : "m"(config));
}

void amx_pack_weight(const uint16_t *w, int64_t n, int64_t k, uint16_t *packed) {
    #pragma omp parallel for schedule(static)
    for (int64_t panel = 0; panel < n / 16; panel++)
        for (int64_t kb = 0; kb < k / 32; kb++) {
            uint16_t *tile = packed + (panel * (k / 32) + kb) * 512;
            for (int r = 0; r < 16; r++)
                for (int c = 0; c < 16; c++) {
                    const uint16_t *src = w + (panel * 16 + c) * k + kb * 32 + 2 * r;
                    tile[r * 32 + c * 2] = src[0];
                    tile[r * 32 + c * 2 + 1] = src[1];
                }
        }
}

void amx_unpack_weight(const uint16_t *packed, int64_t n, int64_t k, uint16_t *w) {
    #pragma omp parallel for schedule(static)
    for (int64_t panel = 0; panel < n / 16; panel++)
        for (int64_t kb = 0; kb < k / 32; kb++) {
            const uint16_t *tile = packed + (panel * (k / 32) + kb) * 512;
            for (int r = 0; r < 16; r++)
                for (int c = 0; c < 16; c++) {
                    uint16_t *dst = w + (panel * 16 + c) * k + kb * 32 + 2 * r;
                    dst[0] = tile[r * 32 + c * 2];
                    dst[1] = tile[r * 32 + c * 2 + 1];
                }
        }
}

/* the bias of a block's 32 columns as two fp32 vectors (zeros without a bias) */
static inline void bias_block(const uint16_t *bias, __m512 b[2]) {
    for (int j = 0; j < 2; j++)
        b[j] = bias ? _mm512_castsi512_ps(_mm512_slli_epi32(
                          _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + 16 * j))), 16))
                    : _mm512_setzero_ps();
}

/* acc: 32 x 32 fp32 (row stride 32); writes its first `rows` rows to out (row stride ldo) */
static void epilogue(const float *acc, int64_t rows, const uint16_t *bias, int64_t relu, uint16_t *out, int64_t ldo) {
    __m512 b[2];
    bias_block(bias, b);
    for (int64_t m = 0; m < rows; m++)
        for (int j = 0; j < 2; j++) {
            __m512 v = _mm512_add_ps(_mm512_loadu_ps(acc + m * 32 + 16 * j), b[j]);
            if (relu)
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            _mm256_storeu_si256((__m256i *)(out + m * ldo + 16 * j), (__m256i)_mm512_cvtneps_pbh(v));
        }
}

/* Greedy sampling's argmax, kept as the epilogue goes instead of writing the output: for each row of the block, each
   of 16 lanes keeps the first largest bf16-rounded value of its columns (strict >, as argmax_rows_bf16 in
   greedy_argmax.c; NaN never wins), in best/best_at ([m][16] of this thread). */
static void argmax_epilogue(const float *acc, int64_t rows, const uint16_t *bias, int64_t col0, float *best, int32_t *best_at) {
    __m512 b[2];
    bias_block(bias, b);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t m = 0; m < rows; m++) {
        __m512 top = _mm512_loadu_ps(best + m * 16);
        __m512i top_at = _mm512_loadu_si512(best_at + m * 16);
        for (int j = 0; j < 2; j++) {
            const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(acc + m * 32 + 16 * j), b[j]));
            const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16));
            const __mmask16 more = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ);
            top = _mm512_mask_mov_ps(top, more, v);
            top_at = _mm512_mask_mov_epi32(top_at, more, _mm512_add_epi32(lane, _mm512_set1_epi32((int)(col0 + 16 * j))));
        }
        _mm512_storeu_ps(best + m * 16, top);
        _mm512_storeu_si512(best_at + m * 16, top_at);
    }
}

/* The loop both entry points share. With `best` NULL it writes out[m][n] (bias, ReLU, bf16); otherwise it writes
   nothing and each thread keeps its lanes' first maxima in best/best_at + thread * m * 16 (argmax_epilogue). */
static void gemm(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed, int64_t n, const uint16_t *bias,
                 int64_t relu, uint16_t *out, float *best, int32_t *best_at) {
    const int64_t k_tiles = k / 32, pairs = n / 32, row_tiles = (m + 15) / 16, stride = k * 2;
    /* fewer than 16 rows: the tiles are configured to that many (no copy); otherwise the last m % 16 rows
       are copied into a tile padded with zero rows */
    const int64_t full = m < 16 ? 1 : m / 16, tail = m < 16 ? 0 : m % 16;
    uint16_t *last_tile = NULL;
    if (tail) {
        last_tile = aligned_alloc(64, (size_t)(16 * k * 2));
        if (!last_tile)
            abort();
        memcpy(last_tile, x + full * 16 * k, (size_t)(tail * k * 2));
        memset(last_tile + tail * k, 0, (size_t)((16 - tail) * k * 2));
    }
    #pragma omp parallel
    {
        configure_tiles(m < 16 ? m : 16);
        float acc[32 * 32] __attribute__((aligned(64)));
        float *my_best = best ? best + (int64_t)omp_get_thread_num() * m * 16 : NULL;
        int32_t *my_at = best ? best_at + (int64_t)omp_get_thread_num() * m * 16 : NULL;
        for (int64_t first = 0; first < row_tiles; first += ROW_BLOCK / 16) {
        const int64_t last = first + ROW_BLOCK / 16 < row_tiles ? first + ROW_BLOCK / 16 : row_tiles;
        #pragma omp for schedule(static) nowait
        for (int64_t pair = 0; pair < pairs; pair++) {
            const uint16_t *b0 = packed + 2 * pair * k_tiles * 512, *b1 = b0 + k_tiles * 512;
            for (int64_t t = first; t < last; t += 2) {
                const int64_t row = t * 16, span = t + 1 < last ? 32 : 16; /* rows of x this block covers */
                const uint16_t *a0 = t < full ? x + row * k : last_tile;
                _tile_zero(0);
                _tile_zero(1);
                if (span == 32) { /* two row tiles: a 32 x 32 block */
                    const uint16_t *a1 = t + 1 < full ? a0 + 16 * k : last_tile;
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int64_t kb = 0; kb < k_tiles; kb++) {
                        _tile_loadd(4, a0 + kb * 32, stride);
                        _tile_loadd(6, b0 + kb * 512, 64);
                        _tile_loadd(5, a1 + kb * 32, stride);
                        _tile_loadd(7, b1 + kb * 512, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    _tile_stored(2, acc + 512, 128);
                    _tile_stored(3, acc + 528, 128);
                } else { /* the block's odd last row tile: 16 x 32 */
                    for (int64_t kb = 0; kb < k_tiles; kb++) {
                        _tile_loadd(4, a0 + kb * 32, stride);
                        _tile_loadd(6, b0 + kb * 512, 64);
                        _tile_loadd(7, b1 + kb * 512, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                    }
                }
                _tile_stored(0, acc, 128);
                _tile_stored(1, acc + 16, 128);
                const int64_t rows = m - row < span ? m - row : span;
                if (my_best)
                    argmax_epilogue(acc, rows, bias ? bias + 32 * pair : NULL, 32 * pair, my_best + row * 16, my_at + row * 16);
                else
                    epilogue(acc, rows, bias ? bias + 32 * pair : NULL, relu, out + row * n + 32 * pair, n);
            }
        }
        }
        _tile_release();
    }
    free(last_tile);
}

void amx_linear(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed, int64_t n, const uint16_t *bias,
                int64_t relu, uint16_t *out) {
    gemm(x, m, k, packed, n, bias, relu, out, NULL, NULL);
}

/* tokens[r] = the index of the first largest value of row r of what amx_linear would write (bf16(x w^T + bias),
   no ReLU): the same token argmax_rows_bf16 picks from those logits (NaN never wins; a row of only -inf or NaN
   gives 0), without writing or reading them back. Returns 0, or -1 where its scratch could not be allocated. */
int64_t amx_linear_argmax(const uint16_t *x, int64_t m, int64_t k, const uint16_t *packed, int64_t n, const uint16_t *bias,
                          int64_t *tokens) {
    const int64_t threads = omp_get_max_threads(), lanes = threads * m * 16;
    float *best = malloc(sizeof(float) * (size_t)lanes);
    int32_t *best_at = malloc(sizeof(int32_t) * (size_t)lanes);
    if (!best || !best_at) {
        free(best);
        free(best_at);
        return -1;
    }
    for (int64_t i = 0; i < lanes; i++) { /* every thread's lanes, so a team smaller than the maximum leaves none unset */
        best[i] = -INFINITY;
        best_at[i] = 0;
    }
    gemm(x, m, k, packed, n, bias, 0, NULL, best, best_at);
    for (int64_t r = 0; r < m; r++) { /* lanes of every thread: the largest, the lowest column on ties */
        float top = -INFINITY;
        int64_t top_at = 0;
        for (int64_t i = 0; i < threads * 16; i++) {
            const float value = best[(i / 16) * m * 16 + r * 16 + i % 16];
            const int64_t at = best_at[(i / 16) * m * 16 + r * 16 + i % 16];
            if (value > top || (value == top && at < top_at)) {
                top = value;
                top_at = at;
            }
        }
        tokens[r] = top_at;
    }
    free(best);
    free(best_at);
    return 0;
}
