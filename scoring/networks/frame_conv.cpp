// A network's first layer on the frames' own uint8 codes, on a CPU with AVX-512 VNNI and BF16:
// the 9x9 convolution from 3 colour channels to 32 (the 26-style network and TransformerNet),
// the layer with most of a frame's multiplications. Its input is exactly 8 bits a value, so it
// loses nothing as integers; `vpdpbusd` multiplies four uint8 codes by four int8 weights and adds
// them to an int32 sum, twice the products a `vdpbf16ps` makes, and the sums are exact
// (docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08).
//
//     out[o, y, x] = bias[o] + scale[o] * sum over dy, dx, c of codes[y + dy, x + dx, c] * weight[o, c, dy, dx]
//
// codes: uint8 channels-last (N, H, W, C in memory), as the frames come, not padded: the reflect
// pad of k / 2 a side is written here into a scratch copy. weight: int8, a scale per output
// channel (frame_conv.py rounds the layer's weights and folds the codes' unit into the scale);
// out: bf16 channels-last (N, H, W, cout in memory), as the norm after it takes it.
//
// In channels-last the k * C codes a tap row needs at one pixel lie next to each other (27 bytes
// for 3 channels and k = 9), taken four at a time: each group of four is broadcast to every lane
// and multiplied by the group's weights for 16 output channels a vector. Groups run past the row's
// k * C codes into the next pixel's, which meet zero weights (hence the scratch's slack at its end).
// Each sum is exact, so any thread count gives the same output; rounded once, to bf16 (nearest
// even). Threads: OpenMP, over the scratch's rows, then over output rows.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

// Where the CPU has AMX, oneDNN's bf16 tiles run this layer in 2.0-7.6 ms on two threads
// (docs/performance.md#on-a-cpu-with-amx), and these loops were never measured there: the
// build has none, and the layer stays oneDNN's.
#if defined(__AVX512VNNI__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(__AMX_BF16__)
#include <immintrin.h>
#include <omp.h>

namespace {

constexpr long SLACK = 4;  // bytes past the scratch's end that the last pixel's last group reads

long reflect(long i, long n) { return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i; }

// Rows [first, last) of the padded copy: row r is the codes' row r - pad, reflected at the edges,
// its pixels the same way along the row.
void pad_rows(const uint8_t* codes, long C, long height, long width, long pad, uint8_t* padded, long first,
              long last) {
    const long padded_width = width + 2 * pad;
    for (long r = first; r < last; ++r) {
        const uint8_t* source = codes + reflect(r - pad, height) * width * C;
        uint8_t* row = padded + r * padded_width * C;
        std::memcpy(row + pad * C, source, width * C);
        for (long i = 1; i <= pad; ++i) {
            std::memcpy(row + (pad - i) * C, source + i * C, C);
            std::memcpy(row + (pad + width - 1 + i) * C, source + (width - 1 - i) * C, C);
        }
    }
}

// P consecutive pixels' sums over every tap, HV vectors of 16 output channels each, in registers:
// P * HV sums, HV weights and one broadcast fit the 32 vector registers. Not inlined, as in
// narrow_conv.cpp: a loop GCC 12 keeps in registers only on its own.
template <int HV, int P>
__attribute__((noinline)) void accumulate(const uint8_t* at, long row_bytes, long C, long k, long groups,
                                          const int8_t* weights, __m512i (*sums)[HV]) {
    __m512i acc[P][HV];
    #pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
        #pragma GCC unroll 4
        for (int h = 0; h < HV; ++h) acc[p][h] = _mm512_setzero_si512();
    for (long dy = 0; dy < k; ++dy) {
        const uint8_t* row = at + dy * row_bytes;
        const int8_t* w = weights + dy * groups * HV * 64;
        for (long g = 0; g < groups; ++g, w += HV * 64) {
            __m512i wv[HV];
            #pragma GCC unroll 4
            for (int h = 0; h < HV; ++h) wv[h] = _mm512_loadu_si512(w + h * 64);
            #pragma GCC unroll 16
            for (int p = 0; p < P; ++p) {
                int32_t four;
                std::memcpy(&four, row + p * C + 4 * g, 4);
                const __m512i codes = _mm512_set1_epi32(four);
                #pragma GCC unroll 4
                for (int h = 0; h < HV; ++h) acc[p][h] = _mm512_dpbusd_epi32(acc[p][h], codes, wv[h]);
            }
        }
    }
    #pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
        #pragma GCC unroll 4
        for (int h = 0; h < HV; ++h) _mm512_store_si512(&sums[p][h], acc[p][h]);
}

// Output rows [first, last) of one sample, from its padded copy.
template <int HV, int P>
void rows(const uint8_t* padded, long C, long k, long width, const int8_t* weights, const float* scale,
          const float* bias, uint16_t* out, long first, long last) {
    const long row_bytes = (width + k - 1) * C, groups = (k * C + 3) / 4;
    alignas(64) __m512i sums[P][HV];
    for (long y = first; y < last; ++y)
        for (long x0 = 0; x0 < width; x0 += P) {
            const long n = std::min<long>(P, width - x0);
            const uint8_t* at = padded + y * row_bytes + x0 * C;
            if (n == P)
                accumulate<HV, P>(at, row_bytes, C, k, groups, weights, sums);
            else  // the row's last pixels, one at a time
                for (long p = 0; p < n; ++p)
                    accumulate<HV, 1>(at + p * C, row_bytes, C, k, groups, weights, &sums[p]);
            uint16_t* line = out + (y * width + x0) * HV * 16;
            for (long p = 0; p < n; ++p)
                #pragma GCC unroll 4
                for (int h = 0; h < HV; ++h) {
                    const __m512 value = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[p][h]), _mm512_loadu_ps(scale + 16 * h),
                                                         bias ? _mm512_loadu_ps(bias + 16 * h) : _mm512_setzero_ps());
                    _mm256_storeu_si256((__m256i*)(line + p * HV * 16 + 16 * h), (__m256i)_mm512_cvtneps_pbh(value));
                }
        }
}

// The pixels a block holds, measured fastest on the family-26 EPYC (Zen 5).
void sample(const uint8_t* padded, long C, long k, long width, const int8_t* weights, const float* scale,
            const float* bias, long cout, uint16_t* out, long first, long last) {
    switch (cout) {
        case 16: rows<1, 16>(padded, C, k, width, weights, scale, bias, out, first, last); break;
        case 32: rows<2, 6>(padded, C, k, width, weights, scale, bias, out, first, last); break;
        default: rows<4, 6>(padded, C, k, width, weights, scale, bias, out, first, last); break;
    }
}

}  // namespace

extern "C" int frame_conv_takes(long channels, long cout, long k) {
    return channels >= 1 && channels <= 4 && k >= 1 && k % 2 == 1 && (cout == 16 || cout == 32 || cout == 64);
}

// weights: [k, groups, cout / 16, 16, 4] int8, groups = ceil(k * C / 4), each tap row's k * C
// weights in the codes' order (dx, then c) and zeros after them; scale, bias: cout floats (bias
// may be null). Returns 0; 1 where it has no loop, 2 where the scratch could not be allocated.
extern "C" int frame_conv_bf16(const uint8_t* codes, long n, long C, long height, long width, long k,
                               const int8_t* weights, const float* scale, const float* bias, long cout, uint16_t* out,
                               int threads) {
    if (!frame_conv_takes(C, cout, k)) return 1;
    const long pad = k / 2, padded_height = height + 2 * pad, padded_size = padded_height * (width + 2 * pad) * C;
    uint8_t* padded = static_cast<uint8_t*>(std::malloc(padded_size + SLACK));
    if (!padded) return 2;
    std::memset(padded + padded_size, 0, SLACK);
    for (long i = 0; i < n; ++i) {
        const uint8_t* ci = codes + i * height * width * C;
        uint16_t* oi = out + i * height * width * cout;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            pad_rows(ci, C, height, width, pad, padded, padded_height * t / nt, padded_height * (t + 1) / nt);
#pragma omp barrier
            sample(padded, C, k, width, weights, scale, bias, cout, oi, height * t / nt, height * (t + 1) / nt);
        }
    }
    std::free(padded);
    return 0;
}

#else  // no AVX-512 VNNI and BF16, or AMX, on the machine that built it: no loops, the caller takes oneDNN's

extern "C" int frame_conv_takes(long, long, long) { return 0; }
extern "C" int frame_conv_bf16(const uint8_t*, long, long, long, long, long, const int8_t*, const float*, const float*,
                               long, uint16_t*, int) {
    return 1;
}

#endif
