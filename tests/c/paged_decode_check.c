/* A C harness for runners/engine/paged_decode.c (tests only): one sequence of 3 cached tokens whose
   keys are equal, so attention is the mean of the values (0, 1, 2) = 1, in both entry points.
   Exit 0 when both are right. Built by tests/test_c_kernel_builds.py for every ISA variant,
   natively or for aarch64 (run under qemu-aarch64). */
#include <stdio.h>
#include <stdint.h>
void paged_decode_f32(const float*, const float*, const int64_t*, const int64_t*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t);
void paged_decode_bf16(const uint16_t*, const uint16_t*, const int64_t*, const int64_t*, uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t);
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
  paged_decode_f32(q, cache, table, lens, out, 1, H, H, D, BS, 1, 1, 3, 0.5f, 1);
  paged_decode_bf16(qb, cb, table, lens, ob, 1, H, H, D, BS, 1, 1, 3, 0.5f, 1);
  printf("f32 out[0]=%g (expect 1), bf16 out[0]=0x%04x (expect 0x3f80)\n", out[0], ob[0]);
  return !(out[0] > 0.99f && out[0] < 1.01f && ob[0] == 0x3F80);
}
