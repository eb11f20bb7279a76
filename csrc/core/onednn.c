#include "core/onednn.h"

#include <stdlib.h>
#include <threads.h>

#include "oneapi/dnnl/dnnl.h"

/* The engine is shared. Streams and scratchpads are made per call (both are cheap on the
 * CPU), so two threads may run primitives at once: oneDNN's default library-owned
 * scratchpad is not safe for concurrent execution of one primitive. */
static once_flag engine_once = ONCE_FLAG_INIT;
static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;

static void engine_create(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

static enum mp_status engine_get(void) {
    call_once(&engine_once, engine_create);
    if (engine_status != dnnl_success)
        return mp_error(MP_STATUS_BACKEND, "oneDNN cannot create a CPU engine (dnnl_status %d)", (int)engine_status);
    return MP_STATUS_OK;
}

static const char *runtime_name(unsigned runtime) {
    switch (runtime) {
    case DNNL_RUNTIME_OMP: return "OpenMP";
    case DNNL_RUNTIME_TBB: return "TBB";
    case DNNL_RUNTIME_SEQ: return "sequential";
    case DNNL_RUNTIME_THREADPOOL: return "threadpool";
    case DNNL_RUNTIME_SYCL: return "SYCL";
    default: return "unknown";
    }
}

static const char *isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "other";
    }
}

enum mp_status mp_onednn_info(struct mp_onednn_info *info) {
    if (!info) return mp_error(MP_STATUS_INVALID_ARGUMENT, "onednn_info: info is NULL");
    enum mp_status status = engine_get();
    if (status != MP_STATUS_OK) return status;
    const dnnl_version_t *v = dnnl_version();
    info->version_major = v->major;
    info->version_minor = v->minor;
    info->version_patch = v->patch;
    info->version_hash = v->hash;
    info->cpu_runtime = runtime_name(v->cpu_runtime);
    info->cpu_isa = isa_name(dnnl_get_effective_cpu_isa());
    return MP_STATUS_OK;
}

static enum mp_status backend_error(const char *what, dnnl_status_t s) {
    return mp_error(MP_STATUS_BACKEND, "oneDNN %s failed (dnnl_status %d)", what, (int)s);
}

enum mp_status mp_matmul_strided(float *out, const int64_t out_strides[4], const float *a, const int64_t a_strides[4],
                                 const float *b, const int64_t b_strides[4], int64_t B0, int64_t B1, int64_t M,
                                 int64_t N, int64_t K, enum mp_precision precision) {
    if (B0 < 0 || B1 < 0 || M < 0 || N < 0 || K < 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: negative size %lld x %lld x (%lld, %lld, %lld)",
                        (long long)B0, (long long)B1, (long long)M, (long long)N, (long long)K);
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: unknown precision %d", (int)precision);
    if (B0 == 0 || B1 == 0 || M == 0 || N == 0) return MP_STATUS_OK;
    if (!out || (K > 0 && (!a || !b))) return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: NULL buffer");
    if (K == 0) { // oneDNN rejects zero-sized reductions; the empty sum is zero
        for (int64_t i = 0; i < B0; i++)
            for (int64_t j = 0; j < B1; j++)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++)
                        out[i * out_strides[0] + j * out_strides[1] + m * out_strides[2] + n * out_strides[3]] = 0.0f;
        return MP_STATUS_OK;
    }
    enum mp_status status = engine_get();
    if (status != MP_STATUS_OK) return status;

    dnnl_memory_desc_t a_md = NULL, b_md = NULL, out_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_stream_t stream = NULL;
    void *scratch = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t a_mem = NULL, b_mem = NULL, out_mem = NULL, scratch_mem = NULL;
    dnnl_status_t s;
    const char *what = "memory descriptor";
    dnnl_dims_t a_dims = {B0, B1, M, K}, b_dims = {B0, B1, K, N}, out_dims = {B0, B1, M, N};
    dnnl_dims_t as, bs, os;
    for (int i = 0; i < 4; i++) {
        as[i] = a_strides[i];
        bs[i] = b_strides[i];
        os[i] = out_strides[i];
    }
    if ((s = dnnl_memory_desc_create_with_strides(&a_md, 4, a_dims, dnnl_f32, as)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_strides(&b_md, 4, b_dims, dnnl_f32, bs)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_strides(&out_md, 4, out_dims, dnnl_f32, os)) != dnnl_success) goto done;
    what = "matmul primitive creation";
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) != dnnl_success) goto done;
    // bf16: f32 buffers in and out; oneDNN rounds the inputs to bf16 inside the kernel
    // (fpmath mode), which costs less than converting whole copies beforehand.
    if (precision == MP_PRECISION_BF16 &&
        (s = dnnl_primitive_attr_set_fpmath_mode(attr, dnnl_fpmath_mode_bf16)) != dnnl_success)
        goto done;
    if ((s = dnnl_matmul_primitive_desc_create(&pd, engine, a_md, b_md, NULL, out_md, attr)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_create(&prim, pd)) != dnnl_success) goto done;
    what = "memory creation";
    const_dnnl_memory_desc_t scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t scratch_bytes = dnnl_memory_desc_get_size(scratch_md);
    if (scratch_bytes > 0 && !(scratch = aligned_alloc(64, (scratch_bytes + 63) / 64 * 64))) {
        s = dnnl_out_of_memory;
        goto done;
    }
    if ((s = dnnl_memory_create(&scratch_mem, scratch_md, engine, scratch)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&a_mem, a_md, engine, (void *)a)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&b_mem, b_md, engine, (void *)b)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&out_mem, out_md, engine, out)) != dnnl_success) goto done;
    what = "matmul execution";
    if ((s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) != dnnl_success) goto done;
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, out_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}};
    if ((s = dnnl_primitive_execute(prim, stream, 4, args)) != dnnl_success) goto done;
    s = dnnl_stream_wait(stream);

done:
    dnnl_stream_destroy(stream);
    dnnl_memory_destroy(scratch_mem);
    dnnl_memory_destroy(out_mem);
    dnnl_memory_destroy(b_mem);
    dnnl_memory_destroy(a_mem);
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(out_md);
    dnnl_memory_desc_destroy(b_md);
    dnnl_memory_desc_destroy(a_md);
    free(scratch);
    return s == dnnl_out_of_memory ? mp_error(MP_STATUS_OUT_OF_MEMORY, "matmul: %s ran out of memory", what)
           : s == dnnl_success     ? MP_STATUS_OK
                                   : backend_error(what, s);
}

enum mp_status mp_matmul_nt(float *out, const float *a, const float *b, int64_t M, int64_t N, int64_t K,
                            enum mp_precision precision) {
    if (M < 0 || N < 0 || K < 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: negative size M=%lld N=%lld K=%lld", (long long)M,
                        (long long)N, (long long)K);
    if (M > 0 && N > 0 && (M > INT64_MAX / N || (K > 0 && (M > INT64_MAX / K || N > INT64_MAX / K))))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: sizes M=%lld N=%lld K=%lld overflow", (long long)M,
                        (long long)N, (long long)K);
    // b is (N, K) row-major, seen as its (K, N) transpose.
    const int64_t out_strides[4] = {M * N, M * N, N, 1}, a_strides[4] = {M * K, M * K, K, 1},
                  b_strides[4] = {N * K, N * K, 1, K};
    return mp_matmul_strided(out, out_strides, a, a_strides, b, b_strides, 1, 1, M, N, K, precision);
}
