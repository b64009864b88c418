/* A C harness for the engine's C library (tests only). runners/engine/paged_decode.c: one sequence of
   3 cached tokens whose keys are equal, so attention is the mean of the values (0, 1, 2) = 1, in both
   entry points, at head_dim 8 and at head_dim 32 (the AVX512-BF16 build's head-by-head path).
   runners/engine/greedy_argmax.c: the first of two maxima, past one 16-lane step. Exit 0 when all are right. Built by tests/test_c_kernel_builds.py for every ISA variant,
   natively or for aarch64 (run under qemu-aarch64). */
#include <stdio.h>
#include <stdint.h>
void paged_decode_f32(const float*, const float*, const int64_t*, const int64_t*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, int64_t);
void argmax_rows_bf16(const uint16_t*, int64_t, int64_t, int64_t*);
void paged_decode_bf16(const uint16_t*, const uint16_t*, const int64_t*, const int64_t*, uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, int64_t);
int main(void) {
  enum {H = 2, D = 8, BS = 4};
  float q[H * D], cache[2 * BS * H * D], out[H * D];
  uint16_t qb[H * D], cb[2 * BS * H * D], ob[H * D];
  for (int i = 0; i < H * D; i++) { q[i] = 1.0f; qb[i] = 0x3F80; }
  /* V rows differ by token so the result checks the softmax weights: keys equal -> mean of values */
  for (int t = 0; t < BS; t++) for (int j = 0; j < H * D; j++) {
    cache[t * H * D + j] = 1.0f; cb[t * H * D + j] = 0x3F80;
    cache[(BS + t) * H * D + j] = (float)t; cb[(BS + t) * H * D + j] = t == 0 ? 0 : (t == 1 ? 0x3F80 : (t == 2 ? 0x4000 : 0x4040));
  }
  int64_t table[1] = {0}, lens[1] = {3};
  paged_decode_f32(q, cache, table, lens, out, 1, H, H, D, BS, 1, 1, 3, 0.5f, 1, H * D);
  paged_decode_bf16(qb, cb, table, lens, ob, 1, H, H, D, BS, 1, 1, 3, 0.5f, 1, H * D);
  /* head_dim 32, one head: the same cache pattern */
  enum {D2 = 32};
  uint16_t q2[D2], c2[2 * BS * D2], o2[D2];
  for (int i = 0; i < D2; i++) q2[i] = 0x3F80;
  for (int t = 0; t < BS; t++) for (int j = 0; j < D2; j++) {
    c2[t * D2 + j] = 0x3F80;
    c2[(BS + t) * D2 + j] = t == 0 ? 0 : (t == 1 ? 0x3F80 : (t == 2 ? 0x4000 : 0x4040));
  }
  paged_decode_bf16(q2, c2, table, lens, o2, 1, 1, 1, D2, BS, 1, 1, 3, 0.5f, 1, D2);
  uint16_t logits[40];
  for (int i = 0; i < 40; i++) logits[i] = 0x3F80;
  logits[21] = logits[37] = 0x4000;
  int64_t top = -1;
  argmax_rows_bf16(logits, 1, 40, &top);
  printf("f32 out[0]=%g (expect 1), bf16 out[0]=0x%04x, head_dim 32 out[31]=0x%04x (expect 0x3f80), argmax %ld (expect 21)\n",
         out[0], ob[0], o2[31], (long)top);
  return !(out[0] > 0.99f && out[0] < 1.01f && ob[0] == 0x3F80 && o2[31] == 0x3F80 && top == 21);
}
