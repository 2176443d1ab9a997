// Baseline for the benchmarks (not part of the library): a plain tiled tap-loop gather.
//
// The O(radius^2) way that lensblur's native gather worked before its span kernels: float32,
// disk aperture, out(p) = sum_d W(d; c(p)) I(p + d) / sum_d W(d; c(p)) valid(p + d) with
// W = clamp(c/2 + 1/2 - |d|, 0, 1).  Blocks of BY x 16 pixels keep their sums in vector
// registers, walk over the source rows of the block's window (bounded by the block's largest
// radius) and load every source vector once for all BY output rows; zero-padded planes with a
// mask plane remove all border tests.  Built like the library (JIT, -O3 -march=native) by
// benchmarks/baselines.py; threads: std::thread over blocks of rows (no OpenMP).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

namespace {
constexpr int N = 16, BY = 2;
typedef float V __attribute__((vector_size(64)));
inline V ld(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
inline V clamp01(V t) { const V z = t - t, o = z + 1; t = t > z ? t : z; return t < o ? t : o; }
}  // namespace

extern "C" int tap_gather_f32(const float* img, const float* coc, int C, int H, int W, float* out,
                              int nthreads) {
  float cmax = 0;
  for (long i = 0; i < long(H) * W; ++i) cmax = std::max(cmax, coc[i]);
  const int K = std::max(int(std::ceil(0.5 * cmax + 0.5)) - 1, 0);
  const int P = ((W + 2 * K + N + 15) / 16) * 16 + 16, Hp = H + 2 * K + BY;
  const size_t plane = size_t(Hp) * P;
  const int NP = C + 1;
  std::vector<float> pl(plane * NP, 0.f), Rp(plane, 0.f);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const size_t i = size_t(y + K) * P + x + K;
      Rp[i] = 0.5f * coc[size_t(y) * W + x];
      pl[i] = 1.f;
      for (int c = 0; c < C; ++c) pl[(c + 1) * plane + i] = img[(size_t(c) * H + y) * W + x];
    }
  std::vector<float> nt(size_t(2 * K + 1) * (2 * K + 1));
  for (int dy = -K; dy <= K; ++dy)
    for (int dx = -K; dx <= K; ++dx) nt[size_t(dy + K) * (2 * K + 1) + dx + K] = std::sqrt(float(dx * dx + dy * dy));
  std::atomic<int> next{0};
  auto work = [&] {
    std::vector<V> acc(BY * NP);
    for (int y0; (y0 = next.fetch_add(BY)) < H;) {
      const int nr = std::min(BY, H - y0);
      for (int x0 = 0; x0 < W; x0 += N) {
        const int nb = std::min(N, W - x0);
        float rmax = 0;
        for (int r = 0; r < nr; ++r)
          for (int j = 0; j < nb; ++j) rmax = std::max(rmax, Rp[size_t(y0 + r + K) * P + x0 + j + K]);
        const int k = std::min(K, std::max(int(std::ceil(rmax + 0.5f)) - 1, 0));
        V R5[BY];
        for (int r = 0; r < BY; ++r) R5[r] = ld(&Rp[size_t(y0 + r + K) * P + x0 + K]) + 0.5f;
        std::fill(acc.begin(), acc.end(), V{});
        for (int sy = y0 - k; sy <= y0 + nr - 1 + k; ++sy) {
          const float* src = &pl[size_t(sy + K) * P + x0 + K];
          int dmin = 1 << 30;  // the row's window: |dx| <= sqrt((rmax + 1/2)^2 - dy^2)
          for (int r = 0; r < nr; ++r) dmin = std::min(dmin, std::abs(sy - y0 - r));
          const float e = rmax + 0.5f, h2 = e * e - float(dmin) * float(dmin);
          if (h2 <= 0) continue;
          const int kx = std::min(k, int(std::sqrt(h2)));
          for (int dx = -kx; dx <= kx; ++dx) {
            V w[BY];
            for (int r = 0; r < BY; ++r) {
              const int dy = sy - y0 - r;
              w[r] = (dy < -k || dy > k) ? V{} : clamp01(R5[r] - nt[size_t(dy + K) * (2 * K + 1) + dx + K]);
            }
            for (int c = 0; c < NP; ++c) {
              const V s = ld(src + c * plane + dx);
              for (int r = 0; r < BY; ++r) acc[r * NP + c] += w[r] * s;
            }
          }
        }
        for (int r = 0; r < nr; ++r) {
          float a[N], d[N];
          std::memcpy(d, &acc[r * NP], sizeof d);
          for (int c = 0; c < C; ++c) {
            std::memcpy(a, &acc[r * NP + c + 1], sizeof a);
            float* o = out + (size_t(c) * H + y0 + r) * W + x0;
            for (int j = 0; j < nb; ++j) o[j] = a[j] / d[j];
          }
        }
      }
    }
  };
  std::vector<std::thread> ts;
  for (int t = 1; t < nthreads; ++t) ts.emplace_back(work);
  work();
  for (auto& t : ts) t.join();
  return 0;
}
