#include "core/onednn.h"

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

enum mp_status mp_matmul_strided(float *out, const int64_t out_strides[4], const float *a, const int64_t a_strides[4],
                                 const float *b, const int64_t b_strides[4], int64_t B0, int64_t B1, int64_t M,
                                 int64_t N, int64_t K, enum mp_precision precision) {
    return mp_matmul_strided_typed(out, MP_DTYPE_F32, out_strides, a, MP_DTYPE_F32, a_strides, b, MP_DTYPE_F32,
                                   b_strides, B0, B1, M, N, K, precision);
}

static enum mp_status matmul(void *out, enum mp_dtype out_type, const int64_t out_strides[4], const void *a,
                             enum mp_dtype a_type, const int64_t a_strides[4], const void *b, enum mp_dtype b_type,
                             const int64_t b_strides[4], int64_t B0, int64_t B1, int64_t M, int64_t N, int64_t K,
                             enum mp_precision precision, int accumulate);

enum mp_status mp_matmul_strided_typed(void *out, enum mp_dtype out_type, const int64_t out_strides[4], const void *a,
                                       enum mp_dtype a_type, const int64_t a_strides[4], const void *b,
                                       enum mp_dtype b_type, const int64_t b_strides[4], int64_t B0, int64_t B1,
                                       int64_t M, int64_t N, int64_t K, enum mp_precision precision) {
    return matmul(out, out_type, out_strides, a, a_type, a_strides, b, b_type, b_strides, B0, B1, M, N, K, precision,
                  0);
}

enum mp_status mp_matmul_strided_accumulate(float *out, const int64_t out_strides[2], const float *a,
                                            const int64_t a_strides[2], const float *b, const int64_t b_strides[2],
                                            int64_t M, int64_t N, int64_t K, enum mp_precision precision) {
    return mp_matmul_accumulate_typed(out, out_strides, a, MP_DTYPE_F32, a_strides, b, MP_DTYPE_F32, b_strides, M, N,
                                      K, precision);
}

enum mp_status mp_matmul_accumulate_typed(float *out, const int64_t out_strides[2], const void *a,
                                          enum mp_dtype a_type, const int64_t a_strides[2], const void *b,
                                          enum mp_dtype b_type, const int64_t b_strides[2], int64_t M, int64_t N,
                                          int64_t K, enum mp_precision precision) {
    const int64_t os[4] = {M * N, M * N, out_strides[0], out_strides[1]},
                  as[4] = {M * K, M * K, a_strides[0], a_strides[1]}, bs[4] = {K * N, K * N, b_strides[0], b_strides[1]};
    return matmul(out, MP_DTYPE_F32, os, a, a_type, as, b, b_type, bs, 1, 1, M, N, K, precision, 1);
}

static enum mp_status matmul(void *out, enum mp_dtype out_type, const int64_t out_strides[4], const void *a,
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

/* ---------------------------------------------------------------- packed linear layers */

struct mp_linear {
    int64_t N, K;
    enum mp_precision precision;
    enum mp_activation_op activation;
    int accumulate;
    int weight_kn;           // weight stored (K, N) instead of (N, K)
    const float *weight;     // (N, K), the caller's, packed from on (re)planning
    dnnl_memory_t bias_mem;  // (1, N) f32 over the caller's bias, or NULL
    const float *bias;
    // Plan for the last output type (any row count): primitive, packed weights, scratchpad size.
    int planned;
    enum mp_dtype in_type, out_type;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t packed_md; // owned clone of the weights md the primitive wants
    dnnl_memory_t packed;
    void *packed_buf;
    size_t scratch_bytes;
    uint16_t *src_bf16; // per-call bf16 copy of x
    int64_t src_cap;
    void *scratch;              // scratchpad of the current plan, kept across calls
    dnnl_memory_t scratch_mem;
    dnnl_stream_t stream;       // the layer's own stream (a layer is used by one thread at a time)
};

void mp_linear_free(struct mp_linear *l) {
    if (!l) return;
    dnnl_primitive_destroy(l->prim);
    dnnl_memory_destroy(l->packed);
    dnnl_memory_desc_destroy(l->packed_md);
    dnnl_memory_destroy(l->bias_mem);
    dnnl_memory_destroy(l->scratch_mem);
    dnnl_stream_destroy(l->stream);
    free(l->scratch);
    free(l->packed_buf);
    free(l->src_bf16);
    free(l);
}

enum mp_status mp_linear_init(struct mp_linear **out, const float *weight, const float *bias, int64_t N, int64_t K,
                              enum mp_precision precision, enum mp_activation_op activation, int accumulate) {
    if (!out || !weight || N <= 0 || K <= 0 || (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16) ||
        activation < MP_OP_NONE || activation > MP_OP_QUICK_GELU)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_init: bad arguments");
    *out = NULL;
    enum mp_status status = engine_get();
    if (status != MP_STATUS_OK) return status;
    struct mp_linear *l = calloc(1, sizeof *l);
    if (!l) return mp_error(MP_STATUS_OUT_OF_MEMORY, "linear_init: out of memory");
    l->weight = weight, l->bias = bias;
    l->N = N, l->K = K, l->precision = precision, l->activation = activation, l->accumulate = accumulate;
    if (bias) {
        dnnl_memory_desc_t md;
        dnnl_dims_t dims = {1, N};
        if (dnnl_memory_desc_create_with_tag(&md, 2, dims, dnnl_f32, dnnl_ab) != dnnl_success ||
            dnnl_memory_create(&l->bias_mem, md, engine, (void *)l->bias) != dnnl_success) {
            dnnl_memory_desc_destroy(md);
            mp_linear_free(l);
            return dnnl_result(dnnl_runtime_error, "bias memory");
        }
        dnnl_memory_desc_destroy(md);
    }
    *out = l;
    return MP_STATUS_OK;
}

enum mp_status mp_linear_init_kn(struct mp_linear **out, const float *weight, int64_t N, int64_t K,
                                 enum mp_precision precision) {
    enum mp_status status = mp_linear_init(out, weight, NULL, N, K, precision, MP_OP_NONE, 0);
    if (status == MP_STATUS_OK) (*out)->weight_kn = 1;
    return status;
}

// (Re)plans for an output type: primitive, and weights packed in the layout it asks for.
static enum mp_status linear_plan(struct mp_linear *l, enum mp_dtype out_type) {
    l->planned = 0; // until this plan is complete
    dnnl_data_type_t in_type = l->precision == MP_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_data_type_t dst_type = out_type == MP_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md = NULL, wei_any = NULL, dst_md = NULL, bias_md = NULL, user_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL, reorder = NULL;
    dnnl_primitive_desc_t reorder_pd = NULL;
    dnnl_memory_t user_mem = NULL, packed = NULL;
    dnnl_memory_desc_t packed_md = NULL;
    dnnl_stream_t stream = NULL;
    void *packed_buf = NULL;
    dnnl_status_t s;
    const char *what = "linear planning";
    // M is a run-time dimension: one primitive (one JIT) serves every row count, which text
    // needs (each batch packs a different number of tokens).
    dnnl_dims_t src_dims = {DNNL_RUNTIME_DIM_VAL, l->K}, wei_dims = {l->K, l->N};
    dnnl_dims_t dst_dims = {DNNL_RUNTIME_DIM_VAL, l->N}, bias_dims = {1, l->N};
    dnnl_dims_t user_strides = {1, l->K}; // W (N, K) row-major seen as (K, N)
    if (l->weight_kn) user_strides[0] = l->N, user_strides[1] = 1;
    if ((s = dnnl_memory_desc_create_with_tag(&src_md, 2, src_dims, in_type, dnnl_ab)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&wei_any, 2, wei_dims, in_type, dnnl_format_tag_any)) != dnnl_success)
        goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&dst_md, 2, dst_dims, dst_type, dnnl_ab)) != dnnl_success) goto done;
    if (l->bias && (s = dnnl_memory_desc_create_with_tag(&bias_md, 2, bias_dims, dnnl_f32, dnnl_ab)) != dnnl_success)
        goto done;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) != dnnl_success) goto done;
    if ((s = dnnl_post_ops_create(&ops)) != dnnl_success) goto done;
    if (l->activation == MP_OP_GELU && (s = dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_gelu_erf, 0.0f, 0.0f)))
        goto done;
    if (l->activation == MP_OP_QUICK_GELU && // x * sigmoid(1.702 x) is swish with alpha 1.702
        (s = dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_swish, 1.702f, 0.0f)) != dnnl_success)
        goto done;
    if (l->accumulate && (s = dnnl_post_ops_append_sum(ops, 1.0f, 0, dnnl_data_type_undef)) != dnnl_success) goto done;
    if ((s = dnnl_primitive_attr_set_post_ops(attr, ops)) != dnnl_success) goto done;
    if ((s = dnnl_matmul_primitive_desc_create(&pd, engine, src_md, wei_any, bias_md, dst_md, attr)) != dnnl_success)
        goto done;
    if ((s = dnnl_primitive_create(&prim, pd)) != dnnl_success) goto done;
    const_dnnl_memory_desc_t want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const_dnnl_memory_desc_t scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t scratch_bytes = dnnl_memory_desc_get_size(scratch_md);
    what = "scratchpad";
    if (!l->stream && (s = dnnl_stream_create(&l->stream, engine, dnnl_stream_default_flags)) != dnnl_success)
        goto done;
    dnnl_memory_destroy(l->scratch_mem);
    l->scratch_mem = NULL;
    if (scratch_bytes > l->scratch_bytes) {
        free(l->scratch);
        l->scratch_bytes = 0;
        if (!(l->scratch = aligned_alloc(64, (scratch_bytes + 63) / 64 * 64))) {
            s = dnnl_out_of_memory;
            goto done;
        }
        l->scratch_bytes = scratch_bytes;
    }
    if ((s = dnnl_memory_create(&l->scratch_mem, scratch_md, engine, l->scratch)) != dnnl_success) goto done;
    if (!l->packed_md || !dnnl_memory_desc_equal(l->packed_md, want)) { // pack (or repack) the weights
        what = "weight packing";
        if ((s = dnnl_memory_desc_clone(&packed_md, want)) != dnnl_success) goto done;
        size_t bytes = dnnl_memory_desc_get_size(want);
        if (!(packed_buf = aligned_alloc(64, (bytes + 63) / 64 * 64))) {
            s = dnnl_out_of_memory;
            goto done;
        }
        if ((s = dnnl_memory_create(&packed, want, engine, packed_buf)) != dnnl_success) goto done;
        if ((s = dnnl_memory_desc_create_with_strides(&user_md, 2, wei_dims, dnnl_f32, user_strides)) != dnnl_success)
            goto done;
        if ((s = dnnl_memory_create(&user_mem, user_md, engine, (void *)l->weight)) != dnnl_success) goto done;
        if ((s = dnnl_reorder_primitive_desc_create(&reorder_pd, user_md, engine, want, engine, NULL)) != dnnl_success)
            goto done;
        if ((s = dnnl_primitive_create(&reorder, reorder_pd)) != dnnl_success) goto done;
        if ((s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) != dnnl_success) goto done;
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user_mem}, {DNNL_ARG_TO, packed}};
        if ((s = dnnl_primitive_execute(reorder, stream, 2, args)) != dnnl_success) goto done;
        if ((s = dnnl_stream_wait(stream)) != dnnl_success) goto done;
        dnnl_memory_destroy(l->packed);
        dnnl_memory_desc_destroy(l->packed_md);
        free(l->packed_buf);
        l->packed = packed, l->packed_md = packed_md, l->packed_buf = packed_buf;
        packed = NULL, packed_md = NULL, packed_buf = NULL;
    }
    dnnl_primitive_destroy(l->prim);
    l->prim = prim, l->planned = 1, l->out_type = out_type;
    prim = NULL;
done:
    dnnl_stream_destroy(stream);
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(reorder_pd);
    dnnl_memory_destroy(user_mem);
    dnnl_memory_destroy(packed);
    dnnl_memory_desc_destroy(packed_md);
    free(packed_buf);
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(user_md);
    dnnl_memory_desc_destroy(bias_md);
    dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(wei_any);
    dnnl_memory_desc_destroy(src_md);
    return dnnl_result(s, what);
}

enum mp_status mp_linear_forward(struct mp_linear *l, float *out, const float *in, int64_t M) {
    return mp_linear_forward_typed(l, out, MP_DTYPE_F32, in, MP_DTYPE_F32, M);
}

enum mp_status mp_linear_forward_typed(struct mp_linear *l, void *out, enum mp_dtype out_type, const void *in,
                                       enum mp_dtype in_type, int64_t M) {
    if (!l || M < 0 || (M > 0 && (!out || !in))) return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: bad arguments");
    if ((in_type != MP_DTYPE_F32 && in_type != MP_DTYPE_BF16) || (out_type != MP_DTYPE_F32 && out_type != MP_DTYPE_BF16))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: input and output must be F32 or BF16");
    if (l->precision == MP_PRECISION_FP32 && (in_type != MP_DTYPE_F32 || out_type != MP_DTYPE_F32))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: an fp32 layer takes and gives F32");
    if (l->accumulate && out_type != MP_DTYPE_F32)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: accumulating into BF16 is not supported");
    if (M == 0) return MP_STATUS_OK;
    enum mp_status status = MP_STATUS_OK;
    if ((!l->planned || l->out_type != out_type) && (status = linear_plan(l, out_type)) != MP_STATUS_OK)
        return status;
    const void *src = in;
    if (l->precision == MP_PRECISION_BF16 && in_type == MP_DTYPE_F32) { // AMX takes bf16: round x once per call
        if (M * l->K > l->src_cap) {
            uint16_t *grown = realloc(l->src_bf16, (size_t)(M * l->K) * sizeof *grown);
            if (!grown) return mp_error(MP_STATUS_OUT_OF_MEMORY, "linear_forward: bf16 input buffer");
            l->src_bf16 = grown, l->src_cap = M * l->K;
        }
        mp_dtype_convert(l->src_bf16, MP_DTYPE_BF16, in, MP_DTYPE_F32, M * l->K);
        src = l->src_bf16;
    }
    dnnl_data_type_t src_type = l->precision == MP_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md = NULL, dst_md = NULL;
    dnnl_memory_t src_mem = NULL, dst_mem = NULL;
    dnnl_status_t s;
    dnnl_dims_t src_dims = {M, l->K}, dst_dims = {M, l->N};
    if ((s = dnnl_memory_desc_create_with_tag(&src_md, 2, src_dims, src_type, dnnl_ab)) != dnnl_success) goto done;
    if ((s = dnnl_memory_desc_create_with_tag(&dst_md, 2, dst_dims, out_type == MP_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32,
                                              dnnl_ab)) != dnnl_success)
        goto done;
    if ((s = dnnl_memory_create(&src_mem, src_md, engine, (void *)src)) != dnnl_success) goto done;
    if ((s = dnnl_memory_create(&dst_mem, dst_md, engine, out)) != dnnl_success) goto done;
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, l->packed}, {DNNL_ARG_DST, dst_mem},
                               {DNNL_ARG_SCRATCHPAD, l->scratch_mem}, {DNNL_ARG_BIAS, l->bias_mem}};
    if ((s = dnnl_primitive_execute(l->prim, l->stream, l->bias_mem ? 5 : 4, args)) != dnnl_success) goto done;
    s = dnnl_stream_wait(l->stream);
done:
    dnnl_memory_destroy(dst_mem);
    dnnl_memory_destroy(src_mem);
    dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(src_md);
    return dnnl_result(s, "linear execution");
}
