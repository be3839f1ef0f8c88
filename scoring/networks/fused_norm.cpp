// The step between two convolutions of a style network, in two passes over the activations:
//
//     out = reflect_pad(act(instance_norm(x) * weight + bias + residual), pad)
//
// on a CPU, for bf16 tensors laid out channels-last (N, H, W, C in memory), as a CPU with native
// bf16 runs them, and for fp32 or bf16 ones in NCHW, as other CPUs do. torch does the same in five
// passes (statistics, normalise, add, ReLU, pad), each memory-bound over tens of MB at full
// size: the largest share of a frame once the convolutions ran on AMX
// (docs/performance.md#the-norm-and-what-follows-it-in-two-passes-2026-12-05).
//
// Pass 1 sums each channel (and its squares) over the sample, around a pivot; pass 2 writes
// each output row once, from its source row (the reflected one near the top and bottom), the
// reflected columns copied from the row's own interior. Arithmetic in fp32, sums of rows in
// fp64, the result rounded once (to bf16: nearest even, as torch rounds). Threads: OpenMP,
// which resolves to the libgomp torch has loaded (same soname), so torch's thread pool and its
// thread count; the sums are added in the same order on every run.
//
// Built by fused_norm.py with the machine's own instruction set (-march=native); the loops are
// written so that the compiler vectorises them: NCHW rows summed as an OpenMP simd reduction
// (lanes apart, added in a fixed order), channels-last P values at a time, a multiple of 16
// over which the channels repeat. Written as one loop of 16 lanes per row instead, GCC 12
// vectorised the NCHW sums across rows into shuffles: four times slower than this.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

inline float from_bf16(uint16_t v) {
    uint32_t bits = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t to_bf16(float f) {  // round to nearest even; no NaNs arise here
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return uint16_t(bits >> 16);
}

struct Shape {
    long height, width, channels, pad;
};

// One sample. P: values per step, the channels repeating within it (C divides P).
template <int P>
void one_sample(const uint16_t* x, uint16_t* out, const uint16_t* residual, long residual_row, const Shape& s,
                const float* weight, const float* bias, float eps, bool relu, int threads) {
    const long C = s.channels, row_values = s.width * C;

    // pass 1: per lane sums of (x - pivot), the first pixel's value, which keeps the
    // variance's subtraction small where the mean is large against the spread
    float pivot[P];
    for (int k = 0; k < P; ++k) pivot[k] = from_bf16(x[k % C]);
    // each thread its own rows (a static schedule) and its own sums, added up in thread order:
    // the same frame gives the same output on the same thread count, run after run
    std::vector<double> sums(size_t(threads) * 2 * P, 0.0);
#pragma omp parallel num_threads(threads)
    {
        double* sum = &sums[size_t(omp_get_thread_num()) * 2 * P];
        double* squares = sum + P;
#pragma omp for schedule(static)
        for (long r = 0; r < s.height; ++r) {
            const uint16_t* row = x + r * row_values;
            float a[P] = {}, q[P] = {};
            for (long i = 0; i < row_values; i += P)
                for (int k = 0; k < P; ++k) {
                    float v = from_bf16(row[i + k]) - pivot[k];
                    a[k] += v;
                    q[k] += v * v;
                }
            for (int k = 0; k < P; ++k) {
                sum[k] += a[k];
                squares[k] += q[k];
            }
        }
    }

    // the norm as one multiply-add per value, per lane
    float scale[P], shift[P];
    const double n = double(s.height) * double(s.width);
    for (long c = 0; c < C; ++c) {
        double total = 0, total_squares = 0;
        for (int t = 0; t < threads; ++t)
            for (long k = c; k < P; k += C) {
                total += sums[size_t(t) * 2 * P + k];
                total_squares += sums[size_t(t) * 2 * P + P + k];
            }
        const double offset = total / n, var = std::max(0.0, total_squares / n - offset * offset);
        const double mean = pivot[c] + offset;
        const double m = (weight ? weight[c] : 1.0) / std::sqrt(var + eps);
        for (long k = c; k < P; k += C) {
            scale[k] = float(m);
            shift[k] = float((bias ? bias[c] : 0.0) - mean * m);
        }
    }

    // pass 2: each output row from its source row
    const long out_width = s.width + 2 * s.pad, out_rows = s.height + 2 * s.pad, pad = s.pad;
    const float floor = relu ? 0.0f : -INFINITY;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < out_rows; ++r) {
        long source = std::abs(r - pad);  // reflected at the top ...
        if (source >= s.height) source = 2 * (s.height - 1) - source;  // ... and at the bottom
        const uint16_t* row = x + source * row_values;
        const uint16_t* add = residual ? residual + source * residual_row : nullptr;
        uint16_t* line = out + r * out_width * C;
        uint16_t* inner = line + pad * C;
        for (long i = 0; i < row_values; i += P)
            for (int k = 0; k < P; ++k) {
                float v = from_bf16(row[i + k]) * scale[k] + shift[k];
                if (add) v += from_bf16(add[i + k]);
                inner[i + k] = to_bf16(std::max(v, floor));
            }
        for (long j = 1; j <= pad; ++j) {  // column -j mirrors column j, column W-1+j column W-1-j
            std::memcpy(line + (pad - j) * C, line + (pad + j) * C, C * sizeof(uint16_t));
            std::memcpy(line + (pad + s.width - 1 + j) * C, line + (pad + s.width - 1 - j) * C, C * sizeof(uint16_t));
        }
    }
}

template <int P>
void samples(const uint16_t* x, uint16_t* out, const uint16_t* residual, long residual_row, long residual_sample,
             long count, const Shape& s, const float* weight, const float* bias, float eps, bool relu, int threads) {
    const long in_size = s.height * s.width * s.channels;
    const long out_size = (s.height + 2 * s.pad) * (s.width + 2 * s.pad) * s.channels;
    for (long i = 0; i < count; ++i)
        one_sample<P>(x + i * in_size, out + i * out_size, residual ? residual + i * residual_sample : nullptr,
                      residual_row, s, weight, bias, eps, relu, threads);
}

// NCHW: each plane (one channel of one sample) whole by one thread, so the pass that writes it
// finds it in that core's cache from the statistics pass before. T: float or bf16 (uint16_t).
inline float value(const float* p, long i) { return p[i]; }
inline float value(const uint16_t* p, long i) { return from_bf16(p[i]); }
inline void put(float* p, long i, float v) { p[i] = v; }
inline void put(uint16_t* p, long i, float v) { p[i] = to_bf16(v); }

struct Strides {  // in values; a row's values are next to each other
    long row, plane, sample;
};

template <typename T>
void planes(const T* x, Strides in, T* out, const T* residual, Strides skip, long count, const Shape& s,
            const float* weight, const float* bias, float eps, bool relu, int threads) {
    const long H = s.height, W = s.width, C = s.channels, pad = s.pad;
    const long out_width = W + 2 * pad, out_rows = H + 2 * pad;
    const float floor = relu ? 0.0f : -INFINITY;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < count * C; ++i) {
        const long c = i % C, sample = i / C;
        const T* plane = x + sample * in.sample + c * in.plane;
        T* target = out + i * out_rows * out_width;
        const T* add = residual ? residual + sample * skip.sample + c * skip.plane : nullptr;

        const float pivot = value(plane, 0);
        double total = 0, total_squares = 0;
        for (long r = 0; r < H; ++r) {
            const T* row = plane + r * in.row;
            float a = 0, q = 0;
#pragma omp simd reduction(+ : a, q)
            for (long j = 0; j < W; ++j) {
                float v = value(row, j) - pivot;
                a += v;
                q += v * v;
            }
            total += a;
            total_squares += q;
        }
        const double n = double(H) * double(W), offset = total / n;
        const double var = std::max(0.0, total_squares / n - offset * offset);
        const double m = (weight ? weight[c] : 1.0) / std::sqrt(var + eps);
        const float scale = float(m), shift = float((bias ? bias[c] : 0.0) - (pivot + offset) * m);

        for (long r = 0; r < out_rows; ++r) {
            long source = std::abs(r - pad);
            if (source >= H) source = 2 * (H - 1) - source;
            const T* row = plane + source * in.row;
            const T* sum = add ? add + source * skip.row : nullptr;
            T* line = target + r * out_width;
            for (long j = 0; j < W; ++j) {
                float v = value(row, j) * scale + shift;
                if (sum) v += value(sum, j);
                put(line, pad + j, std::max(v, floor));
            }
            for (long j = 1; j <= pad; ++j) {
                line[pad - j] = line[pad + j];
                line[pad + W - 1 + j] = line[pad + W - 1 - j];
            }
        }
    }
}

}  // namespace

// NCHW: x [count, channels, height, width], fp32 or (bf16 != 0) bf16, its rows, planes and
// samples x_row, x_plane, x_sample values apart (a row's values next to each other); out
// contiguous, padded by `pad` on each side; residual (or null) the same shape as x, with its own
// strides. Returns 0, or -1 for a pad as wide as the input.
extern "C" int norm_then_pad_planes(const void* x, long x_row, long x_plane, long x_sample, void* out,
                                    const void* residual, long residual_row, long residual_plane,
                                    long residual_sample, long count, long height, long width, long channels,
                                    long pad, const float* weight, const float* bias, float eps, int relu,
                                    int threads, int bf16) {
    const Shape s{height, width, channels, pad};
    const Strides in{x_row, x_plane, x_sample}, skip{residual_row, residual_plane, residual_sample};
    if (pad >= height || pad >= width) return -1;
    if (bf16)
        planes(static_cast<const uint16_t*>(x), in, static_cast<uint16_t*>(out),
               static_cast<const uint16_t*>(residual), skip, count, s, weight, bias, eps, relu, threads);
    else
        planes(static_cast<const float*>(x), in, static_cast<float*>(out), static_cast<const float*>(residual), skip,
               count, s, weight, bias, eps, relu, threads);
    return 0;
}

// Channels-last: x [count, height, width, channels] bf16, contiguous; out: the same padded by `pad` on each
// side; residual (or null): [count, height, width, channels] with rows `residual_row` and
// samples `residual_sample` values apart; weight, bias (or null): fp32 per channel.
// Returns 0, or -1 for a shape this file has no loop for (the caller then uses torch's steps).
extern "C" int norm_then_pad_bf16(const uint16_t* x, uint16_t* out, const uint16_t* residual, long residual_row,
                                  long residual_sample, long count, long height, long width, long channels, long pad,
                                  const float* weight, const float* bias, float eps, int relu, int threads) {
    const Shape s{height, width, channels, pad};
    const long values = width * channels;
    if (pad >= height || pad >= width) return -1;
#define RUN(P)                                                                                                 \
    if ((P % channels == 0) && values % P == 0) {                                                              \
        samples<P>(x, out, residual, residual_row, residual_sample, count, s, weight, bias, eps, relu, threads); \
        return 0;                                                                                              \
    }
    if (channels <= 16) RUN(16)
    if (channels <= 32) RUN(32)
    if (channels <= 64) RUN(64)
    if (channels <= 128) RUN(128)
#undef RUN
    return -1;
}
