// A probe, not shipped: one nn.Linear layer + tanh as a single AVX2/FMA kernel
// (out = tanh(x @ W^T + b), float32, row-major), to measure whether fusing the bias and the
// activation into the matrix product beats MKL's product plus separate passes (bench/fused_probe.py).
// Register blocking 6 rows x 16 columns (12 accumulators), the BLIS/XNNPACK layout: W packed
// once into 16-column panels, each 6-row block of x packed k-major, the bias loaded into the
// accumulators, tanh applied to the finished 6 x 16 tile while it is in L1.  The tanh is Eigen's
// float32 rational approximation (Eigen/src/Core/MathFunctionsImpl.h, generic_fast_tanh_float),
// the same coefficients as odeserve/export/_tanh.py.  N must be a multiple of 16.
#include <immintrin.h>
#include <cstdint>
#include <cstring>
// pack W[N,K] (row-major, nn.Linear) into panels of 16 columns: P[p][k][16]
extern "C" void pack(const float* W, int N, int K, float* P) {
  for (int p = 0; p < N / 16; ++p)
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < 16; ++c) P[(p * K + k) * 16 + c] = W[(p * 16 + c) * K + k];
}
static inline __m256 tanh_r(__m256 x) {
  const __m256 clampv = _mm256_set1_ps(7.90531110763549805f);
  __m256 c = _mm256_min_ps(_mm256_max_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), clampv)), clampv);
  __m256 c2 = _mm256_mul_ps(c, c);
  __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(2.00018790482477e-13f));
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(-8.60467152213735e-11f));
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(5.12229709037114e-08f));
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(1.48572235717979e-05f));
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(6.37261928875436e-04f));
  p = _mm256_fmadd_ps(p, c2, _mm256_set1_ps(4.89352455891786e-03f));
  p = _mm256_mul_ps(p, c);
  __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
  q = _mm256_fmadd_ps(q, c2, _mm256_set1_ps(1.18534705686654e-04f));
  q = _mm256_fmadd_ps(q, c2, _mm256_set1_ps(2.26843463243900e-03f));
  q = _mm256_fmadd_ps(q, c2, _mm256_set1_ps(4.89352518554385e-03f));
  __m256 r = _mm256_div_ps(p, q);
  __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  __m256 tiny = _mm256_cmp_ps(ax, _mm256_set1_ps(4e-4f), _CMP_LT_OQ);
  return _mm256_blendv_ps(r, x, tiny);
}
__attribute__((noinline)) static void tanh_tile(float* C, int ldc, int mr) {
  for (int r = 0; r < mr; ++r) {
    _mm256_storeu_ps(C + r * ldc, tanh_r(_mm256_loadu_ps(C + r * ldc)));
    _mm256_storeu_ps(C + r * ldc + 8, tanh_r(_mm256_loadu_ps(C + r * ldc + 8)));
  }
}
template <int MR, bool TANH>
static inline void micro(const float* __restrict Ap, const float* __restrict P, int K, const float* bias, float* C, int ldc) {
  __m256 b0i = _mm256_loadu_ps(bias), b1i = _mm256_loadu_ps(bias + 8);
  __m256 c00=b0i,c01=b1i,c10=b0i,c11=b1i,c20=b0i,c21=b1i,c30=b0i,c31=b1i,c40=b0i,c41=b1i,c50=b0i,c51=b1i;
  for (int k = 0; k < K; ++k) {
    __m256 b0 = _mm256_load_ps(P), b1 = _mm256_load_ps(P + 8);
    P += 16;
    __m256 a;
#define ROW(r) if (MR > r) { a = _mm256_broadcast_ss(Ap + r); c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0); c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1); }
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    Ap += 6;
  }
#define OUT(r) if (MR > r) { _mm256_storeu_ps(C + r * ldc, c##r##0); _mm256_storeu_ps(C + r * ldc + 8, c##r##1); }
  OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef OUT
  if (TANH) tanh_tile(C, ldc, MR);
}
template <int MR, bool TANH>
static void block(const float* A, int K, const float* P, int N, const float* bias, float* C, float* Ap) {
  for (int k = 0; k < K; ++k) for (int r = 0; r < 6; ++r) Ap[k * 6 + r] = r < MR ? A[r * K + k] : 0.f;
  for (int p = 0; p < N / 16; ++p) micro<MR, TANH>(Ap, P + p * K * 16, K, bias + p * 16, C + p * 16, N);
}
template <bool TANH>
static void run(const float* A, int M, int K, const float* P, int N, const float* bias, float* C) {
  alignas(32) static thread_local float Ap[6 * 4096];
  int i = 0;
  for (; i + 6 <= M; i += 6) block<6, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap);
  switch (M - i) {
    case 1: block<1, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap); break;
    case 2: block<2, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap); break;
    case 3: block<3, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap); break;
    case 4: block<4, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap); break;
    case 5: block<5, TANH>(A + i * K, K, P, N, bias, C + i * N, Ap); break;
  }
}
extern "C" void linear_act(const float* A, int M, int K, const float* P, int N, const float* bias, float* C, int tanh_) {
  if (tanh_) run<true>(A, M, K, P, N, bias, C); else run<false>(A, M, K, P, N, bias, C);
}
