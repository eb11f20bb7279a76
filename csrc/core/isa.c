/* core/isa.c: the ISA cap of core/isa.h, set by mp_set_max_isa or read from
 * MEGAPAIRS_MAX_ISA at each query (the tests change it between calls). The hardware checks
 * stay with the kernels that need them (core/amx.c, image/resample.c). */
#include "core/isa.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static atomic_int isa_cap = -1; // -1: follow MEGAPAIRS_MAX_ISA

static const struct {
    const char *prefix;
    enum mp_isa isa;
} isa_names[] = {{"amx", MP_ISA_AMX}, {"avx512", MP_ISA_AVX512}, {"avx2", MP_ISA_AVX2}, {"generic", MP_ISA_GENERIC}};

static enum mp_isa isa_from_env(void) {
    const char *s = getenv("MEGAPAIRS_MAX_ISA");
    if (!s || !*s) return MP_ISA_AMX;
    for (size_t i = 0; i < sizeof isa_names / sizeof *isa_names; i++)
        if (strncasecmp(s, isa_names[i].prefix, strlen(isa_names[i].prefix)) == 0) return isa_names[i].isa;
    return MP_ISA_GENERIC;
}

enum mp_isa mp_get_max_isa(void) {
    int cap = atomic_load(&isa_cap);
    return cap < 0 ? isa_from_env() : (enum mp_isa)cap;
}

enum mp_isa mp_set_max_isa(enum mp_isa isa) {
    enum mp_isa previous = mp_get_max_isa();
    atomic_store(&isa_cap, isa < MP_ISA_GENERIC ? MP_ISA_GENERIC : isa > MP_ISA_AMX ? MP_ISA_AMX : isa);
    return previous;
}
