/* Writing a step's new keys and values into the paged KV cache (runners/engine/attention.py `write_kv`).
 *
 * The cache is [blocks][2][block_size][kv_heads * head_dim] (K then V of each block), so a token at slot
 * s = block * block_size + offset has its K row at block * 2 * block_size + offset = s + block * block_size
 * and its V row block_size further. Each token's K and V are one contiguous row each (`row_bytes`); k and v
 * may be strided views (the q/k/v GEMM's output split three ways), hence their own row strides.
 *
 * Why C: the two `index_copy_` calls this replaces took 70 us a layer at 96 decode tokens of OPT-125m (4% of
 * a decode step's samples in a py-spy profile), most of it PyTorch's dispatch and index arithmetic for
 * ~300 KB of copying; through this function it is 25 us, most of that the Python call around it.
 *
 * Inside a step the cache lines a token's rows land on are cold: a plain copy first reads each line from memory
 * (the store's read-for-ownership) and in the engine took ~90 us a layer at 96 tokens where the same copy into
 * cached lines takes 8. Rows that are whole, aligned 64-byte lines are therefore written with non-temporal
 * stores (AVX-512 or AVX2 builds), which skip that read; the rows are read back once, by this step's attention.
 *
 * Returns the index of the first slot outside the cache (nothing is written then), or -1 when all were written.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* dst and bytes are multiples of 64 (the caller checks); src may be unaligned */
static void stream_row(char *dst, const char *src, int64_t bytes) {
#if defined(__AVX512F__)
    for (int64_t i = 0; i < bytes; i += 64)
        _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
#elif defined(__AVX2__)
    for (int64_t i = 0; i < bytes; i += 32)
        _mm256_stream_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
#else
    memcpy(dst, src, (size_t)bytes);
#endif
}

int64_t kv_write_rows(char *cache, int64_t num_blocks, int64_t block_size, int64_t row_bytes, const int64_t *slots,
                      int64_t num_tokens, const char *k, int64_t k_stride, const char *v, int64_t v_stride) {
    for (int64_t i = 0; i < num_tokens; i++)
        if (slots[i] < 0 || slots[i] >= num_blocks * block_size)
            return i;
    const int streamed = row_bytes % 64 == 0 && (uintptr_t)cache % 64 == 0;
    for (int64_t i = 0; i < num_tokens; i++) {
        const int64_t row = slots[i] + slots[i] / block_size * block_size;
        if (streamed) {
            stream_row(cache + row * row_bytes, k + i * k_stride, row_bytes);
            stream_row(cache + (row + block_size) * row_bytes, v + i * v_stride, row_bytes);
        } else {
            memcpy(cache + row * row_bytes, k + i * k_stride, (size_t)row_bytes);
            memcpy(cache + (row + block_size) * row_bytes, v + i * v_stride, (size_t)row_bytes);
        }
    }
#if defined(__AVX2__) || defined(__AVX512F__)
    if (streamed)
        _mm_sfence(); /* the streamed rows are visible before the attention that reads them */
#endif
    return -1;
}
