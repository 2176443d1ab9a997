// Native CPU kernels for lensblur's gather and scatter blur, forward and backward.
//
// The math is exactly that of lensblur/ops/reference.py (read it first); the weights are those of
// lensblur/apertures.py (Aperture.weight).  This file only changes *how* the sums are evaluated.
// It has no dependency on the PyTorch headers: lensblur/ops/native.py builds it with
// torch.utils.cpp_extension (JIT, cached by a hash of this file) and calls the four extern "C"
// entry points at the bottom through ctypes with the tensors' data pointers.
//
// Design
// ------
// * O(radius) spans (disk and polygon apertures, any rotation, roundness and squeeze, without
//   cat's eye).  W(d; R) = clamp(R + 1/2 - n(d), 0, 1) with a convex shape norm n, so every kernel
//   row is one run of weight 1 plus a soft rim at each end.  For a block of pixels of one row
//   (one vector register: 8 floats / 4 doubles with AVX2) the taps of weight 1 for *every* pixel
//   form one run per kernel row, summed with two lookups in row prefix sums kept in double; only
//   the band around it (the rim, widened by the block's spread of radii) is visited tap by tap
//   with each pixel's own weight, and W' lives only there.  See "O(radius) span kernels" below.
//     gather forward        own-kernel spans over the image planes (plane 0 = validity mask)
//     scatter forward       spans of each source written as +v / -v into per-output-row
//                           difference rows (double), prefix-summed once; band taps direct
//     gather backward       d coc: rim taps of p's own kernel; d image: the scatter's spread of gn
//     scatter backward      own-kernel spans and rim taps over the gradient planes (gn, s)
// * No atomics, bitwise identical for any thread count: every output row is computed by one
//   thread, visiting its sources and taps in a fixed order.
// * Image tables and cat's-eye vignetting (the weight is not a function of one norm per tap)
//   keep the tap loops: blocks of N pixels (N = 64 bytes / sizeof(T)) keep their sums in vector
//   registers while the loop walks over the taps (dx, dy), bounded by tile max-coc culling (a
//   block's own window by its largest radius; windows over neighbours' kernels by the largest
//   radius of any tile whose footprint can reach the block's tile); weights per pixel exactly as
//   Aperture.weight.
// * Zero-padded copies of the inputs (KY rows, KX columns, plus slack on the right) remove every
//   border test; plane 0 of the padded image is the validity mask, so the normaliser is one more
//   "channel".  Planes are processed in groups of four, the row pitch avoids multiples of 4 KiB.
// * Threads: a small pool of std::threads that wait passively (condition variables), work items
//   (rows) handed out by an atomic counter -- not OpenMP, whose spinning idle threads fought
//   PyTorch's own OpenMP pool for the cores on a busy machine.
// * Memory is O(B C H W): the padded copies, their prefix sums and a few maps, never an
//   O(H W k^2) buffer.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include <condition_variable>
#include <mutex>
#include <unistd.h>

namespace {

constexpr int G = 4;    // planes per group (sums of one group live in registers together)
constexpr int TY = 8;   // rows per tile of the neighbour bound
#if defined(__AVX512F__)
constexpr int BY = 4;   // spare rows below the padded planes and around the tap-norm table
#else
constexpr int BY = 2;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int N = 64 / static_cast<int>(sizeof(T));
};

template <typename V, typename T>
inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V>
inline V vclamp01(V t) {
  const V zero = t - t;
  const V one = zero + 1;
  t = t > zero ? t : zero;
  return t < one ? t : one;
}

// ------------------------------------------------------------------ threads
// A small pool of std::threads that wait *passively* (condition variables) between jobs.  The
// kernels used to run on OpenMP; PyTorch runs its own OpenMP runtime, and two runtimes whose idle
// threads spin-wait for work steal each other's cores -- on a machine with one busy neighbour
// process that made the kernels 8-12x slower than with OMP_WAIT_POLICY=PASSIVE.  Work items
// (rows) are handed out by an atomic counter; each item is computed by one thread in a fixed
// order, so results do not depend on the number of threads or on who ran which item.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers may outlive static destructors
    if (pool->pid_ != ::getpid()) pool = new Pool();  // forked child: the threads are gone
    return *pool;
  }

  void run(long n, int nthreads, const std::function<void(long)>& f) {
    std::lock_guard<std::mutex> one_job(call_mu_);   // callers from several threads take turns
    const int nw = static_cast<int>(std::min<long>(nthreads, n)) - 1;
    while (nworkers_ < nw) {
      const int id = nworkers_++;
      std::thread([this, id] { loop(id); }).detach();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &f;
      n_ = n;
      next_.store(0);
      want_ = nw;
      busy_ = nw;
      err_ = nullptr;
      ++generation_;
    }
    cv_work_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [this] { return busy_ == 0; });
    job_ = nullptr;
    if (err_) std::rethrow_exception(err_);
  }

 private:
  Pool() : pid_(::getpid()) {}

  void drain() {
    for (;;) {
      const long i = next_.fetch_add(1);
      if (i >= n_) return;
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!err_) err_ = std::current_exception();
        next_.store(n_);
      }
    }
  }

  void loop(int id) {
    long seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_work_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= want_) continue;  // not needed for this job
      lk.unlock();
      drain();
      lk.lock();
      if (--busy_ == 0) cv_done_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex call_mu_, mu_;
  std::condition_variable cv_work_, cv_done_;
  int nworkers_ = 0;
  const std::function<void(long)>* job_ = nullptr;
  long n_ = 0;
  std::atomic<long> next_{0};
  int want_ = 0, busy_ = 0;
  long generation_ = 0;
  std::exception_ptr err_;
};

// f(i) for i in [0, n) on up to nthreads threads (the caller is one of them).
template <typename F>
void parallel_for(long n, int nthreads, F&& f) {
  if (n <= 0) return;
  if (nthreads <= 1 || n == 1) {
    for (long i = 0; i < n; ++i) f(i);
    return;
  }
  const std::function<void(long)> fn(std::ref(f));
  Pool::get().run(n, nthreads, fn);
}

// Everything one call shares: geometry of the padded planes, aperture constants, tap norms.
template <typename T>
struct Ctx {
  static constexpr int N = Vec<T>::N;
  int B = 0, C = 0, H = 0, W = 0;
  int NP = 0;          // planes per batch item (multiple of G); plane 0 = mask (or s)
  int KX = 0, KY = 0;  // global window half widths (= padding)
  int P = 0, Hp = 0;   // row pitch and rows of a padded plane
  size_t plane = 0;    // elements per padded plane
  int NTX = 0;         // 2 KX + 1 (row length of the tap-norm table)
  // aperture
  int kind = 0;        // 0 disk, 1 polygon (roundness < 1), 2 image table
  bool cats = false;
  T sq = 1, kap = 0, hw1 = 0, hh1 = 0;
  double sqd = 1, reach = 1;
  int tab_h = 1, tab_w = 1;  // padded table size
  std::vector<T> tab;         // padded table (tab_h x tab_w)
  std::vector<T> ntap;        // shape norm n(d) of every tap (disk, polygon); BY spare rows of
                              // "far away" above and below the window
  std::vector<T> vxp, vyp;    // cat's-eye frame positions per padded column / row
  int nty = 0, ntx = 0;       // tiles of the neighbour bound
  std::vector<T> tnb;         // per tile: largest radius whose footprint reaches it
  std::vector<T> bmax;        // per row and block of N columns: the largest radius
  std::vector<T> bmin;        // ... and the smallest (span kernels)
  std::vector<T> rowmax;      // per row: the largest radius (span kernels)
  std::vector<int> amin;      // per kernel row dy + KY: the dx of its smallest norm
  int PP = 0;                 // row pitch of the prefix-sum planes (>= P + 1)
  size_t pplane = 0;          // elements per prefix-sum plane

  std::vector<T> nsorted;     // fast path: the window's tap norms, ascending
  std::vector<double> ncum;   // and their prefix sums (ncum[i] = sum of the first i)

  bool fast() const { return kind != 2 && !cats; }

  // Fast path: Z(R) = sum_d clamp(R + 1/2 - n(d), 0, 1) from the sorted norms: the taps with
  // n <= R - 1/2 weigh 1, those with n < R + 1/2 weigh R + 1/2 - n.
  double mass(T R) const {
    const double r5 = double(R + T(0.5));
    const size_t i1 = std::upper_bound(nsorted.begin(), nsorted.end(), T(R - T(0.5))) - nsorted.begin();
    const size_t i0 = std::lower_bound(nsorted.begin(), nsorted.end(), T(R + T(0.5))) - nsorted.begin();
    if (i0 <= i1) return double(i1);
    return double(i1) + double(i0 - i1) * r5 - (ncum[i0] - ncum[i1]);
  }
  size_t idx(int y, int x) const { return static_cast<size_t>(y + KY) * P + (x + KX); }

  // Largest |dy| with weight for radii <= rm (a small slack keeps boundary taps in).
  int ky_for(double rm) const {
    const double e = (rm + 0.5) * reach;
    const int k = static_cast<int>(std::floor(e * (1 + 1e-6) + 1e-6));
    return std::min(std::max(k, 0), KY);
  }
  // Largest |dx| with weight in row dy for radii <= rm, or -1 for an empty row.
  int kx_for(double rm, int dy) const {
    const double e = (rm + 0.5) * reach;
    double h = e;
    if (kind != 2) {
      const double h2 = e * e * (1 + 2e-6) + 1e-6 - static_cast<double>(dy) * dy;
      if (h2 < 0) return -1;
      h = std::sqrt(h2);
    }
    const int k = static_cast<int>(std::floor(h / sqd * (1 + 1e-6) + 1e-6));
    return std::min(std::max(k, 0), KX);
  }
  const T* ntap_row(int dy) const {
    return ntap.data() + static_cast<size_t>(dy + KY + BY) * NTX + KX;
  }
};

// ------------------------------------------------------------------ the weight (general path)
// W(d; R, v) and dW/dc for one pixel, exactly as Aperture.weight (R = c / 2).
template <typename T>
inline void weight1(const Ctx<T>& k, int dx, int dy, T n, T R, T vx, T vy, T& w, T& dw) {
  const T half = T(0.5);
  const T ex = T(dx) * k.sq, ey = T(dy);
  if (k.kind == 2) {
    const T scale = T(1) / (R + half);
    const T xt = (ex * scale + T(1)) * k.hw1 + T(1);
    const T yt = (ey * scale + T(1)) * k.hh1 + T(1);
    const T x0f = std::floor(xt), y0f = std::floor(yt);
    const T fx = xt - x0f, fy = yt - y0f;
    const long x0 = static_cast<long>(x0f), y0 = static_cast<long>(y0f);
    const long wp = k.tab_w, hp = k.tab_h;
    const T* tab = k.tab.data();
    auto at = [&](long yy, long xx) -> T {
      return (xx >= 0 && xx < wp && yy >= 0 && yy < hp) ? tab[yy * wp + xx] : T(0);
    };
    const T t00 = at(y0, x0), t01 = at(y0, x0 + 1), t10 = at(y0 + 1, x0), t11 = at(y0 + 1, x0 + 1);
    const T top = t00 + fx * (t01 - t00);
    const T bot = t10 + fx * (t11 - t10);
    w = top + fy * (bot - top);
    const T dval_dx = (T(1) - fy) * (t01 - t00) + fy * (t11 - t10);
    const T dval_dy = bot - top;
    const T dxt = -k.hw1 * ex * scale * scale;
    const T dyt = -k.hh1 * ey * scale * scale;
    dw = half * (dval_dx * dxt + dval_dy * dyt);
    if (dx == 0 && dy == 0) w += T(1e-6);
  } else {
    const T t = R + half - n;
    w = std::min(std::max(t, T(0)), T(1));
    dw = (t > T(0) && t < T(1)) ? half : T(0);
  }
  if (k.cats) {
    const T kr = k.kap * R;
    const T rx = ex - kr * vx, ry = ey - kr * vy;
    const T rho = std::sqrt(std::max(rx * rx + ry * ry, T(1e-24)));
    const T t2 = R + half - rho;
    const T w2 = std::min(std::max(t2, T(0)), T(1));
    const T dt2 = T(1) + k.kap * (rx * vx + ry * vy) / std::max(rho, T(1e-12));
    const T dw2 = (t2 > T(0) && t2 < T(1)) ? half * dt2 : T(0);
    if (w2 < w) {
      w = w2;
      dw = dw2;
    }
  }
}

// Weights of tap (dx, dy) for the N pixels of a block, general path.  R, vx: per pixel.
template <typename T>
inline void weight_block(const Ctx<T>& k, int dx, int dy, T n, const T* R, const T* vx, T vy,
                         typename Vec<T>::type& w, typename Vec<T>::type* dw) {
  constexpr int N = Vec<T>::N;
  alignas(64) T wa[N];
  alignas(64) T da[N];
  for (int j = 0; j < N; ++j) weight1(k, dx, dy, n, R[j], vx ? vx[j] : T(0), vy, wa[j], da[j]);
  w = vload<typename Vec<T>::type>(wa);
  if (dw) *dw = vload<typename Vec<T>::type>(da);
}

template <typename V>
inline V rim_dw(V t) {
  const V zero = t - t;
  const V one = zero + 1;
  const V half = zero + 0.5;
  return ((t > zero) & (t < one)) ? half : zero;
}

// Block extrema of R over the block's n valid pixels.
template <typename T>
inline void block_range(const T* R, int n, T& rmax, T& rmin) {
  rmax = R[0];
  rmin = R[0];
  for (int j = 1; j < n; ++j) {
    rmax = std::max(rmax, R[j]);
    rmin = std::min(rmin, R[j]);
  }
}

// Stores acc / den of one row of a block's real channels (planes 1..C of group g); den from
// plane 0 (read into dn when normalising and g == 0).
template <typename T>
inline void store_row(const Ctx<T>& k, const typename Vec<T>::type* acc, int g, T* dst, T* dn,
                      bool normalise, int b, int y, int x0, int nb) {
  constexpr int N = Vec<T>::N;
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  if (g == 0 && normalise) vstore(dn, acc[0]);
  for (int c = 0; c < G; ++c) {
    const int ch = g + c - 1;
    if (ch < 0 || ch >= k.C) continue;
    alignas(64) T a[N];
    vstore(a, acc[c]);
    T* o = dst + (static_cast<size_t>(b) * k.C + ch) * hw + static_cast<size_t>(y) * k.W + x0;
    if (normalise) {
      for (int j = 0; j < nb; ++j) o[j] = a[j] / dn[j];
    } else {
      for (int j = 0; j < nb; ++j) o[j] = a[j];
    }
  }
}

// ------------------------------------------------------------------ gather forward
// General path (image tables, cat's eye): one row of blocks, weights per pixel.
template <typename T>
void gather_fwd_row(const Ctx<T>& k, const T* Rp, const T* Ip, T* out, T* den, int b, int y) {
  typedef typename Vec<T>::type V;
  constexpr int N = Vec<T>::N;
  const T* Rb = Rp + b * k.plane;
  const T* Ib = Ip + static_cast<size_t>(b) * k.NP * k.plane;
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  const T vy = k.cats ? k.vyp[y + k.KY] : T(0);
  for (int x0 = 0; x0 < k.W; x0 += N) {
    const int nb = std::min(N, k.W - x0);
    const size_t base = k.idx(y, x0);
    const T* R = Rb + base;
    const T* vx = k.cats ? k.vxp.data() + k.KX + x0 : nullptr;
    T rmax, rmin;
    block_range(R, nb, rmax, rmin);
    const int ky = k.ky_for(rmax);
    alignas(64) T dn[N];
    for (int g = 0; g < k.NP; g += G) {
      V acc[G];
      for (int c = 0; c < G; ++c) acc[c] = V{};
      const T* pl = Ib + g * k.plane + base;
      for (int dy = -ky; dy <= ky; ++dy) {
        const int kx = k.kx_for(rmax, dy);
        if (kx < 0) continue;
        const T* nrow = k.ntap_row(dy);
        const T* src = pl + static_cast<ptrdiff_t>(dy) * k.P;
        for (int dx = -kx; dx <= kx; ++dx) {
          const T* s = src + dx;
          V w;
          weight_block(k, dx, dy, k.kind == 2 ? T(0) : nrow[dx], R, vx, vy, w,
                       static_cast<V*>(nullptr));
          for (int c = 0; c < G; ++c) acc[c] += w * vload<V>(s + c * k.plane);
        }
      }
      store_row(k, acc, g, out, dn, true, b, y, x0, nb);
    }
    T* d = den + static_cast<size_t>(b) * hw + static_cast<size_t>(y) * k.W + x0;
    for (int j = 0; j < nb; ++j) d[j] = dn[j];
  }
}

// ------------------------------------------------------------------ gather backward
// dI(q) = sum_d W(d; c(q-d), q-d) gn(q-d)                   (neighbours' kernels)
// dc(p) = sum_d W'(d; c(p), p) valid(p+d) [sum_ch gn(p) I(p+d)] - s(p) sum_d W' valid(p+d)
// (tap loops: image tables and cat's eye; disk and polygon use the span kernels)
template <typename T>
void gather_bwd_row(const Ctx<T>& k, const T* Rp, const T* Ip, const T* Gp, T* d_img, T* d_coc,
                    int b, int y, std::vector<typename Vec<T>::type>& gnp, bool do_dimg) {
  typedef typename Vec<T>::type V;
  constexpr int N = Vec<T>::N;
  const T* Rb = Rp + b * k.plane;
  const T* Ib = Ip + static_cast<size_t>(b) * k.NP * k.plane;
  const T* Gb = Gp + static_cast<size_t>(b) * k.NP * k.plane;
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  const T vy = k.cats ? k.vyp[y + k.KY] : T(0);
  gnp.resize(k.NP);
  for (int x0 = 0; x0 < k.W; x0 += N) {
    const int nb = std::min(N, k.W - x0);
    const size_t base = k.idx(y, x0);
    const T* R = Rb + base;
    const T* vx = k.cats ? k.vxp.data() + k.KX + x0 : nullptr;
    T rmax, rmin;
    block_range(R, nb, rmax, rmin);
    // ---- d coc: p's own kernel derivative over p's own window (rim taps only)
    gnp[0] = V{};
    for (int c = 1; c < k.NP; ++c) gnp[c] = vload<V>(Gb + c * k.plane + base);
    V acc = V{}, wsum = V{};
    const int ky = k.ky_for(rmax);
    for (int dy = -ky; dy <= ky; ++dy) {
      const int kx = k.kx_for(rmax, dy);
      if (kx < 0) continue;
      const T* nrow = k.ntap_row(dy);
      const T* src = Ib + base + static_cast<ptrdiff_t>(dy) * k.P;
      auto tap = [&](int dx, const V& dw) {
        const T* s = src + dx;
        V gi = V{};
        for (int c = 1; c < k.NP; ++c) gi += gnp[c] * vload<V>(s + c * k.plane);
        acc += dw * gi;
        wsum += dw * vload<V>(s);
      };
      for (int dx = -kx; dx <= kx; ++dx) {
        V w, dw;
        weight_block(k, dx, dy, k.kind == 2 ? T(0) : nrow[dx], R, vx, vy, w, &dw);
        tap(dx, dw);
      }
    }
    {
      alignas(64) T a[N], ws[N];
      vstore(a, acc);
      vstore(ws, wsum);
      const T* sp = Gb + base;  // plane 0 of the gradient planes holds s
      T* d = d_coc + static_cast<size_t>(b) * hw + static_cast<size_t>(y) * k.W + x0;
      for (int j = 0; j < nb; ++j) d[j] = a[j] - ws[j] * sp[j];
    }
    // ---- d image: a gather over the neighbours p = q - d with their own kernels
    if (!do_dimg) continue;
    const T rn = k.tnb[(static_cast<size_t>(b) * k.nty + y / TY) * k.ntx + x0 / N];
    const int kyn = k.ky_for(rn);
    for (int g = 0; g < k.NP; g += G) {
      if (g + G <= 1 || g > k.C) continue;  // groups with no real channel
      V dimg[G];
      for (int c = 0; c < G; ++c) dimg[c] = V{};
      const T* pl = Gb + g * k.plane + base;
      for (int dy = -kyn; dy <= kyn; ++dy) {
        const int kx = k.kx_for(rn, dy);
        if (kx < 0) continue;
        const T* nrow = k.ntap_row(dy);
        const ptrdiff_t qrow = -static_cast<ptrdiff_t>(dy) * k.P;
        const T vyq = k.cats ? k.vyp[y - dy + k.KY] : T(0);
        for (int dx = -kx; dx <= kx; ++dx) {
          const ptrdiff_t q = qrow - dx;  // offset of the neighbour p = q - d
          V w;
          weight_block(k, dx, dy, k.kind == 2 ? T(0) : nrow[dx], R + q,
                       k.cats ? k.vxp.data() + k.KX + x0 - dx : nullptr, vyq, w,
                       static_cast<V*>(nullptr));
          const T* s = pl + q;
          for (int c = 0; c < G; ++c) dimg[c] += w * vload<V>(s + c * k.plane);
        }
      }
      for (int c = 0; c < G; ++c) {
        const int ch = g + c - 1;
        if (ch < 0 || ch >= k.C) continue;
        alignas(64) T a[N];
        vstore(a, dimg[c]);
        T* o = d_img + (static_cast<size_t>(b) * k.C + ch) * hw + static_cast<size_t>(y) * k.W + x0;
        for (int j = 0; j < nb; ++j) o[j] = a[j];
      }
    }
  }
}

// ------------------------------------------------------------------ scatter: kernel mass
// izp(q) = 1 / Z(q), Z(q) = sum_d W(d; c(q), q) over the whole window (no border).
// General path; the fast path reads Z from the sorted tap norms (Ctx::mass).
template <typename T>
void mass_row(const Ctx<T>& k, const T* Rp, T* izp, int b, int y) {
  typedef typename Vec<T>::type V;
  constexpr int N = Vec<T>::N;
  const T* Rb = Rp + b * k.plane;
  const T vy = k.cats ? k.vyp[y + k.KY] : T(0);
  for (int x0 = 0; x0 < k.W; x0 += N) {
    const int nb = std::min(N, k.W - x0);
    const size_t base = k.idx(y, x0);
    const T* R = Rb + base;
    const T* vx = k.cats ? k.vxp.data() + k.KX + x0 : nullptr;
    T rmax, rmin;
    block_range(R, nb, rmax, rmin);
    const int ky = k.ky_for(rmax);
    V z = V{};
    for (int dy = -ky; dy <= ky; ++dy) {
      const int kx = k.kx_for(rmax, dy);
      if (kx < 0) continue;
      const T* nrow = k.ntap_row(dy);
      for (int dx = -kx; dx <= kx; ++dx) {
        V w;
        weight_block(k, dx, dy, k.kind == 2 ? T(0) : nrow[dx], R, vx, vy, w,
                     static_cast<V*>(nullptr));
        z += w;
      }
    }
    alignas(64) T a[N];
    vstore(a, z);
    T* o = izp + b * k.plane + base;
    for (int j = 0; j < nb; ++j) o[j] = T(1) / a[j];
  }
}

// ------------------------------------------------------------------ scatter forward
// out(p) = sum_d a(p-d, d) I(p-d) / den(p),  a(q, d) = W(d; c(q), q) / Z(q)  (0 outside)
// General path (image tables, cat's eye); see neighbour_fast for the fast one.
template <typename T>
void scatter_fwd_row(const Ctx<T>& k, const T* Rp, const T* Ip, const T* izp, T* out, T* den,
                     int b, int y) {
  typedef typename Vec<T>::type V;
  constexpr int N = Vec<T>::N;
  const T* Rb = Rp + b * k.plane;
  const T* Zb = izp + b * k.plane;
  const T* Ib = Ip + static_cast<size_t>(b) * k.NP * k.plane;
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  for (int x0 = 0; x0 < k.W; x0 += N) {
    const int nb = std::min(N, k.W - x0);
    const size_t base = k.idx(y, x0);
    const T rn = k.tnb[(static_cast<size_t>(b) * k.nty + y / TY) * k.ntx + x0 / N];
    const int kyn = k.ky_for(rn);
    alignas(64) T dn[N];
    for (int g = 0; g < k.NP; g += G) {
      if (g > k.C) continue;
      V acc[G];
      for (int c = 0; c < G; ++c) acc[c] = V{};
      const T* pl = Ib + g * k.plane;
      for (int dy = -kyn; dy <= kyn; ++dy) {
        const int kx = k.kx_for(rn, dy);
        if (kx < 0) continue;
        const T* nrow = k.ntap_row(dy);
        const ptrdiff_t qrow = static_cast<ptrdiff_t>(base) - static_cast<ptrdiff_t>(dy) * k.P;
        const T vyq = k.cats ? k.vyp[y - dy + k.KY] : T(0);
        for (int dx = -kx; dx <= kx; ++dx) {
          const ptrdiff_t q = qrow - dx;  // the source pixel q = p - d
          V w;
          weight_block(k, dx, dy, k.kind == 2 ? T(0) : nrow[dx], Rb + q,
                       k.cats ? k.vxp.data() + k.KX + x0 - dx : nullptr, vyq, w,
                       static_cast<V*>(nullptr));
          const V a = w * vload<V>(Zb + q);
          for (int c = 0; c < G; ++c) acc[c] += a * vload<V>(pl + q + c * k.plane);
        }
      }
      store_row(k, acc, g, out, dn, true, b, y, x0, nb);
    }
    T* d = den + static_cast<size_t>(b) * hw + static_cast<size_t>(y) * k.W + x0;
    for (int j = 0; j < nb; ++j) d[j] = dn[j];
  }
}

// ------------------------------------------------------------------ scatter backward
// With da(q, d) = sum_ch I(q) gn(q+d) - s(q+d) (gn, s zero outside the frame):
// dI(q) = sum_d W gn(q+d) / Z;  dc(q) = sum_d W' da / Z - Z' sum_d W da / Z^2.
// (tap loops: image tables and cat's eye; disk and polygon use the span kernels)
template <typename T>
void scatter_bwd_row(const Ctx<T>& k, const T* Rp, const T* Ip, const T* Gp, T* d_img, T* d_coc,
                     int b, int y) {
  typedef typename Vec<T>::type V;
  constexpr int N = Vec<T>::N;
  const T* Rb = Rp + b * k.plane;
  const T* Ib = Ip + static_cast<size_t>(b) * k.NP * k.plane;
  const T* Gb = Gp + static_cast<size_t>(b) * k.NP * k.plane;
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  const T vy = k.cats ? k.vyp[y + k.KY] : T(0);
  for (int x0 = 0; x0 < k.W; x0 += N) {
    const int nb = std::min(N, k.W - x0);
    const size_t base = k.idx(y, x0);
    const T* R = Rb + base;
    const T* vx = k.cats ? k.vxp.data() + k.KX + x0 : nullptr;
    T rmax, rmin;
    block_range(R, nb, rmax, rmin);
    const int ky = k.ky_for(rmax);
    V z = V{}, zp = V{}, pa = V{}, qa = V{}, ps = V{}, qs = V{};
    V iz = V{};
    for (int g = 0; g < k.NP; g += G) {
      if (g > k.C) continue;
      V iq[G], dimg[G];
      for (int c = 0; c < G; ++c) {
        iq[c] = (g + c == 0) ? V{} : vload<V>(Ib + (g + c) * k.plane + base);
        dimg[c] = V{};
      }
      const T* pl = Gb + g * k.plane + base;
      for (int dy = -ky; dy <= ky; ++dy) {
        const int kx = k.kx_for(rmax, dy);
        if (kx < 0) continue;
        const T* nrow = k.ntap_row(dy);
        const T* src = pl + static_cast<ptrdiff_t>(dy) * k.P;
        for (int dx = -kx; dx <= kx; ++dx) {
          const T n = nrow[dx];
          const T* s = src + dx;
          V gq[G];
          for (int c = 0; c < G; ++c) gq[c] = vload<V>(s + c * k.plane);
          V gi = V{};
          for (int c = 0; c < G; ++c) gi += iq[c] * gq[c];
          V w, dw;
          weight_block(k, dx, dy, n, R, vx, vy, w, &dw);
          for (int c = 0; c < G; ++c) dimg[c] += w * gq[c];
          pa += dw * gi;
          qa += w * gi;
          if (g == 0) {
            z += w;
            zp += dw;
            ps += dw * gq[0];
            qs += w * gq[0];
          }
        }
      }
      if (g == 0) iz = T(1) / z;
      for (int c = 0; c < G; ++c) {
        const int ch = g + c - 1;
        if (ch < 0 || ch >= k.C) continue;
        alignas(64) T a[N];
        vstore(a, dimg[c] * iz);
        T* o = d_img + (static_cast<size_t>(b) * k.C + ch) * hw + static_cast<size_t>(y) * k.W + x0;
        for (int j = 0; j < nb; ++j) o[j] = a[j];
      }
    }
    alignas(64) T a[N];
    vstore(a, (pa - ps) * iz - (qa - qs) * zp * iz * iz);
    T* d = d_coc + static_cast<size_t>(b) * hw + static_cast<size_t>(y) * k.W + x0;
    for (int j = 0; j < nb; ++j) d[j] = a[j];
  }
}

// ------------------------------------------------------------------ O(radius) span kernels
// Disk and polygon apertures without cat's eye: W(d; R) = clamp(R + 1/2 - n(d), 0, 1) with one
// norm n per tap.  The shape is convex, so along a kernel row dy the norm first falls, then rises
// (Ctx::amin holds the row's minimum; setup makes the float values exactly unimodal), and for a
// block of N pixels of one row with radii in [rmin, rmax]:
//   * the taps of weight 1 for *every* pixel of the block form one run [ai, bi]: its sum is two
//     lookups in row prefix sums (kept in double: exact enough on 4096-px rows);
//   * the taps of weight > 0 for *some* pixel form a run [ao, bo] around it;
//   * only the band [ao, ai) and (bi, bo] -- the one-pixel rim, widened by rmax - rmin -- is
//     visited tap by tap, with each pixel's own clamped weight.  W' (the coc derivative) lives
//     only there.
// Every pixel therefore costs O(radius) instead of O(radius^2), and the sums are exactly those of
// the tap loop (same weights, only the order of the additions differs).

struct Span {
  int ao, ai, bi, bo;  // outer run [ao, bo]; inner run [ai, bi] (empty: ai = bo + 1, bi = bo)
  bool empty() const { return ao > bo; }
  bool inner() const { return ai <= bi; }
};

// Branch-free searches (the comparisons are data dependent, so branches would mispredict):
// the first dx in [lo, hi] where a monotone false..true predicate holds (it holds at hi), and
// the last dx in [lo, hi] where a true..false predicate holds (it holds at lo).
template <typename P>
inline int first_true(int lo, int hi, P pred) {
  int n = hi - lo + 1, b = lo;
  while (n > 1) {
    const int h = n >> 1;
    b = pred(b + h - 1) ? b : b + h;
    n -= h;
  }
  return b;
}
template <typename P>
inline int last_true(int lo, int hi, P pred) {
  int n = hi - lo + 1, b = lo;
  while (n > 1) {
    const int h = n >> 1;
    b = pred(b + h) ? b + h : b;
    n -= h;
  }
  return b;
}

// Runs of kernel row dy for a block whose radii + 1/2 lie in [rmin5, rmax5].
template <typename T>
inline Span row_span(const Ctx<T>& k, int dy, T rmin5, T rmax5) {
  const T* n = k.ntap_row(dy);
  const int m = k.amin[dy + k.KY];
  Span s{1, 1, 0, 0};
  if (!(n[m] < rmax5)) return s;  // weight 0 for every pixel: n >= R + 1/2
  // the norm falls on [-KX, m] and rises on [m, KX]
  auto outer = [&](int dx) { return n[dx] < rmax5; };
  // weight 1 for every pixel: (R + 1/2) - n >= 1 in T for the smallest R (monotone in R and n)
  auto inner = [&](int dx) { return rmin5 - n[dx] >= T(1); };
  s.ao = first_true(-k.KX, m, outer);
  s.bo = last_true(m, k.KX, outer);
  if (!inner(m)) {
    s.ai = s.bo + 1;
    s.bi = s.bo;
    return s;
  }
  s.ai = first_true(s.ao, m, inner);
  s.bi = last_true(m, s.bo, inner);
  return s;
}

// row_span from a guess: the runs of the same kernel row for a neighbouring block (radii change
// little from block to block), walked from there -- a step or two instead of four searches.
template <typename T>
inline Span row_span_near(const Ctx<T>& k, int dy, T rmin5, T rmax5, const Span& g) {
  if (g.empty()) return row_span(k, dy, rmin5, rmax5);
  const T* n = k.ntap_row(dy);
  const int m = k.amin[dy + k.KY];
  if (!(n[m] < rmax5)) return Span{1, 1, 0, 0};
  auto outer = [&](int dx) { return n[dx] < rmax5; };
  auto inner = [&](int dx) { return rmin5 - n[dx] >= T(1); };
  int a = std::min(std::max(g.ao, -k.KX), m);
  if (outer(a)) {
    while (a > -k.KX && outer(a - 1)) --a;
  } else {
    do ++a; while (!outer(a));
  }
  int b = std::min(std::max(g.bo, m), k.KX);
  if (outer(b)) {
    while (b < k.KX && outer(b + 1)) ++b;
  } else {
    do --b; while (!outer(b));
  }
  if (!inner(m)) return Span{a, b + 1, b, b};
  if (!g.inner()) return Span{a, first_true(a, m, inner), last_true(m, b, inner), b};
  int ai = std::min(std::max(g.ai, a), m);
  if (inner(ai)) {
    while (ai > a && inner(ai - 1)) --ai;
  } else {
    do ++ai; while (!inner(ai));
  }
  int bi = std::min(std::max(g.bi, m), b);
  if (inner(bi)) {
    while (bi < b && inner(bi + 1)) ++bi;
  } else {
    do --bi; while (!inner(bi));
  }
  return Span{a, ai, bi, b};
}

// The span kernels work on blocks of one register of pixels (8 floats or 4 doubles with AVX2):
// a block's band is widened by the spread of its radii, so narrower blocks visit fewer taps.
#if defined(__AVX512F__)
constexpr int SPAN_BYTES = 64;
#else
constexpr int SPAN_BYTES = 32;
#endif
template <typename T>
struct SVec {
  typedef T type __attribute__((vector_size(SPAN_BYTES)));
  static constexpr int N = SPAN_BYTES / static_cast<int>(sizeof(T));
};
template <typename T>
struct VecD {  // N lanes of double, N = SVec<T>::N (the prefix sums)
  typedef double type __attribute__((vector_size(8 * SVec<T>::N)));
};

// Row prefix sums of every padded plane: Pr[row][i] = sum_{x < i} plane[row][x], i = 0..P.
template <typename T>
void fill_prefix(const Ctx<T>& k, const T* planes, double* Pr, int nplanes, int nthreads) {
  const long rows = static_cast<long>(nplanes) * k.Hp;
  parallel_for(rows, nthreads, [&](long r) {
    const T* src = planes + static_cast<size_t>(r) * k.P;
    double* dst = Pr + static_cast<size_t>(r) * k.PP;
    double s = 0.0;
    dst[0] = 0.0;
    for (int x = 0; x < k.P; ++x) {
      s += double(src[x]);
      dst[x + 1] = s;
    }
    for (int x = k.P + 1; x < k.PP; ++x) dst[x] = s;
  });
}

// Per-thread scratch of the span kernels.
template <typename T>
struct Scratch {
  std::vector<Span> spans;
  std::vector<T> S, D;           // NP x N sums of one block
  std::vector<double> diff;      // spread: NP difference rows (pitch PP)
  std::vector<T> direct;         // spread: NP rows of band taps (pitch P)
};

// Own-kernel sums of the N pixels at (y, x0) (batch item's planes Pl, prefix sums Pr):
//   S[c] = sum_d W(d; R(p)) plane_c(p + d)       (WANT_S; needs Pr)
//   D[c] = sum_d W'(d; R(p)) plane_c(p + d)      (WANT_D; rim taps only)
//   z = sum_d W, zp = sum_d W' over the whole window (WANT_Z: the scatter normaliser)
// for every plane c < NP; stored lane by lane in sc.S / sc.D (c * N + j).
template <typename T, bool WANT_S, bool WANT_D, bool WANT_Z>
inline void own_block(const Ctx<T>& k, const T* Rb, const T* Pl, const double* Pr, int y, int x0,
                      int nb, Scratch<T>& sc, typename SVec<T>::type* zo,
                      typename SVec<T>::type* zpo) {
  typedef typename SVec<T>::type V;
  typedef typename VecD<T>::type VD;
  constexpr int N = SVec<T>::N;
  const size_t base = k.idx(y, x0);
  const T* R = Rb + base;
  T rmax, rmin;
  block_range(R, nb, rmax, rmin);
  const V R5 = vload<V>(R) + T(0.5);
  const T rmin5 = rmin + T(0.5), rmax5 = rmax + T(0.5);
  const int ky = k.ky_for(rmax);
  // sc.spans[dy + KY]: this block's runs, walked from the previous block's (empty at a row's start)
  if (x0 == 0) sc.spans.assign(2 * k.KY + 1, Span{1, 1, 0, 0});
  long ninner = 0;
  for (int dy = -ky; dy <= ky; ++dy) {
    Span& s = sc.spans[dy + k.KY];
    s = row_span_near(k, dy, rmin5, rmax5, s);
    if (s.inner()) ninner += s.bi - s.ai + 1;
  }
  V z = V{} + T(ninner), zp = V{};
  const size_t X0 = static_cast<size_t>(x0 + k.KX);
  for (int g = 0; g < k.NP; g += G) {
    V acc[G], dacc[G];
    for (int c = 0; c < G; ++c) {
      acc[c] = V{};
      dacc[c] = V{};
    }
    for (int dy = -ky; dy <= ky; ++dy) {
      const Span s = sc.spans[dy + k.KY];
      if (s.empty()) continue;
      if (WANT_S && s.inner()) {
        const double* pr = Pr + static_cast<size_t>(g) * k.pplane +
                           static_cast<size_t>(y + dy + k.KY) * k.PP + X0;
        for (int c = 0; c < G; ++c) {
          const double* q = pr + static_cast<size_t>(c) * k.pplane;
          // the run's sum is a difference of two large prefix sums: taken in double, it is
          // exact enough to be rounded to T and added like any tap
          acc[c] += __builtin_convertvector(vload<VD>(q + s.bi + 1) - vload<VD>(q + s.ai), V);
        }
      }
      const T* nrow = k.ntap_row(dy);
      const T* src = Pl + static_cast<size_t>(g) * k.plane + base + static_cast<ptrdiff_t>(dy) * k.P;
      // the band: [ao, ai) and (bi, bo] (a plain loop: a lambda here keeps acc in memory)
      for (int side = 0; side < 2; ++side) {
        const int d0 = side ? s.bi + 1 : s.ao, d1 = side ? s.bo : s.ai - 1;
        for (int dx = d0; dx <= d1; ++dx) {
          const V t = R5 - nrow[dx];
          const V w = vclamp01(t);
          const V dw = rim_dw(t);
          if (WANT_Z && g == 0) {
            z += w;
            zp += dw;
          }
          for (int c = 0; c < G; ++c) {
            const V v = vload<V>(src + dx + static_cast<size_t>(c) * k.plane);
            if (WANT_S) acc[c] += w * v;
            if (WANT_D) dacc[c] += dw * v;
          }
        }
      }
    }
    for (int c = 0; c < G; ++c) {
      if (WANT_S) vstore(sc.S.data() + static_cast<size_t>(g + c) * N, acc[c]);
      if (WANT_D) vstore(sc.D.data() + static_cast<size_t>(g + c) * N, dacc[c]);
    }
  }
  if (WANT_Z) {
    *zo = z;
    *zpo = zp;
  }
}

// Spread (scatter) of one output row y: S[c](p) = sum over sources q = p - d of
// W(d; R(q)) [iz(q)] plane_c(q) for every plane c < NP, written to sc.S-like rows `rows`
// (NP rows of W values).  Sources are visited in a fixed order (source row, block), their spans
// go into per-plane difference rows (+v at the run's start, -v after its end, prefix-summed in
// double at the end), their band taps straight into the output row: no atomics, one thread per
// output row, bitwise identical for any thread count.
template <typename T, bool SCALE>
void spread_row(const Ctx<T>& k, const T* Rb, const T* Zb, const T* Pl, int b, int y,
                Scratch<T>& sc, T* rows) {
  typedef typename SVec<T>::type V;
  typedef typename VecD<T>::type VD;
  constexpr int N = SVec<T>::N;
  sc.diff.assign(static_cast<size_t>(k.NP) * k.PP, 0.0);
  sc.direct.assign(static_cast<size_t>(k.NP) * k.P, T(0));
  const T* rmx = k.rowmax.data() + static_cast<size_t>(b) * k.H;
  for (int sq = std::max(0, y - k.KY); sq <= std::min(k.H - 1, y + k.KY); ++sq) {
    const int dy = y - sq;  // the sources' kernel row that lands on row y
    if (k.ky_for(rmx[sq]) < std::abs(dy)) continue;
    const T* bmx = k.bmax.data() + (static_cast<size_t>(b) * k.H + sq) * k.ntx;
    const T* bmn = k.bmin.data() + (static_cast<size_t>(b) * k.H + sq) * k.ntx;
    Span s{1, 1, 0, 0};  // walked from block to block along the source row
    for (int xb = 0; xb < k.ntx; ++xb) {
      const T rmax = bmx[xb];
      if (k.ky_for(rmax) < std::abs(dy)) continue;
      s = row_span_near(k, dy, bmn[xb] + T(0.5), rmax + T(0.5), s);
      if (s.empty()) continue;
      const int x0 = xb * N;
      const size_t q = k.idx(sq, x0);
      const V R5 = vload<V>(Rb + q) + T(0.5);
      V scale = V{} + T(1);
      if (SCALE) scale = vload<V>(Zb + q);
      const T* nrow = k.ntap_row(dy);
      const size_t X0 = static_cast<size_t>(x0 + k.KX);
      for (int g = 0; g < k.NP; g += G) {
        V v[G];
        for (int c = 0; c < G; ++c)
          v[c] = scale * vload<V>(Pl + static_cast<size_t>(g + c) * k.plane + q);
        if (s.inner()) {
          for (int c = 0; c < G; ++c) {
            double* d = sc.diff.data() + static_cast<size_t>(g + c) * k.PP + X0;
            const VD vd = __builtin_convertvector(v[c], VD);
            vstore(d + s.ai, vload<VD>(d + s.ai) + vd);
            vstore(d + s.bi + 1, vload<VD>(d + s.bi + 1) - vd);
          }
        }
        for (int side = 0; side < 2; ++side) {  // the band, tap by tap
          const int d0 = side ? s.bi + 1 : s.ao, d1 = side ? s.bo : s.ai - 1;
          for (int dx = d0; dx <= d1; ++dx) {
            const V w = vclamp01(R5 - nrow[dx]);
            for (int c = 0; c < G; ++c) {
              T* o = sc.direct.data() + static_cast<size_t>(g + c) * k.P + X0 + dx;
              vstore(o, vload<V>(o) + w * v[c]);
            }
          }
        }
      }
    }
  }
  for (int c = 0; c < k.NP; ++c) {
    const double* d = sc.diff.data() + static_cast<size_t>(c) * k.PP;
    const T* o = sc.direct.data() + static_cast<size_t>(c) * k.P;
    T* dst = rows + static_cast<size_t>(c) * k.W;
    double run = 0.0;
    for (int X = 0; X < k.KX; ++X) run += d[X];
    for (int x = 0; x < k.W; ++x) {
      run += d[k.KX + x];
      dst[x] = T(run + double(o[k.KX + x]));
    }
  }
}

// ------------------------------------------------------------------ set-up
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> p;
  explicit Buffer(size_t n) : p(new T[n == 0 ? 1 : n]) {}
  T* get() const { return p.get(); }
};

// Build the context: windows, padding, tap norms, positions, aperture table.
template <typename T>
void setup(Ctx<T>& k, const T* coc, const T* table, int tab_h, int tab_w, const double* prm,
           int B, int C, int H, int W, int nthreads) {
  k.B = B;
  k.C = C;
  k.H = H;
  k.W = W;
  const int kind = static_cast<int>(std::lround(prm[0]));
  const int blades = static_cast<int>(std::lround(prm[1]));
  const double rot = prm[2], rnd = prm[3], sq = prm[4], kap = prm[5];
  k.kind = (kind == 1 && rnd >= 1.0) ? 0 : kind;  // a fully round polygon is the disk
  k.cats = kap > 0.0;
  k.sq = T(sq);
  k.sqd = sq;
  k.kap = T(kap);
  if (k.kind == 2) {
    k.tab_h = tab_h;
    k.tab_w = tab_w;
    k.tab.assign(table, table + static_cast<size_t>(tab_h) * tab_w);
    const int th = tab_h - 2, tw = tab_w - 2;
    k.hw1 = T(0.5 * (tw - 1));
    k.hh1 = T(0.5 * (th - 1));
    k.reach = 1.0 + 2.0 / (std::min(th, tw) - 1);
  }
  // global window from the largest radius
  const size_t hw = static_cast<size_t>(H) * W;
  double cmax = 0.0;
  for (size_t i = 0; i < static_cast<size_t>(B) * hw; ++i) cmax = std::max(cmax, double(coc[i]));
  k.KX = k.KY = 1 << 28;
  const double rmax = 0.5 * cmax;
  k.KY = k.ky_for(rmax);
  k.KX = k.kx_for(rmax, 0);
  k.NTX = 2 * k.KX + 1;
  k.NP = ((C + 1 + G - 1) / G) * G;
  constexpr int N = Vec<T>::N;
  int P = W + 2 * k.KX + N;
  P = ((P + 15) / 16) * 16;
  if ((static_cast<size_t>(P) * sizeof(T)) % 4096 == 0) P += 16;
  k.P = P;
  k.Hp = H + 2 * k.KY + BY;   // BY spare rows below: blocks of BY rows never read past the end
  k.plane = static_cast<size_t>(k.Hp) * P;
  k.PP = ((P + 1 + 7) / 8) * 8;
  if ((static_cast<size_t>(k.PP) * sizeof(double)) % 4096 == 0) k.PP += 8;
  k.pplane = static_cast<size_t>(k.Hp) * k.PP;
  // tap norms (disk, polygon) in T, in the reference's order of operations
  k.ntap.assign(static_cast<size_t>(2 * k.KY + 1 + 2 * BY) * k.NTX, T(1e30));
  if (k.kind != 2) {
    std::vector<T> cs, sn;
    const T inv = T(std::cos(M_PI / std::max(blades, 3)));
    if (k.kind == 1) {
      for (int i = 0; i < blades; ++i) {
        const double a = rot + (2 * i + 1) * M_PI / blades;
        cs.push_back(T(std::cos(a)));
        sn.push_back(T(std::sin(a)));
      }
    }
    for (int dy = -k.KY; dy <= k.KY; ++dy) {
      for (int dx = -k.KX; dx <= k.KX; ++dx) {
        const T ex = T(dx) * k.sq, ey = T(dy);
        T n = std::sqrt(ex * ex + ey * ey);
        if (k.kind == 1) {
          T m = ex * cs[0] + ey * sn[0];
          for (int i = 1; i < blades; ++i) m = std::max(m, ex * cs[i] + ey * sn[i]);
          const T poly = m / inv;
          n = T(1.0 - rnd) * poly + T(rnd) * n;
        }
        k.ntap[static_cast<size_t>(dy + k.KY + BY) * k.NTX + dx + k.KX] = n;
      }
    }
  }
  if (k.fast()) {
    // Make every kernel row exactly unimodal in T (the exact norm is convex along a row; the
    // rounded one may wobble by an ulp near its minimum, e.g. rounded polygons): from the row's
    // smallest value outwards, each value is at least its inner neighbour.  The span kernels
    // rely on it (the taps of weight 1, and those of weight > 0, are then runs); it changes a
    // norm by rounding noise at most.
    k.amin.assign(2 * k.KY + 1, 0);
    for (int dy = -k.KY; dy <= k.KY; ++dy) {
      T* n = k.ntap.data() + static_cast<size_t>(dy + k.KY + BY) * k.NTX + k.KX;
      int m = -k.KX;
      for (int dx = -k.KX + 1; dx <= k.KX; ++dx)
        if (n[dx] < n[m]) m = dx;
      for (int dx = m - 1; dx >= -k.KX; --dx) n[dx] = std::max(n[dx], n[dx + 1]);
      for (int dx = m + 1; dx <= k.KX; ++dx) n[dx] = std::max(n[dx], n[dx - 1]);
      k.amin[dy + k.KY] = m;
    }
    for (T n : k.ntap)
      if (n < T(1e29)) k.nsorted.push_back(n);
    std::sort(k.nsorted.begin(), k.nsorted.end());
    k.ncum.assign(k.nsorted.size() + 1, 0.0);
    for (size_t i = 0; i < k.nsorted.size(); ++i) k.ncum[i + 1] = k.ncum[i] + double(k.nsorted[i]);
  }
  if (k.cats) {
    const double hd = 0.5 * std::sqrt(double(H) * H + double(W) * W);
    const T cx = T((W - 1) / 2.0), cy = T((H - 1) / 2.0), thd = T(hd);
    k.vxp.resize(P + N);
    k.vyp.resize(k.Hp);
    for (int i = 0; i < P + N; ++i) k.vxp[i] = (T(i - k.KX) - cx) / thd;
    for (int i = 0; i < k.Hp; ++i) k.vyp[i] = (T(i - k.KY) - cy) / thd;
  }
  (void)nthreads;
}

// Padded radius plane: R = c / 2 inside, 0 outside.
template <typename T>
void fill_radius(const Ctx<T>& k, const T* coc, T* Rp, int nthreads) {
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  const long rows = static_cast<long>(k.B) * k.Hp;
  parallel_for(rows, nthreads, [&](long r) {
    const int b = static_cast<int>(r / k.Hp), yp = static_cast<int>(r % k.Hp), y = yp - k.KY;
    T* row = Rp + b * k.plane + static_cast<size_t>(yp) * k.P;
    std::fill(row, row + k.P, T(0));
    if (y < 0 || y >= k.H) return;
    const T* src = coc + b * hw + static_cast<size_t>(y) * k.W;
    for (int x = 0; x < k.W; ++x) row[k.KX + x] = T(0.5) * src[x];
  });
}

// Padded planes: plane 0 = first0 (mask 1 when null), planes 1..C = channels, rest zero.
// When `den` is given the channels are grad / den and plane 0 is s = sum_ch gn * out.
template <typename T>
void fill_planes(const Ctx<T>& k, const T* src, const T* den, const T* out, T* dst, int nthreads) {
  const size_t hw = static_cast<size_t>(k.H) * k.W;
  const long rows = static_cast<long>(k.B) * k.Hp;
  parallel_for(rows, nthreads, [&](long r) {
    const int b = static_cast<int>(r / k.Hp), yp = static_cast<int>(r % k.Hp), y = yp - k.KY;
    T* b0 = dst + static_cast<size_t>(b) * k.NP * k.plane + static_cast<size_t>(yp) * k.P;
    for (int c = 0; c < k.NP; ++c) std::fill(b0 + c * k.plane, b0 + c * k.plane + k.P, T(0));
    if (y < 0 || y >= k.H) return;
    const size_t off = static_cast<size_t>(y) * k.W;
    T* p0 = b0 + k.KX;
    if (den == nullptr) {
      for (int x = 0; x < k.W; ++x) p0[x] = T(1);
      for (int c = 0; c < k.C; ++c) {
        const T* s = src + (static_cast<size_t>(b) * k.C + c) * hw + off;
        std::memcpy(p0 + (c + 1) * k.plane, s, sizeof(T) * k.W);
      }
    } else {
      const T* dn = den + b * hw + off;
      for (int c = 0; c < k.C; ++c) {
        const T* g = src + (static_cast<size_t>(b) * k.C + c) * hw + off;
        const T* o = out + (static_cast<size_t>(b) * k.C + c) * hw + off;
        T* gp = p0 + (c + 1) * k.plane;
        for (int x = 0; x < k.W; ++x) {
          gp[x] = g[x] / dn[x];
          p0[x] += gp[x] * o[x];
        }
      }
    }
  });
}

// Neighbour bound: for every tile, the largest radius of any tile whose footprint reaches it.
template <typename T>
void neighbour_bound(Ctx<T>& k, const T* Rp, int nthreads) {
  constexpr int N = Vec<T>::N;
  k.nty = (k.H + TY - 1) / TY;
  k.ntx = (k.W + N - 1) / N;
  const size_t nt = static_cast<size_t>(k.nty) * k.ntx;
  std::vector<T> tmax(k.B * nt, T(0));
  k.bmax.assign(static_cast<size_t>(k.B) * k.H * k.ntx, T(0));
  const long tiles = static_cast<long>(k.B) * k.nty;
  parallel_for(tiles, nthreads, [&](long r) {
    const int b = static_cast<int>(r / k.nty), ty = static_cast<int>(r % k.nty);
    for (int y = ty * TY; y < std::min(k.H, (ty + 1) * TY); ++y) {
      const T* row = Rp + b * k.plane + k.idx(y, 0);
      T* bm = k.bmax.data() + (static_cast<size_t>(b) * k.H + y) * k.ntx;
      for (int x = 0; x < k.W; ++x) bm[x / N] = std::max(bm[x / N], row[x]);
      for (int i = 0; i < k.ntx; ++i) {
        T& m = tmax[b * nt + static_cast<size_t>(ty) * k.ntx + i];
        m = std::max(m, bm[i]);
      }
    }
  });
  k.tnb.assign(k.B * nt, T(0));
  const int rty = (k.KY + TY - 1) / TY + 1, rtx = (k.KX + N - 1) / N + 1;
  parallel_for(tiles, nthreads, [&](long r) {
    const int b = static_cast<int>(r / k.nty), ty = static_cast<int>(r % k.nty);
    for (int tx = 0; tx < k.ntx; ++tx) {
      T best = T(0);
      for (int j = std::max(0, ty - rty); j <= std::min(k.nty - 1, ty + rty); ++j) {
        const int gy = std::max(0, (std::abs(j - ty) - 1) * TY + 1);
        for (int i = std::max(0, tx - rtx); i <= std::min(k.ntx - 1, tx + rtx); ++i) {
          const T m = tmax[b * nt + static_cast<size_t>(j) * k.ntx + i];
          if (m <= best) continue;
          const int gx = std::max(0, (std::abs(i - tx) - 1) * N + 1);
          if (gy <= k.ky_for(m) && gx <= k.kx_for(m, 0)) best = m;
        }
      }
      k.tnb[b * nt + static_cast<size_t>(ty) * k.ntx + tx] = best;
    }
  });
}

// Per row and block of N columns: the smallest and largest radius; per row: the largest.
template <typename T>
void row_bounds(Ctx<T>& k, const T* Rp, int nthreads) {
  constexpr int N = SVec<T>::N;
  k.ntx = (k.W + N - 1) / N;
  const size_t nrow = static_cast<size_t>(k.B) * k.H;
  k.bmax.assign(nrow * k.ntx, T(0));
  k.bmin.assign(nrow * k.ntx, T(0));
  k.rowmax.assign(nrow, T(0));
  parallel_for(static_cast<long>(nrow), nthreads, [&](long r) {
    const int b = static_cast<int>(r / k.H), y = static_cast<int>(r % k.H);
    const T* row = Rp + b * k.plane + k.idx(y, 0);
    T rm = T(0);
    for (int i = 0; i < k.ntx; ++i) {
      T a, c;
      block_range(row + i * N, std::min(N, k.W - i * N), a, c);
      k.bmax[r * k.ntx + i] = a;
      k.bmin[r * k.ntx + i] = c;
      rm = std::max(rm, a);
    }
    k.rowmax[r] = rm;
  });
}

// Writes lane values v (N of them, nb valid) to row y of plane `ch` of a (B, C, H, W) tensor.
template <typename T>
inline void put(const Ctx<T>& k, T* dst, int b, int ch, int y, int x0, int nb, const T* v) {
  T* o = dst + ((static_cast<size_t>(b) * k.C + ch) * k.H + y) * k.W + x0;
  for (int j = 0; j < nb; ++j) o[j] = v[j];
}

template <typename T>
void forward(const T* img, const T* coc, const T* table, int tab_h, int tab_w, const double* prm,
             int method, int B, int C, int H, int W, T* out, T* den, int nthreads) {
  typedef typename SVec<T>::type V;
  constexpr int N = SVec<T>::N;
  Ctx<T> k;
  setup(k, coc, table, tab_h, tab_w, prm, B, C, H, W, nthreads);
  Buffer<T> Rp(B * k.plane);
  fill_radius(k, coc, Rp.get(), nthreads);
  Buffer<T> Ip(static_cast<size_t>(B) * k.NP * k.plane);
  fill_planes(k, img, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), Ip.get(),
              nthreads);
  const long rows = static_cast<long>(B) * H;
  const size_t hw = static_cast<size_t>(H) * W;
  if (!k.fast()) {  // image tables, cat's eye: the tap loops
    if (method == 0) {
      parallel_for(rows, nthreads, [&](long r) {
        gather_fwd_row<T>(k, Rp.get(), Ip.get(), out, den, static_cast<int>(r / H),
                          static_cast<int>(r % H));
      });
      return;
    }
    neighbour_bound(k, Rp.get(), nthreads);
    Buffer<T> iz(B * k.plane);
    std::fill(iz.get(), iz.get() + B * k.plane, T(0));
    parallel_for(rows, nthreads, [&](long r) {
      mass_row<T>(k, Rp.get(), iz.get(), static_cast<int>(r / H), static_cast<int>(r % H));
    });
    parallel_for(rows, nthreads, [&](long r) {
      scatter_fwd_row<T>(k, Rp.get(), Ip.get(), iz.get(), out, den, static_cast<int>(r / H),
                         static_cast<int>(r % H));
    });
    return;
  }
  if (method == 0) {  // gather: own-kernel spans over row prefix sums of the planes
    Buffer<double> Pr(static_cast<size_t>(B) * k.NP * k.pplane);
    fill_prefix(k, Ip.get(), Pr.get(), B * k.NP, nthreads);
    parallel_for(rows, nthreads, [&](long r) {
      const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
      Scratch<T> sc;
      sc.S.resize(static_cast<size_t>(k.NP) * N);
      const T* Rb = Rp.get() + b * k.plane;
      const T* Pl = Ip.get() + static_cast<size_t>(b) * k.NP * k.plane;
      const double* Pb = Pr.get() + static_cast<size_t>(b) * k.NP * k.pplane;
      for (int x0 = 0; x0 < W; x0 += N) {
        const int nb = std::min(N, W - x0);
        own_block<T, true, false, false>(k, Rb, Pl, Pb, y, x0, nb, sc, nullptr, nullptr);
        const T* dn = sc.S.data();
        alignas(64) T v[N];
        for (int ch = 0; ch < C; ++ch) {
          const T* s = sc.S.data() + static_cast<size_t>(ch + 1) * N;
          for (int j = 0; j < nb; ++j) v[j] = s[j] / dn[j];
          put(k, out, b, ch, y, x0, nb, v);
        }
        std::memcpy(den + b * hw + static_cast<size_t>(y) * W + x0, dn, sizeof(T) * nb);
      }
    });
    return;
  }
  // scatter: 1 / Z(q) from the sorted tap norms, then spans spread into difference rows
  row_bounds(k, Rp.get(), nthreads);
  Buffer<T> iz(B * k.plane);
  std::fill(iz.get(), iz.get() + B * k.plane, T(0));
  parallel_for(rows, nthreads, [&](long r) {
    const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
    const T* R = Rp.get() + b * k.plane + k.idx(y, 0);
    T* o = iz.get() + b * k.plane + k.idx(y, 0);
    for (int x = 0; x < W; ++x) o[x] = T(1.0 / k.mass(R[x]));
  });
  parallel_for(rows, nthreads, [&](long r) {
    const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
    Scratch<T> sc;
    std::vector<T> acc(static_cast<size_t>(k.NP) * W);
    spread_row<T, true>(k, Rp.get() + b * k.plane, iz.get() + b * k.plane,
                        Ip.get() + static_cast<size_t>(b) * k.NP * k.plane, b, y, sc, acc.data());
    const T* dn = acc.data();
    for (int ch = 0; ch < C; ++ch) {
      const T* s = acc.data() + static_cast<size_t>(ch + 1) * W;
      T* o = out + ((static_cast<size_t>(b) * C + ch) * H + y) * W;
      for (int x = 0; x < W; ++x) o[x] = s[x] / dn[x];
    }
    std::memcpy(den + b * hw + static_cast<size_t>(y) * W, dn, sizeof(T) * W);
  });
  (void)sizeof(V);
}

template <typename T>
void backward(const T* grad, const T* img, const T* coc, const T* table, int tab_h, int tab_w,
              const double* prm, int method, int B, int C, int H, int W, const T* out,
              const T* den, T* d_img, T* d_coc, int nthreads) {
  typedef typename SVec<T>::type V;
  constexpr int N = SVec<T>::N;
  Ctx<T> k;
  setup(k, coc, table, tab_h, tab_w, prm, B, C, H, W, nthreads);
  Buffer<T> Rp(B * k.plane);
  fill_radius(k, coc, Rp.get(), nthreads);
  Buffer<T> Ip(static_cast<size_t>(B) * k.NP * k.plane);
  fill_planes(k, img, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), Ip.get(),
              nthreads);
  Buffer<T> Gp(static_cast<size_t>(B) * k.NP * k.plane);
  fill_planes(k, grad, den, out, Gp.get(), nthreads);
  const long rows = static_cast<long>(B) * H;
  const size_t hw = static_cast<size_t>(H) * W;
  if (!k.fast()) {  // image tables, cat's eye: the tap loops
    if (method == 0) {
      neighbour_bound(k, Rp.get(), nthreads);
      parallel_for(rows, nthreads, [&](long r) {
        std::vector<typename Vec<T>::type> gnp;
        gather_bwd_row<T>(k, Rp.get(), Ip.get(), Gp.get(), d_img, d_coc,
                                 static_cast<int>(r / H), static_cast<int>(r % H), gnp, true);
      });
    } else {
      parallel_for(rows, nthreads, [&](long r) {
        scatter_bwd_row<T>(k, Rp.get(), Ip.get(), Gp.get(), d_img, d_coc,
                                  static_cast<int>(r / H), static_cast<int>(r % H));
      });
    }
    return;
  }
  if (method == 0) {
    // dc(p) = sum_ch gn_ch(p) D_ch(p) - s(p) D_0(p), D = rim sums of p's own kernel over Ip
    parallel_for(rows, nthreads, [&](long r) {
      const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
      Scratch<T> sc;
      sc.D.resize(static_cast<size_t>(k.NP) * N);
      const T* Rb = Rp.get() + b * k.plane;
      const T* Pl = Ip.get() + static_cast<size_t>(b) * k.NP * k.plane;
      const T* Gb = Gp.get() + static_cast<size_t>(b) * k.NP * k.plane;
      for (int x0 = 0; x0 < W; x0 += N) {
        const int nb = std::min(N, W - x0);
        own_block<T, false, true, false>(k, Rb, Pl, nullptr, y, x0, nb, sc, nullptr, nullptr);
        const size_t base = k.idx(y, x0);
        V dc = -(vload<V>(Gb + base) * vload<V>(sc.D.data()));
        for (int ch = 0; ch < C; ++ch)
          dc += vload<V>(Gb + static_cast<size_t>(ch + 1) * k.plane + base) *
                vload<V>(sc.D.data() + static_cast<size_t>(ch + 1) * N);
        alignas(64) T a[N];
        vstore(a, dc);
        std::memcpy(d_coc + b * hw + static_cast<size_t>(y) * W + x0, a, sizeof(T) * nb);
      }
    });
    // dI(q) = sum_d W(d; c(q - d)) gn(q - d): the gradient planes spread with each p's kernel
    row_bounds(k, Rp.get(), nthreads);
    parallel_for(rows, nthreads, [&](long r) {
      const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
      Scratch<T> sc;
      std::vector<T> acc(static_cast<size_t>(k.NP) * W);
      spread_row<T, false>(k, Rp.get() + b * k.plane, nullptr,
                           Gp.get() + static_cast<size_t>(b) * k.NP * k.plane, b, y, sc,
                           acc.data());
      for (int ch = 0; ch < C; ++ch)
        std::memcpy(d_img + ((static_cast<size_t>(b) * C + ch) * H + y) * W,
                    acc.data() + static_cast<size_t>(ch + 1) * W, sizeof(T) * W);
    });
    return;
  }
  // scatter: with S, D the own-kernel sums (spans) and rim sums over the gradient planes
  // (plane 0 = s, planes 1.. = gn) and z = Z(q), zp = Z'(q):
  //   dI_ch(q) = S_ch / z,  dc(q) = (sum_ch I_ch D_ch - D_0) / z - (sum_ch I_ch S_ch - S_0) zp / z^2
  Buffer<double> Pr(static_cast<size_t>(B) * k.NP * k.pplane);
  fill_prefix(k, Gp.get(), Pr.get(), B * k.NP, nthreads);
  parallel_for(rows, nthreads, [&](long r) {
    const int b = static_cast<int>(r / H), y = static_cast<int>(r % H);
    Scratch<T> sc;
    sc.S.resize(static_cast<size_t>(k.NP) * N);
    sc.D.resize(static_cast<size_t>(k.NP) * N);
    const T* Rb = Rp.get() + b * k.plane;
    const T* Ib = Ip.get() + static_cast<size_t>(b) * k.NP * k.plane;
    const T* Gb = Gp.get() + static_cast<size_t>(b) * k.NP * k.plane;
    const double* Pb = Pr.get() + static_cast<size_t>(b) * k.NP * k.pplane;
    for (int x0 = 0; x0 < W; x0 += N) {
      const int nb = std::min(N, W - x0);
      V z, zp;
      own_block<T, true, true, true>(k, Rb, Gb, Pb, y, x0, nb, sc, &z, &zp);
      const size_t base = k.idx(y, x0);
      const V iz = T(1) / z;
      V pa = -vload<V>(sc.D.data()), qa = -vload<V>(sc.S.data());
      alignas(64) T a[N];
      for (int ch = 0; ch < C; ++ch) {
        const V i = vload<V>(Ib + static_cast<size_t>(ch + 1) * k.plane + base);
        const V s = vload<V>(sc.S.data() + static_cast<size_t>(ch + 1) * N);
        pa += i * vload<V>(sc.D.data() + static_cast<size_t>(ch + 1) * N);
        qa += i * s;
        vstore(a, s * iz);
        put(k, d_img, b, ch, y, x0, nb, a);
      }
      vstore(a, pa * iz - qa * zp * iz * iz);
      std::memcpy(d_coc + b * hw + static_cast<size_t>(y) * W + x0, a, sizeof(T) * nb);
    }
  });
}

int report(const char* what, char* err, int errlen) {
  if (err && errlen > 0) {
    std::strncpy(err, what, errlen - 1);
    err[errlen - 1] = 0;
  }
  return 1;
}

}  // namespace

// ------------------------------------------------------------------ C entry points
// method: 0 gather, 1 scatter.  params: [kind_id, blades, rotation_rad, roundness, squeeze,
// cats_eye].  table: the padded (tab_h x tab_w) image table in T.  All tensors contiguous.
// Returns 0 on success, 1 with a message in err otherwise (no exception crosses this line).
#define LB_TRY(expr)                                 \
  try {                                              \
    expr;                                            \
    return 0;                                        \
  } catch (const std::bad_alloc&) {                  \
    return report("out of memory", err, errlen);     \
  } catch (const std::exception& e) {                \
    return report(e.what(), err, errlen);            \
  } catch (...) {                                    \
    return report("unknown error", err, errlen);     \
  }

extern "C" {

int lensblur_forward_f32(const float* img, const float* coc, const float* table, int tab_h,
                         int tab_w, const double* prm, int method, int B, int C, int H, int W,
                         float* out, float* den, int nthreads, char* err, int errlen) {
  LB_TRY(forward<float>(img, coc, table, tab_h, tab_w, prm, method, B, C, H, W, out, den, nthreads))
}

int lensblur_forward_f64(const double* img, const double* coc, const double* table, int tab_h,
                         int tab_w, const double* prm, int method, int B, int C, int H, int W,
                         double* out, double* den, int nthreads, char* err, int errlen) {
  LB_TRY(forward<double>(img, coc, table, tab_h, tab_w, prm, method, B, C, H, W, out, den, nthreads))
}

int lensblur_backward_f32(const float* grad, const float* img, const float* coc, const float* table,
                          int tab_h, int tab_w, const double* prm, int method, int B, int C, int H,
                          int W, const float* out, const float* den, float* d_img, float* d_coc,
                          int nthreads, char* err, int errlen) {
  LB_TRY(backward<float>(grad, img, coc, table, tab_h, tab_w, prm, method, B, C, H, W, out, den,
                         d_img, d_coc, nthreads))
}

int lensblur_backward_f64(const double* grad, const double* img, const double* coc,
                          const double* table, int tab_h, int tab_w, const double* prm, int method,
                          int B, int C, int H, int W, const double* out, const double* den,
                          double* d_img, double* d_coc, int nthreads, char* err, int errlen) {
  LB_TRY(backward<double>(grad, img, coc, table, tab_h, tab_w, prm, method, B, C, H, W, out, den,
                          d_img, d_coc, nthreads))
}

}  // extern "C"
