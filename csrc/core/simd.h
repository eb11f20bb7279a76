/* core/simd.h: compile a hot function for AVX-512, AVX2 and the x86-64 baseline, with the
 * best chosen at run time (GCC function multiversioning). No -march: one binary runs on
 * every x86-64 CPU. Under the sanitizers and other compilers it is a plain function. */
#ifndef MP_CORE_SIMD_H
#define MP_CORE_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MP_CLONES
#endif

#endif
