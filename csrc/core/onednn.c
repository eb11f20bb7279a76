/* core/onednn.c: every call into oneDNN, so its build can change in one place: the shared
 * engine, the one typed matmul (mp_matmul) and the oneDNN backend of the matmul with a
 * packed, fixed B (mp_gemm, core/gemm.c) that nn/linear.c builds layers on. */
#include "core/gemm.h"
#include "core/onednn.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "core/dtype.h"
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

// The status for a oneDNN result: OK, out of memory, or a backend error naming the step.
static enum mp_status dnnl_result(dnnl_status_t s, const char *what) {
    if (s == dnnl_success) return MP_STATUS_OK;
    if (s == dnnl_out_of_memory) return mp_error(MP_STATUS_OUT_OF_MEMORY, "oneDNN %s ran out of memory", what);
    return mp_error(MP_STATUS_BACKEND, "oneDNN %s failed (dnnl_status %d)", what, (int)s);
}

static int dnnl_type(enum mp_dtype t, dnnl_data_type_t *out) {
    if (t == MP_DTYPE_F32) *out = dnnl_f32;
    else if (t == MP_DTYPE_BF16) *out = dnnl_bf16;
    else return -1;
    return 0;
}

enum mp_status mp_matmul(void *out, enum mp_dtype out_type, const int64_t out_strides[4], const void *a,
                         enum mp_dtype a_type, const int64_t a_strides[4], const void *b, enum mp_dtype b_type,
                         const int64_t b_strides[4], int64_t B0, int64_t B1, int64_t M, int64_t N, int64_t K,
                         enum mp_precision precision, int accumulate) {
    dnnl_data_type_t at, bt, ot;
    if (dnnl_type(a_type, &at) || dnnl_type(b_type, &bt) || dnnl_type(out_type, &ot))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: operands must be F32 or BF16");
    if (precision == MP_PRECISION_FP32 && (at != dnnl_f32 || bt != dnnl_f32))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: fp32 precision needs F32 inputs");
    if (B0 < 0 || B1 < 0 || M < 0 || N < 0 || K < 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: negative size %lld x %lld x (%lld, %lld, %lld)",
                        (long long)B0, (long long)B1, (long long)M, (long long)N, (long long)K);
    if ((M > 0 && (N > INT64_MAX / M || K > INT64_MAX / M)) || (N > 0 && K > INT64_MAX / N) ||
        (B0 > 0 && B1 > INT64_MAX / B0))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: sizes M=%lld N=%lld K=%lld overflow", (long long)M,
                        (long long)N, (long long)K);
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: unknown precision %d", (int)precision);
    if (B0 == 0 || B1 == 0 || M == 0 || N == 0) return MP_STATUS_OK;
    if (!out || (K > 0 && (!a || !b))) return mp_error(MP_STATUS_INVALID_ARGUMENT, "matmul: NULL buffer");
    if (K == 0 && accumulate) return MP_STATUS_OK; // adding the empty sum
    if (K == 0) { // oneDNN rejects zero-sized reductions; the empty sum is zero
        size_t bytes = ot == dnnl_f32 ? 4 : 2; // +0.0 is all zero bits in both
        for (int64_t i = 0; i < B0; i++)
            for (int64_t j = 0; j < B1; j++)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++)
                        memset((char *)out + bytes * (size_t)(i * out_strides[0] + j * out_strides[1] +
                                                              m * out_strides[2] + n * out_strides[3]),
                               0, bytes);
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
    if ((s = dnnl_memory_desc_create_with_strides(&a_md, 4, a_dims, at, as)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_strides(&b_md, 4, b_dims, bt, bs)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_strides(&out_md, 4, out_dims, ot, os)) != dnnl_success) goto done;
    what = "matmul primitive creation";
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) != dnnl_success) goto done;
    // bf16: f32 buffers in and out; oneDNN rounds the inputs to bf16 inside the kernel
    // (fpmath mode), which costs less than converting whole copies beforehand.
    if (precision == MP_PRECISION_BF16 && (at == dnnl_f32 || bt == dnnl_f32) &&
        (s = dnnl_primitive_attr_set_fpmath_mode(attr, dnnl_fpmath_mode_bf16)) != dnnl_success)
        goto done;
    if (accumulate) { // out += a @ b: a sum post-op
        dnnl_post_ops_t ops = NULL;
        if ((s = dnnl_post_ops_create(&ops)) != dnnl_success) goto done;
        if ((s = dnnl_post_ops_append_sum(ops, 1.0f, 0, dnnl_data_type_undef)) == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, ops);
        dnnl_post_ops_destroy(ops);
        if (s != dnnl_success) goto done;
    }
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
    return dnnl_result(s, what);
}

/* ---------------------------------------------------------------- matmuls with a fixed, packed B */

struct mp_onednn_gemm {
    struct mp_gemm_desc d;
    dnnl_memory_t bias_mem; // (1, N) f32 over the caller's bias, or NULL
    dnnl_primitive_t prim;  // M is a run-time dimension: one primitive serves every row count
    dnnl_memory_t packed;   // B in the blocked layout the primitive asked for
    dnnl_memory_desc_t packed_md;
    void *packed_buf;
    void *scratch;
    dnnl_memory_t scratch_mem;
    dnnl_stream_t stream; // the gemm's own stream (a gemm is used by one thread at a time)
    int threads;          // the OpenMP thread count prim was created for; 0: plan again
};

int mp_onednn_gemm_threads(const struct mp_onednn_gemm *g) { return g ? g->threads : 0; }

void mp_onednn_gemm_free(struct mp_onednn_gemm *g) {
    if (!g) return;
    dnnl_primitive_destroy(g->prim);
    dnnl_memory_destroy(g->packed);
    dnnl_memory_desc_destroy(g->packed_md);
    dnnl_memory_destroy(g->bias_mem);
    dnnl_memory_destroy(g->scratch_mem);
    dnnl_stream_destroy(g->stream);
    free(g->scratch);
    free(g->packed_buf);
    free(g);
}

/* Plans the primitive for the calling thread's OpenMP thread count and packs B into the
 * layout it asks for. oneDNN fixes a primitive's thread count when it creates it, so a gemm
 * planned at 1 thread would stay on 1 thread: mp_gemm_run plans again when the count has
 * changed, and B is packed again only if the new primitive wants another layout. */
static dnnl_status_t gemm_plan(struct mp_onednn_gemm *g, const char **what) {
    const struct mp_gemm_desc *d = &g->d;
    dnnl_data_type_t in_type = d->precision == MP_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_data_type_t dst_type = d->out_type == MP_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md = NULL, wei_any = NULL, dst_md = NULL, bias_md = NULL, user_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL, reorder_pd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t user_mem = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_status_t s;
    *what = "matmul planning";
    g->threads = 0;
    dnnl_primitive_destroy(g->prim), g->prim = NULL;
    dnnl_memory_destroy(g->scratch_mem), g->scratch_mem = NULL;
    free(g->scratch), g->scratch = NULL;
    dnnl_dims_t src_dims = {DNNL_RUNTIME_DIM_VAL, d->K}, wei_dims = {d->K, d->N};
    dnnl_dims_t dst_dims = {DNNL_RUNTIME_DIM_VAL, d->N}, bias_dims = {1, d->N};
    dnnl_dims_t user_strides = {1, d->K}; // B (N, K) row-major seen as (K, N)
    if (d->b_kn) user_strides[0] = d->N, user_strides[1] = 1;
    if ((s = dnnl_memory_desc_create_with_tag(&src_md, 2, src_dims, in_type, dnnl_ab)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&wei_any, 2, wei_dims, in_type, dnnl_format_tag_any)) != dnnl_success)
        goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&dst_md, 2, dst_dims, dst_type, dnnl_ab)) != dnnl_success) goto done;
    if (d->bias && (s = dnnl_memory_desc_create_with_tag(&bias_md, 2, bias_dims, dnnl_f32, dnnl_ab)) != dnnl_success)
        goto done;
    if (d->bias && !g->bias_mem &&
        (s = dnnl_memory_create(&g->bias_mem, bias_md, engine, (void *)d->bias)) != dnnl_success)
        goto done;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) != dnnl_success) goto done;
    if ((s = dnnl_post_ops_create(&ops)) != dnnl_success) goto done;
    if (d->activation == MP_OP_GELU && (s = dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_gelu_erf, 0.0f, 0.0f)))
        goto done;
    if (d->activation == MP_OP_QUICK_GELU && // x * sigmoid(1.702 x) is swish with alpha 1.702
        (s = dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_swish, 1.702f, 0.0f)) != dnnl_success)
        goto done;
    if (d->accumulate && (s = dnnl_post_ops_append_sum(ops, 1.0f, 0, dnnl_data_type_undef)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_post_ops(attr, ops)) != dnnl_success) goto done;
    if ((s = dnnl_matmul_primitive_desc_create(&pd, engine, src_md, wei_any, bias_md, dst_md, attr)) != dnnl_success)
        goto done;
    if ((s = dnnl_primitive_create(&g->prim, pd)) != dnnl_success) goto done;
    *what = "scratchpad";
    const_dnnl_memory_desc_t want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const_dnnl_memory_desc_t scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t scratch_bytes = dnnl_memory_desc_get_size(scratch_md);
    if (!g->stream && (s = dnnl_stream_create(&g->stream, engine, dnnl_stream_default_flags)) != dnnl_success)
        goto done;
    if (scratch_bytes > 0 && !(g->scratch = aligned_alloc(64, (scratch_bytes + 63) / 64 * 64))) {
        s = dnnl_out_of_memory;
        goto done;
    }
    if ((s = dnnl_memory_create(&g->scratch_mem, scratch_md, engine, g->scratch)) != dnnl_success) goto done;
    *what = "weight packing";
    if (g->packed_md && dnnl_memory_desc_equal(g->packed_md, want)) goto planned; // B is packed already
    dnnl_memory_destroy(g->packed), g->packed = NULL;
    dnnl_memory_desc_destroy(g->packed_md), g->packed_md = NULL;
    free(g->packed_buf), g->packed_buf = NULL;
    if ((s = dnnl_memory_desc_clone(&g->packed_md, want)) != dnnl_success) goto done;
    size_t bytes = dnnl_memory_desc_get_size(want);
    if (!(g->packed_buf = aligned_alloc(64, (bytes + 63) / 64 * 64))) {
        s = dnnl_out_of_memory;
        goto done;
    }
    if ((s = dnnl_memory_create(&g->packed, want, engine, g->packed_buf)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_strides(&user_md, 2, wei_dims, dnnl_f32, user_strides)) != dnnl_success)
        goto done;
    if ((s = dnnl_memory_create(&user_mem, user_md, engine, (void *)d->b)) != dnnl_success) goto done;
    if ((s = dnnl_reorder_primitive_desc_create(&reorder_pd, user_md, engine, want, engine, NULL)) != dnnl_success)
        goto done;
    if ((s = dnnl_primitive_create(&reorder, reorder_pd)) != dnnl_success) goto done;
    if ((s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) != dnnl_success) goto done;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user_mem}, {DNNL_ARG_TO, g->packed}};
    if ((s = dnnl_primitive_execute(reorder, stream, 2, args)) != dnnl_success) goto done;
    if ((s = dnnl_stream_wait(stream)) != dnnl_success) goto done;
planned:
    g->threads = omp_get_max_threads();
done:
    dnnl_stream_destroy(stream);
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(reorder_pd);
    dnnl_memory_destroy(user_mem);
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(user_md);
    dnnl_memory_desc_destroy(bias_md);
    dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(wei_any);
    dnnl_memory_desc_destroy(src_md);
    return s;
}

enum mp_status mp_onednn_gemm_init(struct mp_onednn_gemm **out, const struct mp_gemm_desc *desc) {
    if (!out || !desc) return mp_error(MP_STATUS_INVALID_ARGUMENT, "onednn_gemm_init: NULL argument");
    *out = NULL;
    const struct mp_gemm_desc *d = desc; // checked by mp_gemm_init
    enum mp_status status = engine_get();
    if (status != MP_STATUS_OK) return status;
    struct mp_onednn_gemm *g = calloc(1, sizeof *g);
    if (!g) return mp_error(MP_STATUS_OUT_OF_MEMORY, "onednn_gemm_init: out of memory");
    g->d = *d;
    const char *what;
    dnnl_status_t s = gemm_plan(g, &what);
    if (s != dnnl_success) {
        mp_onednn_gemm_free(g);
        return dnnl_result(s, what);
    }
    *out = g;
    return MP_STATUS_OK;
}

enum mp_status mp_onednn_gemm_run(struct mp_onednn_gemm *g, void *out, const void *in, int64_t M) {
    if (!g || M < 0 || (M > 0 && (!out || !in))) return mp_error(MP_STATUS_INVALID_ARGUMENT, "onednn_gemm_run: bad arguments");
    if (M == 0) return MP_STATUS_OK;
    if (g->threads != omp_get_max_threads()) {
        const char *what;
        dnnl_status_t planned = gemm_plan(g, &what);
        if (planned != dnnl_success) return dnnl_result(planned, what);
    }
    dnnl_data_type_t src_type = g->d.precision == MP_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_data_type_t dst_type = g->d.out_type == MP_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md = NULL, dst_md = NULL;
    dnnl_memory_t src_mem = NULL, dst_mem = NULL;
    dnnl_status_t s;
    dnnl_dims_t src_dims = {M, g->d.K}, dst_dims = {M, g->d.N};
    if ((s = dnnl_memory_desc_create_with_tag(&src_md, 2, src_dims, src_type, dnnl_ab)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&dst_md, 2, dst_dims, dst_type, dnnl_ab)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&src_mem, src_md, engine, (void *)in)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&dst_mem, dst_md, engine, out)) != dnnl_success) goto done;
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, g->packed}, {DNNL_ARG_DST, dst_mem},
                               {DNNL_ARG_SCRATCHPAD, g->scratch_mem}, {DNNL_ARG_BIAS, g->bias_mem}};
    if ((s = dnnl_primitive_execute(g->prim, g->stream, g->bias_mem ? 5 : 4, args)) != dnnl_success) goto done;
    s = dnnl_stream_wait(g->stream);
done:
    dnnl_memory_destroy(dst_mem);
    dnnl_memory_destroy(src_mem);
    dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(src_md);
    return dnnl_result(s, "gemm execution");
}
