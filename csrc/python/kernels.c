/* python/kernels.c: the module-level functions over the stateless core kernels: matmul_nt,
 * knn_search, infonce, and the JPEG and image-preprocessing calls. Each converts its arrays,
 * runs one core call without the GIL and maps its status; mp_kernels_binding_add adds them. */
#include "python/binding.h"

/* ---------------------------------------------------------------- matmul */

static PyObject *py_matmul_nt(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", "precision", "out", "num_threads", NULL};
    PyObject *a_obj, *b_obj, *out_obj = NULL, *result = NULL;
    const char *precision_name = "fp32";
    int num_threads = 0;
    PyArrayObject *a = NULL, *b = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$sOi:matmul_nt", kwlist, &a_obj, &b_obj, &precision_name,
                                     &out_obj, &num_threads))
        return NULL;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return NULL;
    if (check_threads(num_threads)) return NULL;
    if (!(a = as_f32_array(a_obj, 2, "a")) || !(b = as_f32_array(b_obj, 2, "b"))) goto done;
    npy_intp M = PyArray_DIM(a, 0), K = PyArray_DIM(a, 1), N = PyArray_DIM(b, 0);
    if (PyArray_DIM(b, 1) != K) {
        PyErr_Format(PyExc_ValueError, "a and b must have the same number of columns, got a (%zd, %zd) and b (%zd, %zd)",
                     (Py_ssize_t)M, (Py_ssize_t)K, (Py_ssize_t)N, (Py_ssize_t)PyArray_DIM(b, 1));
        goto done;
    }
    if (!(out = output_f32(out_obj, M, N, "out"))) goto done;
    enum mp_status status;
    float *out_data = PyArray_DATA(out);
    const float *a_data = PyArray_DATA(a), *b_data = PyArray_DATA(b);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_matmul_nt(out_data, a_data, b_data, M, N, K, precision);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = (PyObject *)out;
    Py_INCREF(result);
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(out);
    return result;
}

/* ---------------------------------------------------------------- JPEG header */

static PyObject *py_jpeg_read_header(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*:jpeg_read_header", &data)) return NULL;
    struct mp_jpeg_header header;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_jpeg_read_header(&header, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (status != MP_STATUS_OK) return raise_status(status);
    return Py_BuildValue("{s:L,s:L,s:i,s:O}", "height", (long long)header.height, "width", (long long)header.width,
                         "components", header.components, "progressive", header.progressive ? Py_True : Py_False);
}

/* ---------------------------------------------------------------- images */

static PyObject *py_jpeg_decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    long long max_pixels = 0;
    if (!PyArg_ParseTuple(args, "y*|L:jpeg_decode", &data, &max_pixels)) return NULL;
    PyObject *result = NULL;
    struct mp_jpeg_header header;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_jpeg_read_header(&header, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (max_pixels > 0 && header.height * header.width > max_pixels) {
        PyErr_Format(MpFormatError, "image of %lld x %lld = %lld pixels exceeds the limit of %lld (a decompression bomb?)",
                     (long long)header.width, (long long)header.height, (long long)(header.height * header.width),
                     max_pixels);
        goto done;
    }
    npy_intp dims[3] = {(npy_intp)header.height, (npy_intp)header.width, 3};
    PyObject *rgb = PyArray_EMPTY(3, dims, NPY_UINT8, 0);
    if (!rgb) goto done;
    uint8_t *pixels = PyArray_DATA((PyArrayObject *)rgb);
    Py_BEGIN_ALLOW_THREADS
    status = mp_image_decode_jpeg(pixels, data.buf, (size_t)data.len, header.height, header.width);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        Py_DECREF(rgb);
        raise_status(status);
        goto done;
    }
    result = rgb;
done:
    PyBuffer_Release(&data);
    return result;
}

#define MESSAGE_SIZE 512

/* preprocess(items, resize, crop, mean, std, resample, max_pixels, fast, num_threads)
 *   -> (out (N, 3, crop_h, crop_w) float32, status (N) int32, messages: list[str | None])
 * items: JPEG bytes-like objects or (H, W, 3) uint8 arrays. */
static PyObject *py_image_preprocess(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"items", "resize", "crop", "mean", "std", "resample", "max_pixels", "fast",
                             "pass_order", "num_threads", NULL};
    PyObject *items_obj, *result = NULL, *seq = NULL, *out = NULL, *status_arr = NULL, *message_list = NULL;
    struct mp_transform t = {0};
    long long resize, crop_h, crop_w, max_pixels;
    int resample, fast, pass_order = MP_PASS_ORDER_PILLOW13, num_threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL(LL)(fff)(fff)iLp|$ii:preprocess", kwlist, &items_obj, &resize,
                                     &crop_h, &crop_w, &t.mean[0], &t.mean[1], &t.mean[2], &t.std[0], &t.std[1],
                                     &t.std[2], &resample, &max_pixels, &fast, &pass_order, &num_threads))
        return NULL;
    if (check_threads(num_threads)) return NULL;
    if (resize < 0 || crop_h <= 0 || crop_w <= 0 || crop_h > 1 << 16 || crop_w > 1 << 16 || resize > 1 << 16)
        return PyErr_Format(PyExc_ValueError, "resize must be in [0, 65536] and crop sides in [1, 65536], got %lld, (%lld, %lld)",
                            resize, crop_h, crop_w);
    t.resize = resize;
    t.crop_h = crop_h;
    t.crop_w = crop_w;
    t.resample = (enum mp_resample)resample;
    t.max_pixels = max_pixels;
    t.fast = fast;
    if (pass_order != MP_PASS_ORDER_PILLOW12 && pass_order != MP_PASS_ORDER_PILLOW13)
        return PyErr_Format(PyExc_ValueError, "pass_order must be 0 (Pillow <= 12) or 1 (Pillow >= 13), got %d",
                            pass_order);
    t.pass_order = (enum mp_pass_order)pass_order;
    if (!(seq = PySequence_Fast(items_obj, "items must be a sequence"))) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct mp_image_input *inputs = PyMem_Calloc((size_t)n + 1, sizeof *inputs);
    Py_buffer *buffers = PyMem_Calloc((size_t)n + 1, sizeof *buffers);
    PyObject **arrays = PyMem_Calloc((size_t)n + 1, sizeof *arrays);
    int32_t *item_status = NULL;
    char *messages = PyMem_Calloc((size_t)n + 1, MESSAGE_SIZE);
    Py_ssize_t held = 0; // buffers[0..held) are acquired
    if (!inputs || !buffers || !arrays || !messages) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++, held = i) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyArray_Check(item)) {
            PyArrayObject *arr = (PyArrayObject *)item;
            if (PyArray_TYPE(arr) != NPY_UINT8 || PyArray_NDIM(arr) != 3 || PyArray_DIM(arr, 2) != 3 ||
                PyArray_DIM(arr, 0) < 1 || PyArray_DIM(arr, 1) < 1) {
                PyErr_Format(PyExc_ValueError, "item %zd: pixel arrays must be (H, W, 3) uint8 with H, W >= 1", i);
                goto done;
            }
            PyObject *c = PyArray_FROM_OTF(item, NPY_UINT8, NPY_ARRAY_IN_ARRAY);
            if (!c) goto done;
            arrays[i] = c;
            inputs[i].pixels = PyArray_DATA((PyArrayObject *)c);
            inputs[i].height = PyArray_DIM((PyArrayObject *)c, 0);
            inputs[i].width = PyArray_DIM((PyArrayObject *)c, 1);
            inputs[i].row_stride = PyArray_STRIDE((PyArrayObject *)c, 0);
        } else {
            if (PyObject_GetBuffer(item, &buffers[i], PyBUF_SIMPLE) != 0) goto done;
            inputs[i].bytes = buffers[i].buf ? buffers[i].buf : (const uint8_t *)"";
            inputs[i].size = (size_t)buffers[i].len;
        }
    }
    held = n;
    npy_intp dims[4] = {n, 3, (npy_intp)crop_h, (npy_intp)crop_w}, sdims[1] = {n};
    if (!(out = PyArray_EMPTY(4, dims, NPY_FLOAT32, 0)) || !(status_arr = PyArray_EMPTY(1, sdims, NPY_INT32, 0)))
        goto done;
    float *out_data = PyArray_DATA((PyArrayObject *)out);
    item_status = PyArray_DATA((PyArrayObject *)status_arr);
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_image_preprocess(out_data, item_status, messages, MESSAGE_SIZE, inputs, n, &t);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (!(message_list = PyList_New(n))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = item_status[i] == MP_STATUS_OK ? Py_NewRef(Py_None)
                                                     : PyUnicode_DecodeUTF8(messages + i * MESSAGE_SIZE,
                                                                            (Py_ssize_t)strlen(messages + i * MESSAGE_SIZE),
                                                                            "replace");
        if (!m) goto done;
        PyList_SET_ITEM(message_list, i, m);
    }
    result = PyTuple_Pack(3, out, status_arr, message_list);
done:
    for (Py_ssize_t i = 0; buffers && i < held; i++)
        if (buffers[i].obj) PyBuffer_Release(&buffers[i]);
    for (Py_ssize_t i = 0; arrays && i < n; i++) Py_XDECREF(arrays[i]);
    PyMem_Free(inputs);
    PyMem_Free(buffers);
    PyMem_Free(arrays);
    PyMem_Free(messages);
    Py_XDECREF(seq);
    Py_XDECREF(out);
    Py_XDECREF(status_arr);
    Py_XDECREF(message_list);
    return result;
}

/* ---------------------------------------------------------------- kNN */

// knn_search(queries, corpus, k, lo=-inf, hi=inf, *, exclude_self=False, precision="bf16",
//            exact=True, float64=False, num_threads=0) -> (scores (Q, k) float32, or float64 with
//            float64: the scores the ranking used, before rounding; indices (Q, k) int64; candidates)
static PyObject *py_knn_search(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"queries", "corpus", "k", "lo", "hi", "exclude_self", "precision", "exact",
                             "float64", "num_threads", NULL};
    PyObject *q_obj, *c_obj, *result = NULL, *scores = NULL, *scores64 = NULL, *indices = NULL;
    long long k;
    double lo = -INFINITY, hi = INFINITY;
    int exclude_self = 0, exact = 1, float64 = 0, num_threads = 0;
    const char *precision_name = "bf16";
    PyArrayObject *q = NULL, *c = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOL|dd$psppi:knn_search", kwlist, &q_obj, &c_obj, &k, &lo, &hi,
                                     &exclude_self, &precision_name, &exact, &float64, &num_threads))
        return NULL;
    if (check_threads(num_threads)) return NULL;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return NULL;
    if (k <= 0) return PyErr_Format(PyExc_ValueError, "k must be positive, got %lld", k);
    if (!(q = as_f32_array(q_obj, 2, "queries")) || !(c = as_f32_array(c_obj, 2, "corpus"))) goto done;
    npy_intp Q = PyArray_DIM(q, 0), M = PyArray_DIM(c, 0), d = PyArray_DIM(q, 1);
    if (PyArray_DIM(c, 1) != d) {
        PyErr_Format(PyExc_ValueError, "queries have dimension %zd but the corpus has %zd", (Py_ssize_t)d,
                     (Py_ssize_t)PyArray_DIM(c, 1));
        goto done;
    }
    npy_intp dims[2] = {Q, (npy_intp)k};
    if (!(scores = PyArray_EMPTY(2, dims, NPY_FLOAT32, 0)) || !(indices = PyArray_EMPTY(2, dims, NPY_INT64, 0)) ||
        (float64 && !(scores64 = PyArray_EMPTY(2, dims, NPY_FLOAT64, 0))))
        goto done;
    double *sd64 = scores64 ? PyArray_DATA((PyArrayObject *)scores64) : NULL;
    struct mp_knn_stats stats = {0};
    enum mp_status status;
    const float *qd = PyArray_DATA(q), *cd = PyArray_DATA(c);
    float *sd = PyArray_DATA((PyArrayObject *)scores);
    int64_t *id = PyArray_DATA((PyArrayObject *)indices);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_knn_search(sd, sd64, id, qd, Q, cd, M, d, k, lo, hi, exclude_self, precision, exact, &stats);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = Py_BuildValue("OOL", scores64 ? scores64 : scores, indices, (long long)stats.candidates);
done:
    Py_XDECREF(q);
    Py_XDECREF(c);
    Py_XDECREF(scores);
    Py_XDECREF(scores64);
    Py_XDECREF(indices);
    return result;
}

/* ---------------------------------------------------------------- InfoNCE */

// infonce(q (B, E), c (N, E), positives (B,) int64, ids (N,) int64 or None, temperature, *,
//         grad=True, num_threads=0) -> (loss, dq or None, dc or None, dtau or None, row_loss)
static PyObject *py_infonce(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"q", "c", "positives", "ids", "temperature", "grad", "precision", "num_threads", NULL};
    PyObject *q_obj, *c_obj, *pos_obj, *ids_obj, *result = NULL, *dq = NULL, *dc = NULL, *rows = NULL;
    double tau;
    int grad = 1, num_threads = 0;
    const char *precision_name = "fp32";
    PyArrayObject *q = NULL, *c = NULL, *pos = NULL, *ids = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd|$psi:infonce", kwlist, &q_obj, &c_obj, &pos_obj, &ids_obj,
                                     &tau, &grad, &precision_name, &num_threads))
        return NULL;
    if (check_threads(num_threads)) return NULL;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return NULL;
    if (!(q = as_f32_array(q_obj, 2, "q")) || !(c = as_f32_array(c_obj, 2, "c"))) goto done;
    if (!(pos = (PyArrayObject *)PyArray_FROM_OTF(pos_obj, NPY_INT64, NPY_ARRAY_IN_ARRAY))) goto done;
    if (ids_obj != Py_None && !(ids = (PyArrayObject *)PyArray_FROM_OTF(ids_obj, NPY_INT64, NPY_ARRAY_IN_ARRAY)))
        goto done;
    npy_intp B = PyArray_DIM(q, 0), E = PyArray_DIM(q, 1), N = PyArray_DIM(c, 0);
    if (PyArray_DIM(c, 1) != E || PyArray_NDIM(pos) != 1 || PyArray_DIM(pos, 0) != B ||
        (ids && (PyArray_NDIM(ids) != 1 || PyArray_DIM(ids, 0) != N))) {
        PyErr_SetString(PyExc_ValueError, "infonce: shapes must be q (B, E), c (N, E), positives (B,), ids (N,)");
        goto done;
    }
    npy_intp qdims[2] = {B, E}, cdims[2] = {N, E}, rdims[1] = {B};
    if (!(rows = PyArray_EMPTY(1, rdims, NPY_FLOAT32, 0))) goto done;
    if (grad && (!(dq = PyArray_EMPTY(2, qdims, NPY_FLOAT32, 0)) || !(dc = PyArray_EMPTY(2, cdims, NPY_FLOAT32, 0))))
        goto done;
    float loss = 0.0f, dtau = 0.0f;
    enum mp_status status;
    const float *qd = PyArray_DATA(q), *cd = PyArray_DATA(c);
    const int64_t *pd = PyArray_DATA(pos), *idd = ids ? PyArray_DATA(ids) : NULL;
    float *dqd = dq ? PyArray_DATA((PyArrayObject *)dq) : NULL, *dcd = dc ? PyArray_DATA((PyArrayObject *)dc) : NULL;
    float *rd = PyArray_DATA((PyArrayObject *)rows);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_infonce(&loss, dqd, dcd, grad ? &dtau : NULL, qd, cd, pd, idd, B, N, E, (float)tau, rd, precision);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (grad) result = Py_BuildValue("dOOdO", (double)loss, dq, dc, (double)dtau, rows);
    else result = Py_BuildValue("dOOOO", (double)loss, Py_None, Py_None, Py_None, rows);
done:
    Py_XDECREF(q);
    Py_XDECREF(c);
    Py_XDECREF(pos);
    Py_XDECREF(ids);
    Py_XDECREF(dq);
    Py_XDECREF(dc);
    Py_XDECREF(rows);
    return result;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef kernels_methods[] = {
    {"jpeg_read_header", py_jpeg_read_header, METH_VARARGS, "jpeg_read_header(data) -> dict."},
    {"jpeg_decode", py_jpeg_decode, METH_VARARGS, "jpeg_decode(data, max_pixels=0) -> (H, W, 3) uint8."},
    {"preprocess", (PyCFunction)(void (*)(void))py_image_preprocess, METH_VARARGS | METH_KEYWORDS,
     "preprocess(items, resize, crop, mean, std, resample, max_pixels, fast, *, pass_order=1, num_threads=0)."},
    {"infonce", (PyCFunction)(void (*)(void))py_infonce, METH_VARARGS | METH_KEYWORDS,
     "infonce(q, c, positives, ids, temperature, *, grad=True, precision='fp32', num_threads=0) -> (loss, dq, dc, dtau, "
     "row_loss)."},
    {"knn_search", (PyCFunction)(void (*)(void))py_knn_search, METH_VARARGS | METH_KEYWORDS,
     "knn_search(queries, corpus, k, lo=-inf, hi=inf, *, exclude_self=False, precision='bf16', exact=True, "
     "num_threads=0) -> (scores, indices, candidates)."},
    {"matmul_nt", (PyCFunction)(void (*)(void))py_matmul_nt, METH_VARARGS | METH_KEYWORDS,
     "matmul_nt(a, b, *, precision='fp32', out=None, num_threads=0) -> a @ b.T as float32."},
    {NULL, NULL, 0, NULL},
};

int mp_kernels_binding_add(PyObject *module) { return PyModule_AddFunctions(module, kernels_methods); }
