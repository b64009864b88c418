/* Paged decode attention for the Pie engine on the CPU: see runners/engine/cpu_attention.py; built with
   greedy_argmax.c into one library per ISA variant (pie_core/capability.py C_VARIANT_FLAGS, runners/engine/c_kernels.py).
   Portable C: the AVX-512 parts sit behind #if, every other build takes loops the compiler vectorises. */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline float bf16_to_f32(uint16_t x) { uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);  /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static inline float f32_identity(float x) { return x; }

/* q.k for one query head and one cached token; bf16 products, fp32 sums (as a bf16 GEMM does). */
static inline float dot_bf16(const uint16_t* q, const uint16_t* k, int64_t n) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= n; d += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(k + d));
    if (d < n) {
        __mmask32 m = (__mmask32)((1ull << (n - d)) - 1);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(m, q + d), (__m512bh)_mm512_maskz_loadu_epi16(m, k + d));
    }
    return _mm512_reduce_add_ps(acc);
#else
    float dot = 0.0f;
    #pragma omp simd reduction(+:dot)
    for (int64_t d = 0; d < n; d++) dot += bf16_to_f32(q[d]) * bf16_to_f32(k[d]);
    return dot;
#endif
}
/* exp(x) for 16 lanes: 2^(x log2 e) split into 2^n * 2^f, |f| <= 1/2, 2^f by its degree-6
   Taylor polynomial (relative error ~2e-7, fp32 rounding), then scaled by 2^n. */
#if defined(__AVX512F__)
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.540353039e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.333355815e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129108e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265070e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471806e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

/* A block table entry kept inside the cache: padding (-1) and stray values read block 0 or the last. */
static inline int64_t clamped_block(int64_t block, int64_t num_blocks) {
    return block < 0 ? 0 : (block >= num_blocks ? num_blocks - 1 : block);
}

/* The largest of s[0..n) and `peak`. */
static inline float block_max(const float* s, int64_t n, float peak) {
#if defined(__AVX512F__)
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const float top = _mm512_mask_reduce_max_ps(m, _mm512_maskz_loadu_ps(m, s + j));
        peak = top > peak ? top : peak;
    }
#else
    for (int64_t j = 0; j < n; j++) peak = s[j] > peak ? s[j] : peak;
#endif
    return peak;
}

/* s[j] <- exp(s[j] - peak) for j < n; returns their sum. */
static inline float exp_sum(float* s, int64_t n, float peak) {
    float total = 0.0f;
#if defined(__AVX512F__)
    const __m512 shift = _mm512_set1_ps(peak);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), shift));
        _mm512_mask_storeu_ps(s + j, m, e);
        total += _mm512_mask_reduce_add_ps(m, e);
    }
#else
    for (int64_t j = 0; j < n; j++) { s[j] = expf(s[j] - peak); total += s[j]; }
#endif
    return total;
}

static inline void axpy_bf16(float* acc, float p, const uint16_t* v, int64_t n) {
    #pragma omp simd
    for (int64_t d = 0; d < n; d++) acc[d] += p * bf16_to_f32(v[d]);
}
static inline float dot_f32(const float* q, const float* k, int64_t n) {
    float dot = 0.0f;
    #pragma omp simd reduction(+:dot)
    for (int64_t d = 0; d < n; d++) dot += q[d] * k[d];
    return dot;
}
static inline void axpy_f32(float* acc, float p, const float* v, int64_t n) {
    #pragma omp simd
    for (int64_t d = 0; d < n; d++) acc[d] += p * v[d];
}

/* One work item = one sequence and a range of its KV heads (with their query heads). Blocks are
   visited once each, flash-decoding style: scores of the block's tokens (K rows, in memory order),
   an online-softmax update of each head's running max, sum and accumulator, then the block's
   V rows. K and V of one block are adjacent, so a block streams through memory in one pass;
   the next block is prefetched while this one is computed. */
#define DEFINE_KERNEL(NAME, T, DOT, AXPY, STORE)                                                      \
void NAME(const T* q, const T* cache, const int64_t* tables, const int64_t* lens, T* out,             \
          int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size,       \
          int64_t table_stride, int64_t num_blocks, int64_t max_len, float scale, int64_t splits,     \
          int64_t q_stride) {                                                                         \
    const int64_t group = heads / kv_heads;                                                           \
    const int64_t token_stride = kv_heads * head_dim;                                                 \
    const int64_t block_stride = 2 * block_size * token_stride;                                       \
    const int64_t kv_per_split = (kv_heads + splits - 1) / splits;                                    \
    (void)max_len;                                                                                    \
    _Pragma("omp parallel")                                                                           \
    {                                                                                                 \
        float* scores = (float*)malloc(sizeof(float) * (size_t)(heads * (block_size + head_dim + 2))); \
        float* acc = scores + heads * block_size;                                                     \
        float* run_max = acc + heads * head_dim;                                                      \
        float* run_sum = run_max + heads;                                                             \
        _Pragma("omp for schedule(dynamic, 1)")                                                       \
        for (int64_t item = 0; item < batch * splits; item++) {                                       \
            const int64_t b = item / splits;                                                          \
            const int64_t kv0 = (item % splits) * kv_per_split;                                      \
            const int64_t kv1 = kv0 + kv_per_split < kv_heads ? kv0 + kv_per_split : kv_heads;       \
            if (kv0 >= kv1) continue;                                                                 \
            const int64_t h0 = kv0 * group, h1 = kv1 * group, len = lens[b];                          \
            const int64_t row_bytes = (kv1 - kv0) * head_dim * (int64_t)sizeof(T);                    \
            const int64_t* table = tables + b * table_stride;                                         \
            const T* query = q + b * q_stride;                                                        \
            for (int64_t h = h0; h < h1; h++) { run_max[h] = -INFINITY; run_sum[h] = 0.0f; }          \
            memset(acc + h0 * head_dim, 0, sizeof(float) * (size_t)((h1 - h0) * head_dim));           \
            const int64_t used_blocks = (len + block_size - 1) / block_size;                          \
            for (int64_t m = 0; m < used_blocks; m++) {                                               \
                const int64_t block = clamped_block(table[m], num_blocks);                            \
                const T* base = cache + block * block_stride + kv0 * head_dim;                        \
                const char* next = 0;                                                                 \
                if (m + 1 < used_blocks) {                                                            \
                    const int64_t nb = clamped_block(table[m + 1], num_blocks);                       \
                    next = (const char*)(cache + nb * block_stride + kv0 * head_dim);                 \
                }                                                                                     \
                const int64_t n = len - m * block_size < block_size ? len - m * block_size : block_size; \
                for (int64_t j = 0; j < n; j++) {                                                     \
                    const T* key = base + j * token_stride;                                           \
                    if (next)                                                                         \
                        for (int64_t off = 0; off < row_bytes; off += 64)                             \
                            __builtin_prefetch(next + j * token_stride * (int64_t)sizeof(T) + off, 0, 1); \
                    for (int64_t h = h0; h < h1; h++)                                                 \
                        scores[h * block_size + j] = DOT(query + h * head_dim, key + (h / group - kv0) * head_dim, head_dim) * scale; \
                }                                                                                     \
                for (int64_t h = h0; h < h1; h++) {                                                   \
                    float* s = scores + h * block_size;                                               \
                    const float peak = block_max(s, n, run_max[h]);                                   \
                    const float correction = expf(run_max[h] - peak);                                 \
                    const float total = run_sum[h] * correction + exp_sum(s, n, peak);                \
                    run_max[h] = peak; run_sum[h] = total;                                            \
                    if (correction != 1.0f) {                                                         \
                        float* a = acc + h * head_dim;                                                \
                        for (int64_t d = 0; d < head_dim; d++) a[d] *= correction;                    \
                    }                                                                                 \
                }                                                                                     \
                const T* values = base + block_size * token_stride;                                   \
                for (int64_t j = 0; j < n; j++) {                                                     \
                    const T* value = values + j * token_stride;                                       \
                    if (next)                                                                         \
                        for (int64_t off = 0; off < row_bytes; off += 64)                             \
                            __builtin_prefetch(next + (block_size + j) * token_stride * (int64_t)sizeof(T) + off, 0, 1); \
                    for (int64_t h = h0; h < h1; h++)                                                 \
                        AXPY(acc + h * head_dim, scores[h * block_size + j], value + (h / group - kv0) * head_dim, head_dim); \
                }                                                                                     \
            }                                                                                         \
            for (int64_t h = h0; h < h1; h++) {                                                       \
                const float inv = run_sum[h] > 0.0f ? 1.0f / run_sum[h] : 0.0f;                       \
                for (int64_t d = 0; d < head_dim; d++)                                                \
                    out[(b * heads + h) * head_dim + d] = STORE(acc[h * head_dim + d] * inv);         \
            }                                                                                         \
        }                                                                                             \
        free(scores);                                                                                 \
    }                                                                                                 \
}


#if defined(__AVX512BF16__) && defined(__AVX512F__)
/* The AVX512-BF16 path for head_dim a multiple of 16 up to 256 (every model in the registry):
   head-major within each 16-token chunk of a block. For one query head, the 16 tokens' q.k
   products stay as 16 vectors of partial sums and are reduced together by one transpose tree
   (45 instructions for 16 scores instead of a horizontal reduction per token); the chunk's
   softmax update runs on that one vector; then p.v for the same head with its accumulator in
   registers (head_dim/16 vectors), so the accumulator is loaded and stored once per chunk, not
   once per token. Each K/V slice read is mirrored by a prefetch of the same slice of the next
   block, so the next block arrives while this one is computed. Same arithmetic as the generic
   path (bf16 products with fp32 sums for q.k, fp32 softmax and p.v), summed in another order. */
static inline __m512 sum16(__m512* v) {
    __m512 s[8], u[4], w[2];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++)
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
static inline __m512 bf16x16_to_f32(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline void prefetch_slice(const char* p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 1);
}

static void paged_decode_bf16_heads(const uint16_t* q, const uint16_t* cache, const int64_t* tables, const int64_t* lens,
                                    uint16_t* out, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                    int64_t block_size, int64_t table_stride, int64_t num_blocks, float scale, int64_t splits,
                                    int64_t q_stride) {
    const int64_t group = heads / kv_heads;
    const int64_t token_stride = kv_heads * head_dim;
    const int64_t block_stride = 2 * block_size * token_stride;
    const int64_t kv_per_split = (kv_heads + splits - 1) / splits;
    /* q.k: 32 bf16 per step, then 16 more where head_dim is an odd multiple of 16; p.v: 16 fp32 per accumulator */
    const int64_t words = head_dim / 32, lanes = head_dim / 16, tail = head_dim % 32 != 0;
    const int64_t slice_bytes = head_dim * (int64_t)sizeof(uint16_t);
    #pragma omp parallel
    {
        float* acc = (float*)malloc(sizeof(float) * (size_t)(heads * head_dim));
        float* run_max = (float*)malloc(sizeof(float) * (size_t)heads);
        float* run_sum = (float*)malloc(sizeof(float) * (size_t)heads);
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < batch * splits; item++) {
            const int64_t b = item / splits;
            const int64_t kv0 = (item % splits) * kv_per_split;
            const int64_t kv1 = kv0 + kv_per_split < kv_heads ? kv0 + kv_per_split : kv_heads;
            if (kv0 >= kv1) continue;
            const int64_t h0 = kv0 * group, h1 = kv1 * group, len = lens[b];
            const int64_t* table = tables + b * table_stride;
            const uint16_t* query = q + b * q_stride;
            for (int64_t h = h0; h < h1; h++) { run_max[h] = -INFINITY; run_sum[h] = 0.0f; }
            memset(acc + h0 * head_dim, 0, sizeof(float) * (size_t)((h1 - h0) * head_dim));
            const int64_t used_blocks = (len + block_size - 1) / block_size;
            for (int64_t m = 0; m < used_blocks; m++) {
                const int64_t block = clamped_block(table[m], num_blocks);
                const uint16_t* keys = cache + block * block_stride;
                const uint16_t* values = keys + block_size * token_stride;
                const char* next = 0;
                if (m + 1 < used_blocks) {
                    const int64_t nb = clamped_block(table[m + 1], num_blocks);
                    next = (const char*)(cache + nb * block_stride);
                }
                const int64_t n_block = len - m * block_size < block_size ? len - m * block_size : block_size;
                for (int64_t c = 0; c < n_block; c += 16) {
                    const int64_t n = n_block - c < 16 ? n_block - c : 16;
                    const __mmask16 valid = (__mmask16)((1u << n) - 1);
                    for (int64_t h = h0; h < h1; h++) {
                        const int64_t slice = (h / group) * head_dim;
                        const uint16_t* qh = query + h * head_dim;
                        __m512 parts[16];
                        for (int64_t j = 0; j < 16; j++) {
                            __m512 dot = _mm512_setzero_ps();
                            if (j < n) {
                                const uint16_t* k = keys + (c + j) * token_stride + slice;
                                if (next && h % group == 0)
                                    prefetch_slice(next + ((c + j) * token_stride + slice) * (int64_t)sizeof(uint16_t), slice_bytes);
                                for (int64_t w = 0; w < words; w++)
                                    dot = _mm512_dpbf16_ps(dot, (__m512bh)_mm512_loadu_si512(qh + 32 * w),
                                                           (__m512bh)_mm512_loadu_si512(k + 32 * w));
                                if (tail)
                                    dot = _mm512_dpbf16_ps(dot, (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, qh + 32 * words),
                                                           (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, k + 32 * words));
                            }
                            parts[j] = dot;
                        }
                        __m512 s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY),
                                                        _mm512_mul_ps(sum16(parts), _mm512_set1_ps(scale)));
                        const float chunk_max = _mm512_reduce_max_ps(s);
                        const float peak = chunk_max > run_max[h] ? chunk_max : run_max[h];
                        const float correction = expf(run_max[h] - peak);
                        const __m512 p = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(s, _mm512_set1_ps(peak))));
                        run_sum[h] = run_sum[h] * correction + _mm512_reduce_add_ps(p);
                        run_max[h] = peak;
                        float probs[16];
                        _mm512_storeu_ps(probs, p);
                        float* a = acc + h * head_dim;
                        __m512 accum[16];
                        const __m512 scale_by = _mm512_set1_ps(correction);
                        for (int64_t l = 0; l < lanes; l++) accum[l] = _mm512_mul_ps(_mm512_loadu_ps(a + 16 * l), scale_by);
                        for (int64_t j = 0; j < n; j++) {
                            const uint16_t* v = values + (c + j) * token_stride + slice;
                            if (next && h % group == 0)
                                prefetch_slice(next + ((block_size + c + j) * token_stride + slice) * (int64_t)sizeof(uint16_t), slice_bytes);
                            const __m512 pj = _mm512_set1_ps(probs[j]);
                            for (int64_t l = 0; l < lanes; l++)
                                accum[l] = _mm512_fmadd_ps(pj, bf16x16_to_f32(v + 16 * l), accum[l]);
                        }
                        for (int64_t l = 0; l < lanes; l++) _mm512_storeu_ps(a + 16 * l, accum[l]);
                    }
                }
            }
            for (int64_t h = h0; h < h1; h++) {
                const float inv = run_sum[h] > 0.0f ? 1.0f / run_sum[h] : 0.0f;
                for (int64_t d = 0; d < head_dim; d++)
                    out[(b * heads + h) * head_dim + d] = f32_to_bf16(acc[h * head_dim + d] * inv);
            }
        }
        free(acc); free(run_max); free(run_sum);
    }
}
#endif

DEFINE_KERNEL(paged_decode_bf16_generic, uint16_t, dot_bf16, axpy_bf16, f32_to_bf16)
DEFINE_KERNEL(paged_decode_f32, float, dot_f32, axpy_f32, f32_identity)

void paged_decode_bf16(const uint16_t* q, const uint16_t* cache, const int64_t* tables, const int64_t* lens, uint16_t* out,
                       int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                       int64_t table_stride, int64_t num_blocks, int64_t max_len, float scale, int64_t splits,
                       int64_t q_stride) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if (head_dim % 16 == 0 && head_dim <= 256) {
        paged_decode_bf16_heads(q, cache, tables, lens, out, batch, heads, kv_heads, head_dim, block_size, table_stride,
                                num_blocks, scale, splits, q_stride);
        return;
    }
#endif
    paged_decode_bf16_generic(q, cache, tables, lens, out, batch, heads, kv_heads, head_dim, block_size, table_stride,
                              num_blocks, max_len, scale, splits, q_stride);
}
