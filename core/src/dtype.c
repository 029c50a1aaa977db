/* dtype.c - names of statuses, dtypes and ops; scalar format conversions. */
#include <math.h>
#include <string.h>

#include "fathom/fathom.h"

FM_API const char *fm_status_name(fm_status s) {
    switch (s) {
    case FM_OK:          return "FM_OK";
    case FM_UNSUPPORTED: return "FM_UNSUPPORTED";
    case FM_FAILED:      return "FM_FAILED";
    case FM_EINVAL:      return "FM_EINVAL";
    case FM_ENOMEM:      return "FM_ENOMEM";
    case FM_EIO:         return "FM_EIO";
    case FM_ENOTFOUND:   return "FM_ENOTFOUND";
    }
    return "FM_(unknown status)";
}

static const char *const dtype_names[FM_DTYPE_COUNT] = {"f32", "bf16", "f16", "f8_e4m3", "i32"};
/* The spellings of safetensors headers. */
static const char *const dtype_st_names[FM_DTYPE_COUNT] = {"F32", "BF16", "F16", "F8_E4M3", "I32"};
static const size_t dtype_sizes[FM_DTYPE_COUNT] = {4, 2, 2, 1, 4};

FM_API const char *fm_dtype_name(fm_dtype t) {
    return (unsigned)t < FM_DTYPE_COUNT ? dtype_names[t] : "?";
}

FM_API size_t fm_dtype_size(fm_dtype t) {
    return (unsigned)t < FM_DTYPE_COUNT ? dtype_sizes[t] : 0;
}

FM_API int fm_dtype_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < FM_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_names[i]) || !strcmp(s, dtype_st_names[i])) return i;
    return -1;
}

static const char *const op_names[FM_OP_COUNT] = {
#define X(id, name, nsrc, ndst, params) name,
#include "fathom/ops.def"
#undef X
};

FM_API const char *fm_op_name(fm_op op) {
    return (unsigned)op < FM_OP_COUNT ? op_names[op] : "?";
}

FM_API int fm_op_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < FM_OP_COUNT; i++)
        if (!strcmp(s, op_names[i])) return i;
    return -1;
}

/* ---- bit casts ---------------------------------------------------------- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- bf16 --------------------------------------------------------------- */

FM_API float fm_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

FM_API uint16_t fm_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---- f16 ---------------------------------------------------------------- */

FM_API float fm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

FM_API uint16_t fm_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {                                    /* below 2^-14: subnormal */
        /* Scaling by a power of two is exact; nearbyintf rounds to nearest even. */
        float q = nearbyintf(bits_f32(a) * 0x1p24f);
        return (uint16_t)(sign | (uint16_t)q);
    }
    uint32_t v = ((((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) v++;
    return (uint16_t)(sign | v);
}

/* ---- e4m3fn ------------------------------------------------------------- */

FM_API float fm_e4m3_to_f32(uint8_t c) {
    uint32_t sign = (uint32_t)(c & 0x80u) << 24;
    uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
    if (e == 0xf && m == 7) return bits_f32(sign | 0x7fc00000u);
    if (e == 0) {
        float v = (float)m * 0x1p-9f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

FM_API uint8_t fm_f32_to_e4m3(float f) {
    uint32_t u = f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7f;
    if (a < 0x3c800000u) { /* below 2^-6: subnormal (step 2^-9), exact scaling */
        float q = nearbyintf(bits_f32(a) * 0x1p9f);
        return (uint8_t)(sign | (uint8_t)q);
    }
    uint32_t e = (a >> 23) - 120u; /* >= 1 here; infinity lands far above 0x7e */
    uint32_t v = (e << 3) | ((a >> 20) & 7u);
    uint32_t rem = a & 0xfffffu;
    if (rem > 0x80000u || (rem == 0x80000u && (v & 1u))) v++;
    if (v > 0x7eu) v = 0x7eu; /* saturate: 0x7f is NaN, there is no infinity */
    return (uint8_t)(sign | v);
}
