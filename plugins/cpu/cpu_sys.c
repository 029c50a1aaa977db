/* cpu_sys.c - what the machine offers: cpuid features (checked against the OS's
 * saved register state), the processor's name, and its physical cores. */
#include <cpuid.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <hwloc.h>

#include "cpu.h"

static const char *const isa_names[CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16"};

const char *cpu_isa_name(cpu_isa isa) { return (unsigned)isa < CPU_ISA_COUNT ? isa_names[isa] : "?"; }

int cpu_isa_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < CPU_ISA_COUNT; i++)
        if (!strcmp(s, isa_names[i])) return i;
    return -1;
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

typedef struct feats { int avx2, avx512, bf16, vbmi; } feats;

static feats detect(void) {
    feats f = {0, 0, 0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    uint64_t xcr0 = xgetbv0();
    int ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    int avx2 = (b >> 5) & 1;
    int a512f = (b >> 16) & 1, a512dq = (b >> 17) & 1, a512bw = (b >> 30) & 1, a512vl = (b >> 31) & 1;
    f.avx2 = ymm_os && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_os && a512f && a512dq && a512bw && a512vl;
    f.vbmi = f.avx512 && ((c >> 1) & 1);
    unsigned maxleaf = __get_cpuid_max(0, NULL);
    if (maxleaf >= 7 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.bf16 = f.avx512 && ((a >> 5) & 1);
    return f;
}

int cpu_isa_supported(cpu_isa isa) {
    feats f = detect();
    switch (isa) {
    case CPU_ISA_SCALAR:     return 1;
    case CPU_ISA_AVX2:       return f.avx2;
    case CPU_ISA_AVX512:     return f.avx512;
    case CPU_ISA_AVX512BF16: return f.bf16;
    default:                 return 0;
    }
}

int cpu_has_vbmi(void) { return detect().vbmi; }

cpu_isa cpu_isa_best(void) {
    feats f = detect();
    return f.avx512 ? CPU_ISA_AVX512 : f.avx2 ? CPU_ISA_AVX2 : CPU_ISA_SCALAR;
}

void cpu_model_name(char *out, size_t n) {
    char s[49] = {0};
    unsigned r[4];
    if (__get_cpuid_max(0x80000000, NULL) >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++) {
            __get_cpuid(0x80000002 + i, &r[0], &r[1], &r[2], &r[3]);
            memcpy(s + 16 * i, r, 16);
        }
    }
    /* trim and squeeze blanks */
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 1 < sizeof s; i++) {
        if (isspace((unsigned char)s[i]) && (j == 0 || s[j - 1] == ' ')) continue;
        s[j++] = isspace((unsigned char)s[i]) ? ' ' : s[i];
    }
    while (j > 0 && s[j - 1] == ' ') j--;
    s[j] = 0;
    snprintf(out, n, "%s", j ? s : "x86-64 CPU");
}

int cpu_physical_cores(void) {
    hwloc_topology_t t;
    if (hwloc_topology_init(&t)) return 1;
    int n = 1;
    if (!hwloc_topology_load(t)) {
        int c = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
        if (c <= 0) c = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
        if (c > 0) n = c;
    }
    hwloc_topology_destroy(t);
    return n;
}
