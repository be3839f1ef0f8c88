// A convolution with few output channels (1 to 4), stride 1, on a CPU with AVX-512 BF16: the
// last layer of every style network (the 26-style 4 -> 3, TransformerNet 32 -> 3, the arbitrary
// network 8 -> 3, all 9x9). oneDNN computes such a layer with its output channels across the
// vector lanes, 3 of 16 in use, at a fraction of the speed it reaches on 32 channels; here the
// lanes run along the input instead, the channel pairs of consecutive pixels, so every lane does
// useful work (docs/performance.md#the-last-layer-across-the-lanes-2026-12-08).
//
//     out[o, y, x] = bias[o] + sum over dy, dx, c of x[c, y + dy, x + dx] * weight[o, c, dy, dx]
//
// x: bf16 channels-last (N, H + k - 1, W + k - 1, C in memory), padded already; out: bf16 NCHW.
// In channels-last the C values of a row's consecutive pixels lie next to each other, so one
// 64-byte load at pixel (x + dx) holds, for C <= 32, the channel pairs of 32 / C pixels (C > 32:
// one pixel's takes C / 32 loads), and `vdpbf16ps` multiplies each lane's pair by the same pair
// of weights (repeated along the vector by narrow_conv.py) and adds both products to the lane's
// fp32 sum. After the k * k taps each pixel's lanes are added together (a fixed order: the
// same input gives the same output on any thread count), the bias added and the sum rounded
// once to bf16 (nearest even). Threads: OpenMP over output rows, as fused_norm.cpp.

#include <algorithm>
#include <cstdint>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#include <omp.h>

namespace {

// A block's sums over every tap: ACC vectors of input a tap, each multiplied by the weights
// of every output channel; the ACC * COUT sums stay in registers. MASKED: the row's last
// block, fewer pixels than a block holds, whose loads stop at the row's last pixel. Not
// inlined: inlined into rows(), small changes there made GCC 12 keep the sums on the stack in
// this loop, far slower (docs/performance.md).
template <int COUT, int ACC, int VPP, bool MASKED>
__attribute__((noinline)) void accumulate(const uint16_t* x, long row_values, long C, long k,
                                                      const uint16_t* weights, long pixels,
                                                      float (*sums)[ACC][16]) {
    __mmask32 mask[ACC] = {};
    if constexpr (MASKED)
        for (int v = 0; v < ACC; ++v) {
            const long valid = std::clamp(pixels * C - 32L * v, 0L, 32L);  // of the vector's 32 values
            mask[v] = valid == 32 ? 0xFFFFFFFFu : ((1u << valid) - 1u);
        }
    __m512 acc[COUT][ACC];
    #pragma GCC unroll 4
    for (int o = 0; o < COUT; ++o)
        #pragma GCC unroll 8
        for (int v = 0; v < ACC; ++v) acc[o][v] = _mm512_setzero_ps();
    for (long dy = 0; dy < k; ++dy) {
        const uint16_t* row = x + dy * row_values;
        const uint16_t* w = weights + dy * k * COUT * VPP * 32;
        for (long dx = 0; dx < k; ++dx, row += C, w += COUT * VPP * 32) {
            __m512i in[ACC];
            #pragma GCC unroll 8
            for (int v = 0; v < ACC; ++v)
                if constexpr (MASKED)
                    in[v] = _mm512_maskz_loadu_epi16(mask[v], row + 32 * v);
                else
                    in[v] = _mm512_loadu_si512(row + 32 * v);
            #pragma GCC unroll 4
            for (int o = 0; o < COUT; ++o) {
                __m512bh wv[VPP];  // loaded once, into registers: as memory operands they were the bound
                #pragma GCC unroll 4
                for (int j = 0; j < VPP; ++j)
                    wv[j] = (__m512bh)_mm512_loadu_si512(w + (o * VPP + j) * 32);
                #pragma GCC unroll 8
                for (int v = 0; v < ACC; ++v)
                    acc[o][v] = _mm512_dpbf16_ps(acc[o][v], (__m512bh)in[v], wv[v % VPP]);
            }
        }
    }
    // through memory: indexed by a runtime count later, the sums would leave the registers
    // inside the loop above too
    #pragma GCC unroll 4
    for (int o = 0; o < COUT; ++o)
        #pragma GCC unroll 8
        for (int v = 0; v < ACC; ++v) _mm512_store_ps(sums[o][v], acc[o][v]);
}

// Output rows [first, last) of one sample. VPP: vectors a pixel takes (C > 32), else 1.
template <int COUT, int ACC, int VPP>
void rows(const uint16_t* x, long wp, long C, long k, const uint16_t* weights, const float* bias, uint16_t* out,
          long height, long width, long first, long last) {
    const long block = VPP > 1 ? ACC / VPP : ACC * (32 / C);  // pixels a block gives
    const int group = VPP > 1 ? 16 : int(C / 2);              // lanes summed into one pixel
    const int per_vector = 16 / group;                        // pixels one vector gives (VPP 1)
    // after the sums within each group, one lane of each group holds its pixel's sum
    const __mmask16 keep = group == 1 ? 0xFFFF : group == 2 ? 0x5555 : group == 4 ? 0x1111 : group == 8 ? 0x0101 : 1;
    for (long y = first; y < last; ++y) {
        for (long x0 = 0; x0 < width; x0 += block) {
            const long pixels = std::min(block, width - x0);
            alignas(64) float sums[COUT][ACC][16];
            const uint16_t* at = x + (y * wp + x0) * C;
            if (pixels == block)
                accumulate<COUT, ACC, VPP, false>(at, wp * C, C, k, weights, pixels, sums);
            else
                accumulate<COUT, ACC, VPP, true>(at, wp * C, C, k, weights, pixels, sums);
            for (int o = 0; o < COUT; ++o) {
                uint16_t* line = out + (o * height + y) * width + x0;
                const __m512 b = _mm512_set1_ps(bias ? bias[o] : 0.0f);
                if (VPP == 1) {
                    for (int v = 0; v < ACC; ++v) {
                        if (v * per_vector >= pixels) break;
                        __m512 t = _mm512_load_ps(sums[o][v]);
                        if (group >= 2) t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));        // lane pairs
                        if (group >= 4) t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));        // fours
                        if (group >= 8) t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));  // eights
                        if (group >= 16) t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0x4E));
                        t = _mm512_add_ps(_mm512_maskz_compress_ps(keep, t), b);
                        const long n = std::min<long>(per_vector, pixels - v * per_vector);
                        _mm256_mask_storeu_epi16(line + v * per_vector, __mmask16((1u << n) - 1u),
                                                 (__m256i)_mm512_cvtneps_pbh(t));
                    }
                } else {
                    for (long p = 0; p < pixels; ++p) {
                        __m512 t = _mm512_load_ps(sums[o][p * VPP]);
                        for (int j = 1; j < VPP; ++j) t = _mm512_add_ps(t, _mm512_load_ps(sums[o][p * VPP + j]));
                        const __m512 s = _mm512_add_ps(_mm512_set1_ps(_mm512_reduce_add_ps(t)), b);
                        _mm256_mask_storeu_epi16(line + p, 1, (__m256i)_mm512_cvtneps_pbh(s));
                    }
                }
            }
        }
    }
}

// The block sizes measured fastest on the family-26 EPYC (Zen 5): ACC vectors a tap, so that
// the ACC * COUT sums, ACC inputs and COUT weights fit the 32 vector registers; where a pixel
// takes several vectors, a block holds whole pixels.
template <int COUT, int ACC>
void sample(const uint16_t* x, long wp, long C, long k, const uint16_t* weights, const float* bias, uint16_t* out,
            long height, long width, long first, long last) {
    if (C == 64)
        rows<COUT, ACC / 2 * 2, 2>(x, wp, C, k, weights, bias, out, height, width, first, last);
    else if (C == 128)
        rows<COUT, ACC / 4 * 4, 4>(x, wp, C, k, weights, bias, out, height, width, first, last);
    else
        rows<COUT, ACC, 1>(x, wp, C, k, weights, bias, out, height, width, first, last);
}

}  // namespace

extern "C" int narrow_conv_takes(long channels, long cout) {
    const bool in = channels >= 2 && channels % 2 == 0 && (32 % channels == 0 || channels == 64 || channels == 128);
    return in && cout >= 1 && cout <= 4;
}

// weights: [k, k, cout, VPP, 32] bf16, each tap's C weights repeated to fill a vector (C <= 32)
// or cut into C / 32 vectors. bias: cout floats, or null. Returns 0, or 1 where it has no loop.
extern "C" int narrow_conv_bf16(const uint16_t* x, long n, long C, long height, long width, long k,
                                const uint16_t* weights, const float* bias, long cout, uint16_t* out, int threads) {
    if (!narrow_conv_takes(C, cout)) return 1;
    const long wp = width + k - 1, in_size = (height + k - 1) * wp * C, out_size = cout * height * width;
    for (long i = 0; i < n; ++i) {
        const uint16_t* xi = x + i * in_size;
        uint16_t* oi = out + i * out_size;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const long first = height * t / nt, last = height * (t + 1) / nt;
            switch (cout) {
                case 1: sample<1, 8>(xi, wp, C, k, weights, bias, oi, height, width, first, last); break;
                case 2: sample<2, 8>(xi, wp, C, k, weights, bias, oi, height, width, first, last); break;
                case 3: sample<3, 6>(xi, wp, C, k, weights, bias, oi, height, width, first, last); break;
                default: sample<4, 4>(xi, wp, C, k, weights, bias, oi, height, width, first, last); break;
            }
        }
    }
    return 0;
}

#else  // no AVX-512 BF16 on the machine that built it: no loops, the caller takes oneDNN's

extern "C" int narrow_conv_takes(long, long) { return 0; }
extern "C" int narrow_conv_bf16(const uint16_t*, long, long, long, long, long, const uint16_t*, const float*, long,
                                uint16_t*, int) {
    return 1;
}

#endif
