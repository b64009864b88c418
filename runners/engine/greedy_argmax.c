/* Greedy sampling's argmax for the Pie engine on the CPU: see runners/engine/sampler.py. Built into
   the same library as paged_decode.c (runners/engine/c_kernels.py), once per ISA variant. */
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline float bf16_value(uint16_t x) { uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f; }

/* out[r] = the index of the first largest value of row r of x[rows, cols] (bf16). NaN never wins;
   a row of only -inf or NaN gives 0. Rows spread over the OpenMP threads torch already runs. */
void argmax_rows_bf16(const uint16_t* x, int64_t rows, int64_t cols, int64_t* out) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t* row = x + r * cols;
        float top = -INFINITY;
        int64_t top_at = 0, c = 0;
#if defined(__AVX512F__)
        /* 16 lanes, each keeping its first maximum (strict >), then the best lane, the lowest index on ties */
        __m512 best = _mm512_set1_ps(-INFINITY);
        __m512i best_at = _mm512_setzero_si512();
        __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; c + 16 <= cols && cols < INT32_MAX; c += 16) {
            const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(row + c))), 16));
            const __mmask16 more = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
            best = _mm512_mask_mov_ps(best, more, v);
            best_at = _mm512_mask_mov_epi32(best_at, more, at);
            at = _mm512_add_epi32(at, _mm512_set1_epi32(16));
        }
        float lane_value[16];
        int32_t lane_at[16];
        _mm512_storeu_ps(lane_value, best);
        _mm512_storeu_si512(lane_at, best_at);
        for (int l = 0; l < 16; l++)
            if (lane_value[l] > top || (lane_value[l] == top && lane_at[l] < top_at)) { top = lane_value[l]; top_at = lane_at[l]; }
#endif
        for (; c < cols; c++) {
            const float value = bf16_value(row[c]);
            if (value > top) { top = value; top_at = c; }
        }
        out[r] = top_at;
    }
}
