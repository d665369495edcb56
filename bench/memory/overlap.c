/*
 * Whether a streaming kernel with work to do per byte gets the memory's rate, and what a software
 * prefetch (which WebAssembly does not have) adds. Four streams a quarter apart over 512 MiB, one
 * thread; per 16 bytes K dependent pmaddubsw (integer multiply-adds, as the quantized kernels'
 * arithmetic), then a pmaddwd into an accumulator. Rates in GB/s, best of 7 passes:
 *   in cache   the same loop over 1 MiB (its compute rate),
 *   none       from memory, the hardware prefetchers alone,
 *   prefetch   plus _mm_prefetch of each stream 2 KiB ahead every cache line,
 *   read-ahead plus a plain load of a word 2 KiB ahead every cache line (what the wasm integer
 *              kernels do instead, assembly/kernels.ts READ_AHEAD: a load the core must wait for).
 *
 *   bench/memory/run.sh overlap [K...]
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define AHEAD 2048
static volatile int sink;

enum { NONE, PREFETCH, READ_AHEAD };

static double rate(const unsigned char *a, size_t n, int mode, int K, size_t reps) {
  const __m128i ones = _mm_set1_epi16(1), c = _mm_set1_epi8(3);
  const size_t q = n / 4;
  double best = 0;
  for (int r = 0; r < 7; r++) {
    double t = omp_get_wtime();
    __m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0;
    unsigned ahead = 0;
    for (size_t rep = 0; rep < reps; rep++) {
      for (size_t i = 0; i < q; i += 64) {
        if (mode == PREFETCH) {
          for (int k = 0; k < 4; k++) _mm_prefetch((const char *)a + k * q + i + AHEAD, _MM_HINT_T0);
        } else if (mode == READ_AHEAD && i + AHEAD < q) {
          for (int k = 0; k < 4; k++) ahead ^= *(const unsigned *)(a + k * q + i + AHEAD);
        }
        for (int j = 0; j < 64; j += 16) {
          __m128i v0 = _mm_load_si128((const __m128i *)(a + i + j)), v1 = _mm_load_si128((const __m128i *)(a + q + i + j));
          __m128i v2 = _mm_load_si128((const __m128i *)(a + 2 * q + i + j)), v3 = _mm_load_si128((const __m128i *)(a + 3 * q + i + j));
          for (int k = 0; k < K; k++) {
            v0 = _mm_maddubs_epi16(c, v0); v1 = _mm_maddubs_epi16(c, v1);
            v2 = _mm_maddubs_epi16(c, v2); v3 = _mm_maddubs_epi16(c, v3);
          }
          s0 = _mm_add_epi32(s0, _mm_madd_epi16(v0, ones)); s1 = _mm_add_epi32(s1, _mm_madd_epi16(v1, ones));
          s2 = _mm_add_epi32(s2, _mm_madd_epi16(v2, ones)); s3 = _mm_add_epi32(s3, _mm_madd_epi16(v3, ones));
        }
      }
    }
    t = omp_get_wtime() - t;
    if (n * reps / t / 1e9 > best) best = n * reps / t / 1e9;
    sink = _mm_cvtsi128_si32(_mm_add_epi32(_mm_add_epi32(s0, s1), _mm_add_epi32(s2, s3))) ^ (int)ahead;
  }
  return best;
}

int main(int argc, char **argv) {
  const size_t big = (size_t)512 << 20, small = (size_t)1 << 20;
  unsigned char *a = aligned_alloc(64, big);
  if (!a) {
    fprintf(stderr, "overlap: cannot allocate 512 MiB\n");
    return 1;
  }
  for (size_t i = 0; i < big; i++) a[i] = (unsigned char)(i * 7);
  for (int i = 1; i < argc; i++) {
    char *end;
    long K = strtol(argv[i], &end, 10);
    if (*end || K < 0 || K > 64) {
      fprintf(stderr, "overlap: K must be 0..64, got %s\n", argv[i]);
      return 2;
    }
    printf("K=%ld: in cache %.1f GB/s; from memory: none %.1f, prefetch %.1f, read-ahead %.1f GB/s\n", K,
           rate(a, small, NONE, (int)K, 512), rate(a, big, NONE, (int)K, 1), rate(a, big, PREFETCH, (int)K, 1),
           rate(a, big, READ_AHEAD, (int)K, 1));
  }
  free(a);
  return 0;
}
