"""The CUDA C++ of the device reduction kernels, one module per data type, for NVRTC.

``source(dtype)`` returns a self-contained translation unit (no ``#include``: NVRTC then needs
none of the CUDA toolkit's headers, only libnvrtc) holding six ``extern "C" __global__`` kernels:

- ``pyx_add`` / ``pyx_mul`` / ``pyx_min`` / ``pyx_max (T* out, const T* a, const T* b, u64 n)``:
  ``out[i] = a[i] op b[i]`` (sum, avg and premul_sum all add);
- ``pyx_scale(T* out, const T* in, double factor, u64 n)``: premul_sum's prescale;
- ``pyx_divide(T* x, u64 n, unsigned nranks)``: avg's postdivide, in place.

Every result is the one the host kernels (:mod:`.host`, numpy and ml_dtypes) give, bit for bit
(NaN payloads aside: a GPU's arithmetic makes the canonical NaN where x86 passes an operand's on):

- integers wrap (sums and products are done unsigned); avg truncates toward zero;
- float16 arithmetic is numpy's: each operand widened to float32, the float32 result rounded
  once, nearest-even; its NaN conversion keeps the payload's top bits as numpy's does;
- bfloat16 and the fp8 types compute in float32 and round once as ml_dtypes does: NaN becomes
  the type's quiet NaN (keeping the sign); float8_e4m3fn has no infinity, so whatever rounds past
  448 (infinities too) becomes NaN; float8_e5m2 overflows to infinity;
- min/max are numpy's ``minimum``/``maximum``: a NaN in ``a`` is the result, else one in ``b``;
  equal operands (+0 and -0) give ``b``, except for float16, whose numpy loop gives ``a``;
- premul_sum's factor is cast as :func:`.host.prescale` casts it: to the type itself for
  float16/32/64 (float16 straight from the double, one rounding), to float32 for bf16 and fp8.

The conversions are bit manipulation in ``__device__ __host__`` inline functions that any C++17
compiler builds, which is how the tests check them on a machine without a GPU (all 65536
float16/bfloat16 and 256 fp8 patterns, rounding from float32 against ml_dtypes). Widening
places the bits under float32's exponent and multiplies by a power of two (exact, subnormals
too); narrowing rounds the normal range with the integer carry trick and the subnormal range
by adding a float whose ulp is the target's smallest step (the FPU rounds nearest-even). This
needs IEEE float32 without flushing subnormals: the options in :mod:`.cuda` keep ``--ftz=false``
and ``--fmad=false``.

The kernels are grid-stride loops that move 16 bytes a thread per step when out, a and b share
their alignment modulo 16 (a scalar head up to the first 16-byte boundary, a scalar tail), and
element by element otherwise. ``out`` may be ``a`` or ``b``: each step loads before it stores.
"""

from __future__ import annotations

from ...dtypes import DType, dtype_of

_COMMON = r"""
typedef signed char pyx_i8;
typedef unsigned char pyx_u8;
typedef unsigned short pyx_u16;
typedef int pyx_i32;
typedef unsigned int pyx_u32;
typedef long long pyx_i64;
typedef unsigned long long pyx_u64;

#define PYX_FN static inline __device__ __host__

"""

# the conversions, each type taking the pieces it needs (NVRTC warns of unused static functions)
_BITS = r"""
union pyx_f32_bits { float f; pyx_u32 u; };
PYX_FN pyx_u32 pyx_bits32(float f) { pyx_f32_bits b; b.f = f; return b.u; }
PYX_FN float pyx_float32(pyx_u32 u) { pyx_f32_bits b; b.u = u; return b.f; }
"""

_ROUND = r"""
/* |x| (float32 bits, not NaN) rounded nearest-even to a format of M mantissa bits and exponent
   bias B, as its magnitude code; LIMIT (the infinity's code, or NaN's where there is no
   infinity) for anything that rounds past the largest finite value. */
template <int M, int B, pyx_u32 LIMIT>
PYX_FN pyx_u32 pyx_round_f32(pyx_u32 ax) {
    const pyx_u32 min_normal = (pyx_u32)(128 - B) << 23;
    if (ax < min_normal) {
        /* subnormal in the target: the float32 adder rounds |x| + 2^(24-B-M), whose ulp is the
           target's smallest step, nearest-even; the code is how many steps were added */
        const float magic = pyx_float32((pyx_u32)(151 - B - M) << 23);
        return pyx_bits32(pyx_float32(ax) + magic) - pyx_bits32(magic);
    }
    const int S = 23 - M;
    pyx_u32 code = (ax + ((1u << (S - 1)) - 1u) + ((ax >> S) & 1u)) >> S;
    code -= (pyx_u32)(127 - B) << M;
    return code < LIMIT ? code : LIMIT;
}
"""

_F16 = r"""
/* float16, numpy's conversions (a NaN keeps its payload's top bits) */
PYX_FN float pyx_f16_to_f32(pyx_u16 h) {
    const pyx_u32 sign = (pyx_u32)(h & 0x8000u) << 16, mag = h & 0x7fffu;
    if (mag >= 0x7c00u) return pyx_float32(sign | 0x7f800000u | ((mag & 0x3ffu) << 13));
    return pyx_float32(pyx_bits32(pyx_float32(mag << 13) * 0x1p112f) | sign);
}
PYX_FN pyx_u16 pyx_f32_to_f16(float f) {
    const pyx_u32 x = pyx_bits32(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        pyx_u32 h = 0x7c00u + ((ax & 0x7fffffu) >> 13);
        return (pyx_u16)(sign | (h == 0x7c00u ? 0x7c01u : h));
    }
    return (pyx_u16)(sign | pyx_round_f32<10, 15, 0x7c00u>(ax));
}
/* a double straight to float16, one rounding (numpy's np.float16(python float)) */
union pyx_f64_bits { double f; pyx_u64 u; };
PYX_FN pyx_u64 pyx_bits64(double f) { pyx_f64_bits b; b.f = f; return b.u; }
PYX_FN pyx_u16 pyx_f64_to_f16(double d) {
    const pyx_u64 x = pyx_bits64(d), ax = x & 0x7fffffffffffffffull;
    const pyx_u32 sign = (pyx_u32)(x >> 48) & 0x8000u;
    if (ax > 0x7ff0000000000000ull) {
        pyx_u32 h = 0x7c00u + (pyx_u32)((ax & 0xfffffffffffffull) >> 42);
        return (pyx_u16)(sign | (h == 0x7c00u ? 0x7c01u : h));
    }
    const int e = (int)(ax >> 52) - 1023;
    pyx_u64 code;
    if (e >= 16) {
        code = 0x7c00u;
    } else if (e >= -14) {
        code = ((ax + (1ull << 41) - 1u + ((ax >> 42) & 1u)) >> 42) - ((pyx_u64)(1023 - 15) << 10);
        if (code > 0x7c00u) code = 0x7c00u;
    } else if (e >= -25) {
        const pyx_u64 sig = (ax & 0xfffffffffffffull) | (1ull << 52);
        const int s = 28 - e;
        code = (sig + (1ull << (s - 1)) - 1u + ((sig >> s) & 1u)) >> s;
    } else {
        code = 0;
    }
    return (pyx_u16)(sign | (pyx_u32)code);
}
"""

_BF16 = r"""
/* bfloat16, ml_dtypes' conversions (a NaN becomes the quiet NaN, keeping the sign) */
PYX_FN float pyx_bf16_to_f32(pyx_u16 h) { return pyx_float32((pyx_u32)h << 16); }
PYX_FN pyx_u16 pyx_f32_to_bf16(float f) {
    const pyx_u32 x = pyx_bits32(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (pyx_u16)(((x >> 16) & 0x8000u) | 0x7fc0u);
    return (pyx_u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
"""

_E4M3 = r"""
/* float8_e4m3fn (bias 7, no infinity, NaN = S.1111.111), ml_dtypes' conversions */
PYX_FN float pyx_e4m3_to_f32(pyx_u8 b) {
    const pyx_u32 sign = (pyx_u32)(b & 0x80u) << 24, mag = b & 0x7fu;
    if (mag == 0x7fu) return pyx_float32(sign | 0x7fc00000u);
    return pyx_float32(pyx_bits32(pyx_float32(mag << 20) * 0x1p120f) | sign);
}
PYX_FN pyx_u8 pyx_f32_to_e4m3(float f) {
    const pyx_u32 x = pyx_bits32(f), sign = (x >> 24) & 0x80u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (pyx_u8)(sign | 0x7fu);
    return (pyx_u8)(sign | pyx_round_f32<3, 7, 0x7fu>(ax));
}
"""

_E5M2 = r"""
/* float8_e5m2 (bias 15, IEEE-like), ml_dtypes' conversions */
PYX_FN float pyx_e5m2_to_f32(pyx_u8 b) {
    const pyx_u32 sign = (pyx_u32)(b & 0x80u) << 24, mag = b & 0x7fu;
    if (mag > 0x7cu) return pyx_float32(sign | 0x7fc00000u);
    if (mag == 0x7cu) return pyx_float32(sign | 0x7f800000u);
    return pyx_float32(pyx_bits32(pyx_float32(mag << 21) * 0x1p112f) | sign);
}
PYX_FN pyx_u8 pyx_f32_to_e5m2(float f) {
    const pyx_u32 x = pyx_bits32(f), sign = (x >> 24) & 0x80u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (pyx_u8)(sign | 0x7eu);
    return (pyx_u8)(sign | pyx_round_f32<2, 15, 0x7cu>(ax));
}
"""

# ---- per-type element functions: storage type pyx_s, compute type pyx_c, pyx_load/pyx_store,
# the four binary operations, the prescale factor and the postdivide divisor

_INT = r"""
typedef {T} pyx_s;
typedef {W} pyx_w;   /* unsigned, at least as wide: wrapping arithmetic */
PYX_FN pyx_s pyx_e_add(pyx_s a, pyx_s b) {{ return (pyx_s)((pyx_w)a + (pyx_w)b); }}
PYX_FN pyx_s pyx_e_mul(pyx_s a, pyx_s b) {{ return (pyx_s)((pyx_w)a * (pyx_w)b); }}
PYX_FN pyx_s pyx_e_min(pyx_s a, pyx_s b) {{ return a < b ? a : b; }}
PYX_FN pyx_s pyx_e_max(pyx_s a, pyx_s b) {{ return a > b ? a : b; }}
/* premul_sum is for floats (check_op_dtype); for integers the factor truncates, as numpy's int(x) */
typedef pyx_s pyx_factor_t;
PYX_FN pyx_factor_t pyx_factor(double f) {{ return (pyx_s)f; }}  /* f must fit */
PYX_FN pyx_s pyx_e_scale(pyx_s x, pyx_factor_t f) {{ return pyx_e_mul(x, f); }}
typedef {D} pyx_divisor_t;
PYX_FN pyx_divisor_t pyx_divisor(pyx_u32 nranks) {{ return (pyx_divisor_t)nranks; }}
{DIVIDE}
"""

# signed division truncates toward zero (NCCL's SumPostDiv, host.postdivide); 32-bit types
# divide their magnitude in 32 bits (a GPU's 64-bit division is a long subroutine)
_DIV_SIGNED_SMALL = r"""
PYX_FN pyx_s pyx_e_divide(pyx_s x, pyx_divisor_t n) {
    const pyx_u32 mag = x < 0 ? 0u - (pyx_u32)x : (pyx_u32)x, q = mag / n;
    return (pyx_s)(x < 0 ? 0u - q : q);
}"""
_DIV_UNSIGNED = r"""
PYX_FN pyx_s pyx_e_divide(pyx_s x, pyx_divisor_t n) { return (pyx_s)(x / n); }"""
_DIV_SIGNED_64 = r"""
PYX_FN pyx_s pyx_e_divide(pyx_s x, pyx_divisor_t n) { return x / n; }"""

_FLOAT = r"""
typedef {S} pyx_s;
typedef {C} pyx_c;
PYX_FN pyx_c pyx_load(pyx_s x) {{ return {LOAD}; }}
PYX_FN pyx_s pyx_store(pyx_c v) {{ return {STORE}; }}
PYX_FN pyx_s pyx_e_add(pyx_s a, pyx_s b) {{ return pyx_store(pyx_load(a) + pyx_load(b)); }}
PYX_FN pyx_s pyx_e_mul(pyx_s a, pyx_s b) {{ return pyx_store(pyx_load(a) * pyx_load(b)); }}
/* numpy's minimum/maximum: a's NaN, else b's, else the smaller/larger ({TIE} on a tie) */
PYX_FN pyx_s pyx_e_min(pyx_s a, pyx_s b) {{
    const pyx_c x = pyx_load(a), y = pyx_load(b);
    if (x != x) return a;
    if (y != y) return b;
    return x {LE} y ? a : b;
}}
PYX_FN pyx_s pyx_e_max(pyx_s a, pyx_s b) {{
    const pyx_c x = pyx_load(a), y = pyx_load(b);
    if (x != x) return a;
    if (y != y) return b;
    return x {GE} y ? a : b;
}}
typedef pyx_c pyx_factor_t;
PYX_FN pyx_factor_t pyx_factor(double f) {{ return {FACTOR}; }}
PYX_FN pyx_s pyx_e_scale(pyx_s x, pyx_factor_t f) {{ return pyx_store(pyx_load(x) * f); }}
typedef pyx_c pyx_divisor_t;
PYX_FN pyx_divisor_t pyx_divisor(pyx_u32 nranks) {{ return {DIVISOR}; }}
PYX_FN pyx_s pyx_e_divide(pyx_s x, pyx_divisor_t n) {{ return pyx_store(pyx_load(x) / n); }}
"""

_INTS = {  # name: (C type, wrapping type, divisor type, division)
    "int8": ("pyx_i8", "pyx_u32", "pyx_u32", _DIV_SIGNED_SMALL),
    "uint8": ("pyx_u8", "pyx_u32", "pyx_u32", _DIV_UNSIGNED),
    "int32": ("pyx_i32", "pyx_u32", "pyx_u32", _DIV_SIGNED_SMALL),
    "uint32": ("pyx_u32", "pyx_u32", "pyx_u32", _DIV_UNSIGNED),
    "int64": ("pyx_i64", "pyx_u64", "pyx_i64", _DIV_SIGNED_64),
    "uint64": ("pyx_u64", "pyx_u64", "pyx_u64", _DIV_UNSIGNED),
}

#: the conversion pieces each float type's module holds
_CONVERSIONS = {
    "float16": _BITS + _ROUND + _F16,
    "bfloat16": _BITS + _BF16,
    "float32": "",
    "float64": "",
    "float8_e4m3": _BITS + _ROUND + _E4M3,
    "float8_e5m2": _BITS + _ROUND + _E5M2,
}

_NARROW_FACTOR = "(float)f"
_NARROW_DIVISOR = "(float)nranks"
_FLOATS = {  # name: storage, compute, load, store, factor, divisor, float16's tie rule
    "float16": ("pyx_u16", "float", "pyx_f16_to_f32(x)", "pyx_f32_to_f16(v)",
                "pyx_f16_to_f32(pyx_f64_to_f16(f))", "pyx_f16_to_f32(pyx_f64_to_f16((double)nranks))", True),
    "bfloat16": ("pyx_u16", "float", "pyx_bf16_to_f32(x)", "pyx_f32_to_bf16(v)",
                 _NARROW_FACTOR, _NARROW_DIVISOR, False),
    "float32": ("float", "float", "x", "v", "(float)f", "(float)nranks", False),
    "float64": ("double", "double", "x", "v", "f", "(double)nranks", False),
    "float8_e4m3": ("pyx_u8", "float", "pyx_e4m3_to_f32(x)", "pyx_f32_to_e4m3(v)",
                    _NARROW_FACTOR, _NARROW_DIVISOR, False),
    "float8_e5m2": ("pyx_u8", "float", "pyx_e5m2_to_f32(x)", "pyx_f32_to_e5m2(v)",
                    _NARROW_FACTOR, _NARROW_DIVISOR, False),
}

_KERNELS = r"""
#define PYX_V (16 / sizeof(pyx_s))
/* 16 bytes moved as one: a 128-bit load or store on the GPU */
struct alignas(16) pyx_vec { pyx_u32 w[4]; };
union pyx_lanes { pyx_vec v; pyx_s e[PYX_V]; };

/* elements before the first 16-byte boundary when out, a and b share their offset in 16 bytes
   (and it is a whole number of elements); n when they don't: then every element goes singly */
PYX_FN pyx_u64 pyx_head(const void* out, const void* a, const void* b, pyx_u64 n) {
    const pyx_u64 off = (pyx_u64)out & 15u;
    if (((pyx_u64)a & 15u) != off || ((pyx_u64)b & 15u) != off || off % sizeof(pyx_s) != 0) return n;
    const pyx_u64 head = ((16u - off) & 15u) / sizeof(pyx_s);
    return head < n ? head : n;
}

/* out[i] = op(a[i], b[i]) over a grid-stride loop (UNARY: op(a[i], a[i]), b is not read) */
template <bool UNARY, class Op>
static inline __device__ void pyx_map(pyx_s* out, const pyx_s* a, const pyx_s* b, pyx_u64 n, Op op) {
    const pyx_u64 tid = (pyx_u64)blockIdx.x * blockDim.x + threadIdx.x;
    const pyx_u64 stride = (pyx_u64)gridDim.x * blockDim.x;
    const pyx_u64 head = pyx_head(out, a, b, n);
    for (pyx_u64 i = tid; i < head; i += stride) out[i] = op(a[i], UNARY ? a[i] : b[i]);
    const pyx_u64 nvec = (n - head) / PYX_V;
    const pyx_vec* va = (const pyx_vec*)(a + head);
    const pyx_vec* vb = (const pyx_vec*)(b + head);
    pyx_vec* vo = (pyx_vec*)(out + head);
    for (pyx_u64 i = tid; i < nvec; i += stride) {
        pyx_lanes x, y, r;
        x.v = va[i];
        y.v = UNARY ? x.v : vb[i];
#pragma unroll
        for (int k = 0; k < (int)PYX_V; ++k) r.e[k] = op(x.e[k], y.e[k]);
        vo[i] = r.v;
    }
    for (pyx_u64 i = head + nvec * PYX_V + tid; i < n; i += stride) out[i] = op(a[i], UNARY ? a[i] : b[i]);
}

struct pyx_op_add { __device__ __host__ pyx_s operator()(pyx_s a, pyx_s b) const { return pyx_e_add(a, b); } };
struct pyx_op_mul { __device__ __host__ pyx_s operator()(pyx_s a, pyx_s b) const { return pyx_e_mul(a, b); } };
struct pyx_op_min { __device__ __host__ pyx_s operator()(pyx_s a, pyx_s b) const { return pyx_e_min(a, b); } };
struct pyx_op_max { __device__ __host__ pyx_s operator()(pyx_s a, pyx_s b) const { return pyx_e_max(a, b); } };
struct pyx_op_scale {
    pyx_factor_t f;
    __device__ __host__ pyx_s operator()(pyx_s x, pyx_s) const { return pyx_e_scale(x, f); }
};
struct pyx_op_divide {
    pyx_divisor_t n;
    __device__ __host__ pyx_s operator()(pyx_s x, pyx_s) const { return pyx_e_divide(x, n); }
};

extern "C" __global__ void pyx_add(pyx_s* out, const pyx_s* a, const pyx_s* b, pyx_u64 n) {
    pyx_map<false>(out, a, b, n, pyx_op_add());
}
extern "C" __global__ void pyx_mul(pyx_s* out, const pyx_s* a, const pyx_s* b, pyx_u64 n) {
    pyx_map<false>(out, a, b, n, pyx_op_mul());
}
extern "C" __global__ void pyx_min(pyx_s* out, const pyx_s* a, const pyx_s* b, pyx_u64 n) {
    pyx_map<false>(out, a, b, n, pyx_op_min());
}
extern "C" __global__ void pyx_max(pyx_s* out, const pyx_s* a, const pyx_s* b, pyx_u64 n) {
    pyx_map<false>(out, a, b, n, pyx_op_max());
}
extern "C" __global__ void pyx_scale(pyx_s* out, const pyx_s* in, double factor, pyx_u64 n) {
    pyx_op_scale op;
    op.f = pyx_factor(factor);
    pyx_map<true>(out, in, in, n, op);
}
extern "C" __global__ void pyx_divide(pyx_s* x, pyx_u64 n, pyx_u32 nranks) {
    pyx_op_divide op;
    op.n = pyx_divisor(nranks);
    pyx_map<true>(x, x, x, n, op);
}
"""

#: the kernels every module holds
KERNELS = ("pyx_add", "pyx_mul", "pyx_min", "pyx_max", "pyx_scale", "pyx_divide")


def source(dtype: DType | str) -> str:
    """The CUDA C++ module of ``dtype``'s kernels (:data:`KERNELS`), for NVRTC: no includes."""
    dt = dtype_of(dtype)
    if dt.name in _INTS:
        t, w, d, div = _INTS[dt.name]
        body = _INT.format(T=t, W=w, D=d, DIVIDE=div)
    else:
        s, c, load, store, factor, divisor, f16_tie = _FLOATS[dt.name]
        body = _CONVERSIONS[dt.name] + _FLOAT.format(
            S=s, C=c, LOAD=load, STORE=store, FACTOR=factor, DIVISOR=divisor,
            LE="<=" if f16_tie else "<", GE=">=" if f16_tie else ">", TIE="a" if f16_tie else "b")
    return f"/* pyxccl reduction kernels: {dt.name} */\n{_COMMON}{body}{_KERNELS}"
