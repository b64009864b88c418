/* Causal prefill attention of one sequence on AVX512-BF16 vector units, for CPUs without AMX (runners/engine/
 * attention.py says when it runs).
 *
 * out[i] = softmax(scale * q[i] . k[j] for j <= past + i) . v, for the query rows i = 0 .. t_q - 1, which sit at
 * positions past .. past + t_q - 1 of a sequence whose keys and values 0 .. t_k - 1 are given (t_k = past + t_q;
 * past > 0 is a chunk of a longer prompt whose earlier keys are already computed). bf16 in and out; scores,
 * softmax and sums in fp32; the exponentials are rounded to bf16 once for the product with v, and the sum of
 * each row is taken before that rounding (as PyTorch's CPU flash attention does).
 *
 * Why our own: on a 2-core AMD EPYC Zen 4 PyTorch's CPU flash attention ran OPT-125m's heads at about 32 GFLOP/s
 * for prompts of 128 tokens (12.7 ms a layer for 16 of them): under a tenth of the two cores' peak, and about a
 * second of a 96-request run (docs/engine-cpu-performance.md, "Zen 4").
 *
 * How: each thread (OpenMP, dynamic over query heads; grouped-query heads that share a key-value head go out in
 * runs, packed once a run) packs its head's keys into the layout of bf16_gemm.c's weights, [t_k/16][dh/2][16][2]:
 * for each panel of 16 keys, one 64-byte row per pair of dimensions, the operand VDPBF16PS multiplies by a
 * broadcast pair of q (16 keys x 16 pairs loaded and transposed in registers at a time). Values go the other way
 * round, [dh/16][t_k/2][16][2]: per panel of 16 dimensions, one row per pair of keys, multiplied by a broadcast
 * pair of exponentials. Then per block of RB query rows: the scores against the key panels up to the block's last
 * position (causal blocks skipped), the masked fp32 softmax, and the product with v, each on RB x up to 3 panels
 * of accumulators in registers (bf16_dot.h).
 *
 * Shapes: dh a multiple of 16; any t_q, past, head counts with hq a multiple of hkv (grouped-query heads share
 * their key-value head). Strides are in elements between tokens; a token's heads follow each other (dh apart).
 * Built only where AVX512-BF16 is compiled in; other builds lack the symbol and the engine takes PyTorch's.
 */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16_dot.h"

#define RB DOT_ROWS   /* query rows per block */
#define NP DOT_PANELS /* 16-column panels per register block */

/* e^x for x <= 0 (fp32): x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor polynomial to r^6 (relative error
 * below 2e-7), times 2^n by VSCALEFPS; far below the range it gives 0 */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* the lanes of keys j .. j + 15 at or before key `last` */
static inline __mmask16 visible_lanes(int64_t j, int64_t last) {
    return j > last ? 0 : j + 15 <= last ? 0xFFFF : (__mmask16)((1u << (last - j + 1)) - 1);
}

/* r[i] lane j <- r[j] lane i: a 16 x 16 transpose of 32-bit elements (pairs of bf16) in four rounds of shuffles */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}

/* a[i] . panels (p0 + j) for rows i < mr and panels j < np (bf16_dot.h); the fp32 results go to
 * dst + i * dst_stride + (p0 + j) * 16. a: rows of bf16 pairs (uint32), a_stride pairs apart. */
static inline __attribute__((always_inline)) void dot_block(const uint32_t *a, int64_t a_stride, int mr,
                                                            const uint16_t *panels, int64_t panel_stride, int64_t p0,
                                                            int np, int64_t pairs, float *dst, int64_t dst_stride) {
    __m512 acc[RB][NP];
    bf16_dot_block(acc, a, a_stride, mr, panels + p0 * panel_stride, panel_stride, np, pairs);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < np; j++)
            _mm512_storeu_ps(dst + i * dst_stride + (p0 + j) * 16, acc[i][j]);
}

/* all panels [0, panels) against rows [0, mr): full register blocks with a constant row count where it can */
static void dot_rows(const uint32_t *a, int64_t a_stride, int mr, const uint16_t *packed, int64_t panel_stride,
                     int64_t panels, int64_t pairs, float *dst, int64_t dst_stride) {
    for (int64_t p0 = 0; p0 < panels; p0 += NP) {
        const int np = panels - p0 < NP ? (int)(panels - p0) : NP;
        if (mr == RB && np == NP)
            dot_block(a, a_stride, RB, packed, panel_stride, p0, NP, pairs, dst, dst_stride);
        else
            dot_block(a, a_stride, mr, packed, panel_stride, p0, np, pairs, dst, dst_stride);
    }
}

void prefill_attention_bf16(const uint16_t *q, int64_t q_stride, const uint16_t *k, int64_t k_stride,
                            const uint16_t *v, int64_t v_stride, uint16_t *out, int64_t out_stride, int64_t t_q,
                            int64_t past, int64_t hq, int64_t hkv, int64_t dh, float scale) {
    const int64_t t_k = past + t_q, padded = (t_k + 15) / 16 * 16, group = hq / hkv;
    const int64_t key_panel = (dh / 2) * 32, value_panel = (padded / 2) * 32; /* elements per packed panel */
    #pragma omp parallel
    {
        uint16_t *keys = aligned_alloc(64, padded * dh * 2), *values = aligned_alloc(64, padded * dh * 2);
        uint16_t *probs = aligned_alloc(64, RB * padded * 2);
        float *scores = aligned_alloc(64, RB * padded * 4), *sums = aligned_alloc(64, RB * dh * 4);
        /* query heads that share a key-value head go out in runs of up to `group`, as long as that leaves two runs a
           thread, and a thread packs a key-value head once for its consecutive query heads */
        const int64_t share = hq / (2 * omp_get_num_threads()), run = group < share ? group : share > 1 ? share : 1;
        int64_t packed = -1;
        #pragma omp for schedule(dynamic, run)
        for (int64_t h = 0; h < hq; h++) {
            const int64_t kv = h / group;
            /* keys: panel p, pair d, lane j holds the pair (2d, 2d + 1) of key 16p + j; values: panel c, key pair
             * kp, lane j holds (v[2kp][16c + j], v[2kp + 1][16c + j]); both zero past t_k */
            if (kv != packed) {
                packed = kv;
                for (int64_t c = 0; c < dh / 16; c++)
                    memset(values + c * value_panel + (t_k / 2) * 32, 0, (padded - t_k / 2 * 2) * 32);
                for (int64_t p = 0; p < padded / 16; p++) /* 16 keys x 16 pairs at a time, transposed in registers */
                    for (int64_t d0 = 0; d0 < dh / 2; d0 += 16) {
                        const int64_t pairs = dh / 2 - d0 < 16 ? dh / 2 - d0 : 16;
                        const __mmask16 some = (__mmask16)((1u << pairs) - 1);
                        __m512i rows[16];
                        for (int j = 0; j < 16; j++) {
                            const uint16_t *key = k + (p * 16 + j) * k_stride + kv * dh + 2 * d0;
                            rows[j] = p * 16 + j < t_k ? _mm512_maskz_loadu_epi32(some, key) : _mm512_setzero_si512();
                        }
                        transpose16(rows);
                        uint32_t *dst = (uint32_t *)keys + (p * (dh / 2) + d0) * 16;
                        for (int64_t d = 0; d < pairs; d++)
                            _mm512_store_si512(dst + d * 16, rows[d]);
                    }
                for (int64_t key = 0; key < t_k; key += 2) { /* 16 dimensions of two keys: one 64-byte row */
                    const uint16_t *even = v + key * v_stride + kv * dh, *odd = even + v_stride;
                    uint32_t *row = (uint32_t *)values + (key / 2) * 16;
                    for (int64_t d = 0; d < dh; d += 16) {
                        const __m512i low = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(even + d)));
                        const __m512i high = key + 1 < t_k
                                                 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(odd + d)))
                                                 : _mm512_setzero_si512();
                        _mm512_storeu_si512(row + (d / 16) * (value_panel / 2),
                                            _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
                    }
                }
            }
            for (int64_t r0 = 0; r0 < t_q; r0 += RB) {
                const int mr = t_q - r0 < RB ? (int)(t_q - r0) : RB;
                const int64_t visible = past + r0 + mr, width = (visible + 15) / 16 * 16; /* keys this block sees */
                dot_rows((const uint32_t *)(q + r0 * q_stride + h * dh), q_stride / 2, mr, keys, key_panel,
                         width / 16, dh / 2, scores, padded);
                float row_sum[RB];
                for (int i = 0; i < mr; i++) {
                    float *s = scores + i * padded;
                    const int64_t last = past + r0 + i; /* the last key row i may see */
                    __m512 top = _mm512_set1_ps(-__builtin_inff());
                    for (int64_t j = 0; j < width; j += 16) {
                        const __mmask16 live = visible_lanes(j, last);
                        const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(scale));
                        _mm512_storeu_ps(s + j, x);
                        top = _mm512_mask_max_ps(top, live, top, x);
                    }
                    const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
                    __m512 total = _mm512_setzero_ps();
                    for (int64_t j = 0; j < width; j += 16) {
                        const __mmask16 live = visible_lanes(j, last);
                        const __m512 e = _mm512_maskz_mov_ps(live, exp_nonpositive(
                                                                       _mm512_sub_ps(_mm512_loadu_ps(s + j), peak)));
                        total = _mm512_add_ps(total, e);
                        _mm256_storeu_si256((__m256i *)(probs + i * padded + j), (__m256i)_mm512_cvtneps_pbh(e));
                    }
                    row_sum[i] = _mm512_reduce_add_ps(total);
                }
                dot_rows((const uint32_t *)probs, padded / 2, mr, values, value_panel, dh / 16, width / 2, sums, dh);
                for (int i = 0; i < mr; i++) {
                    const __m512 inv = _mm512_set1_ps(1.0f / row_sum[i]);
                    uint16_t *o = out + (r0 + i) * out_stride + h * dh;
                    for (int64_t d = 0; d < dh; d += 16)
                        _mm256_storeu_si256((__m256i *)(o + d),
                                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(sums + i * dh + d), inv)));
                }
            }
        }
        free(keys);
        free(values);
        free(probs);
        free(scores);
        free(sums);
    }
}
#endif
