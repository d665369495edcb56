/*
 * The machine's memory read rate for a streaming kernel, by load width: what a WebAssembly
 * kernel (128-bit loads at most) can reach here against a native AVX-512 one (ggml's, llama.cpp's).
 * Each thread sums its share of a buffer as four streams a quarter apart (as the matmul kernels read
 * rows), one independent accumulator per stream. Prints the best and the median of PASSES passes.
 *
 *   bench/memory/run.sh [MIB] [THREADS...]
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define PASSES 15

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* One pass over n floats with `width` bits a load (128 or 512); returns a sum so that nothing is dropped. */
static float pass(const float *a, size_t n, int width) {
  float s = 0;
#pragma omp parallel reduction(+ : s)
  {
    size_t per = n / omp_get_num_threads(), q = per / 4;
    const float *b = a + omp_get_thread_num() * per;
    if (width == 512) {
#ifdef __AVX512F__
      __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
      for (size_t i = 0; i < q; i += 16) {
        c0 = _mm512_add_ps(c0, _mm512_load_ps(b + i));
        c1 = _mm512_add_ps(c1, _mm512_load_ps(b + q + i));
        c2 = _mm512_add_ps(c2, _mm512_load_ps(b + 2 * q + i));
        c3 = _mm512_add_ps(c3, _mm512_load_ps(b + 3 * q + i));
      }
      s += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)));
#endif
    } else {
      __m128 c0 = _mm_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
      for (size_t i = 0; i < q; i += 4) {
        c0 = _mm_add_ps(c0, _mm_load_ps(b + i));
        c1 = _mm_add_ps(c1, _mm_load_ps(b + q + i));
        c2 = _mm_add_ps(c2, _mm_load_ps(b + 2 * q + i));
        c3 = _mm_add_ps(c3, _mm_load_ps(b + 3 * q + i));
      }
      float t[4];
      _mm_storeu_ps(t, _mm_add_ps(_mm_add_ps(c0, c1), _mm_add_ps(c2, c3)));
      s += t[0] + t[1] + t[2] + t[3];
    }
  }
  return s;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 512;
  if (mib < 1 || mib > 65536) {
    fprintf(stderr, "stream: MIB must be 1..65536, got %s\n", argv[1]);
    return 2;
  }
  size_t n = mib << 18; /* floats */
  float *a = aligned_alloc(64, n * 4);
  if (!a) {
    fprintf(stderr, "stream: cannot allocate %zu MiB\n", mib);
    return 1;
  }
  for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023) * 1e-3f;
  int widths[2] = {512, 128};
  for (int w = 0; w < 2; w++) {
#ifndef __AVX512F__
    if (widths[w] == 512) continue;
#endif
    double g[PASSES];
    float s = 0;
    for (int r = 0; r < PASSES; r++) {
      double t = omp_get_wtime();
      s += pass(a, n, widths[w]);
      g[r] = n * 4.0 / (omp_get_wtime() - t) / 1e9;
    }
    qsort(g, PASSES, sizeof g[0], cmp);
    printf("%zu MiB, %d thread(s), %d-bit loads: best %.1f GB/s, median %.1f GB/s (checksum %g)\n", mib, omp_get_max_threads(),
           widths[w], g[PASSES - 1], g[PASSES / 2], (double)s);
  }
  free(a);
  return 0;
}
