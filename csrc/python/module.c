/* python/module.c: megapairs._core module definition, shared helpers, and the bindings of the
 * core, image, matmul, ViT and safetensors APIs (python/text.c binds the tokenizers).
 *
 * Every function has one shape: parse arguments, convert arrays, allocate outputs,
 * release the GIL around exactly one core call, map its status, clean up at `done:`.
 * No algorithm lives here; C checks memory (dtype, rank, contiguity, shapes) and the
 * Python layer checks meaning. */
#define MP_BINDING_MAIN
#include "python/binding.h"

PyObject *MpError;       // megapairs.Error(RuntimeError)
PyObject *MpFormatError; // megapairs.FormatError(Error, ValueError)

/* ---------------------------------------------------------------- helpers */

// Sets the Python exception for `status`, with mp_last_error() as its text; returns NULL.
PyObject *raise_status(enum mp_status status) {
    const char *message = mp_last_error();
    if (!message[0]) message = mp_status_str(status);
    switch (status) {
    case MP_STATUS_INVALID_ARGUMENT: PyErr_SetString(PyExc_ValueError, message); break;
    case MP_STATUS_OUT_OF_MEMORY: PyErr_SetString(PyExc_MemoryError, message); break;
    case MP_STATUS_IO: PyErr_SetString(PyExc_OSError, message); break;
    case MP_STATUS_BAD_FORMAT: PyErr_SetString(MpFormatError, message); break;
    default: PyErr_SetString(MpError, message); break;
    }
    return NULL;
}

// New reference to an aligned, C-contiguous float32 array of rank `ndim` made from `obj`
// (zero-copy when it already is one), or NULL with TypeError/ValueError set.
PyArrayObject *as_f32_array(PyObject *obj, int ndim, const char *name) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) return NULL;
    char kind = PyArray_DESCR(arr)->kind;
    if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
        PyErr_Format(PyExc_TypeError, "%s must be a real numeric array, got dtype %R", name, PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    if (PyArray_NDIM(arr) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D array, got %d-D", name, ndim, PyArray_NDIM(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *f32 = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_FLOAT32,
                                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(arr);
    return f32;
}

// New reference to `out` after checking it can receive a (rows, cols) float32 result,
// a fresh array when out is None, or NULL with an exception set.
PyArrayObject *output_f32(PyObject *out, npy_intp rows, npy_intp cols, const char *name) {
    npy_intp dims[2] = {rows, cols};
    if (!out || out == Py_None) return (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0);
    if (!PyArray_Check(out)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name, Py_TYPE(out)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)out;
    if (PyArray_TYPE(arr) != NPY_FLOAT32 || PyArray_NDIM(arr) != 2 || PyArray_DIM(arr, 0) != rows ||
        PyArray_DIM(arr, 1) != cols || !PyArray_ISCARRAY(arr)) {
        PyObject *shape = PyObject_GetAttrString(out, "shape");
        if (shape)
            PyErr_Format(PyExc_ValueError,
                         "%s must be a writeable C-contiguous float32 array of shape (%zd, %zd), got %R of shape %R",
                         name, (Py_ssize_t)rows, (Py_ssize_t)cols, PyArray_DESCR(arr), shape);
        Py_XDECREF(shape);
        return NULL;
    }
    Py_INCREF(arr);
    return arr;
}

int check_threads(int num_threads) {
    if (num_threads >= 0) return 0;
    PyErr_Format(PyExc_ValueError, "num_threads must be >= 0 (0 means the default), got %d", num_threads);
    return -1;
}

int parse_precision(const char *name, enum mp_precision *out) {
    if (strcmp(name, "fp32") == 0) *out = MP_PRECISION_FP32;
    else if (strcmp(name, "bf16") == 0) *out = MP_PRECISION_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "precision must be 'fp32' or 'bf16', got '%s'", name);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- threads, build info */

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 1 << 16)
        return PyErr_Format(PyExc_ValueError, "num_threads must be in [0, 65536] (0 restores the default), got %ld", n);
    mp_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyLong_FromLong(mp_get_num_threads());
}

static PyObject *py_onednn_info(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    struct mp_onednn_info info;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_onednn_info(&info);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) return raise_status(status);
    return Py_BuildValue("{s:(iii),s:s,s:s,s:s}", "version", info.version_major, info.version_minor,
                         info.version_patch, "hash", info.version_hash, "cpu_runtime", info.cpu_runtime, "cpu_isa",
                         info.cpu_isa);
}

static PyObject *py_jpeg_version(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyUnicode_FromString(mp_jpeg_library_version());
}

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

/* ---------------------------------------------------------------- ViT encoder
 * Vit(config: dict, tensors: list of float32 arrays in the canonical order of vit.h).
 * The Python layer maps checkpoint names and checks shapes; this checks sizes and memory. */

// Allocates *lock if needed; -1 with MemoryError set when it cannot.
static int handle_lock(PyThread_type_lock *lock) {
    if (!*lock && !(*lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    struct mp_vit *vit;
    PyThread_type_lock lock; // the handle's arena and kept primitives admit one call at a time
    int64_t image_size, patch_size, width;
    int fixed_size; // CLIP takes only image_size; DINOv2 interpolates its positions
} VitObject;

static int dict_int(PyObject *dict, const char *key, int64_t *out) {
    PyObject *v = PyDict_GetItemString(dict, key); // borrowed
    if (!v) {
        PyErr_Format(PyExc_ValueError, "config has no '%s'", key);
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

// The enum value named `key` in config: one of names[0..count), or -1 with ValueError.
static int dict_name(PyObject *dict, const char *key, const char *const *names, int count, int *out) {
    PyObject *v = PyDict_GetItemString(dict, key); // borrowed
    const char *name = v ? PyUnicode_AsUTF8(v) : NULL;
    if (!v) PyErr_Format(PyExc_ValueError, "config has no '%s'", key);
    if (!name) return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(name, names[i]) == 0) return *out = i, 0;
    PyErr_Format(PyExc_ValueError, "config '%s' is %R, not one of the names the core knows", key, v);
    return -1;
}

static const char *const ACTIVATIONS[] = {"gelu", "quick_gelu"}; // enum mp_activation

// A checkpoint for mp_*_init: the readers' handles and the aliases, with the Python objects
// that own them held until checkpoint_args_free (the GIL is released while they are read).
struct checkpoint_args {
    PyObject *files, *items; // a fast sequence of readers; a list of (name, source) pairs
    struct mp_safetensors **handles;
    struct mp_weight_alias *aliases;
    struct mp_checkpoint ck;
};

static void checkpoint_args_free(struct checkpoint_args *a) {
    Py_XDECREF(a->files);
    Py_XDECREF(a->items);
    PyMem_Free(a->handles);
    PyMem_Free(a->aliases);
    memset(a, 0, sizeof *a);
}

static struct mp_safetensors *reader_handle(PyObject *obj);

static int checkpoint_args_init(struct checkpoint_args *a, PyObject *files, PyObject *aliases) {
    memset(a, 0, sizeof *a);
    if (!PyDict_Check(aliases)) {
        PyErr_SetString(PyExc_TypeError, "aliases must be a dict of str to str");
        return -1;
    }
    if (!(a->files = PySequence_Fast(files, "files must be a sequence of SafetensorsReader")) ||
        !(a->items = PyDict_Items(aliases)))
        goto fail;
    Py_ssize_t n_files = PySequence_Fast_GET_SIZE(a->files), n_aliases = PyList_GET_SIZE(a->items);
    a->handles = PyMem_Calloc((size_t)n_files + 1, sizeof *a->handles);
    a->aliases = PyMem_Calloc((size_t)n_aliases + 1, sizeof *a->aliases);
    if (!a->handles || !a->aliases) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n_files; i++)
        if (!(a->handles[i] = reader_handle(PySequence_Fast_GET_ITEM(a->files, i)))) goto fail;
    for (Py_ssize_t i = 0; i < n_aliases; i++) {
        PyObject *item = PyList_GET_ITEM(a->items, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *source = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_Check(name) || !PyUnicode_Check(source)) {
            PyErr_Format(PyExc_TypeError, "aliases must map str to str, got %R: %R", name, source);
            goto fail;
        }
        if (!(a->aliases[i].name = PyUnicode_AsUTF8(name)) || !(a->aliases[i].source = PyUnicode_AsUTF8(source)))
            goto fail;
    }
    a->ck = (struct mp_checkpoint){a->handles, n_files, a->aliases, n_aliases};
    return 0;
fail:
    checkpoint_args_free(a);
    return -1;
}

static int vit_init_py(VitObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"config", "files", "aliases", NULL};
    static const char *const kinds[] = {"clip", "dinov2"}; // enum mp_vit_kind
    PyObject *config, *files, *aliases;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO:Vit", kwlist, &PyDict_Type, &config, &files, &aliases))
        return -1;
    struct mp_vit_config c = {0};
    int activation = 0, kind = 0;
    PyObject *eps = PyDict_GetItemString(config, "eps");
    if (dict_name(config, "kind", kinds, 2, &kind) || dict_int(config, "image_size", &c.image_size) ||
        dict_int(config, "patch_size", &c.patch_size) || dict_int(config, "width", &c.width) ||
        dict_int(config, "layers", &c.layers) || dict_int(config, "heads", &c.heads) ||
        dict_int(config, "mlp", &c.mlp) || dict_int(config, "projection", &c.projection) ||
        dict_name(config, "activation", ACTIVATIONS, 2, &activation))
        return -1;
    PyObject *registers = PyDict_GetItemString(config, "registers"), *swiglu = PyDict_GetItemString(config, "swiglu");
    if (registers && (c.registers = PyLong_AsLongLong(registers)) == -1 && PyErr_Occurred()) return -1;
    if (swiglu && (c.swiglu = PyObject_IsTrue(swiglu)) < 0) return -1;
    if (!eps) {
        PyErr_SetString(PyExc_ValueError, "config has no 'eps'");
        return -1;
    }
    c.eps = (float)PyFloat_AsDouble(eps);
    if (PyErr_Occurred()) return -1;
    c.kind = (enum mp_vit_kind)kind;
    c.activation = (enum mp_activation)activation;
    struct checkpoint_args t;
    if (checkpoint_args_init(&t, files, aliases)) return -1;
    int rc = -1;
    struct mp_vit *vit = NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_vit_init(&vit, &c, &t.ck);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (handle_lock(&self->lock)) {
        mp_vit_free(vit);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    mp_vit_free(self->vit);
    self->vit = vit;
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    self->image_size = c.image_size;
    self->patch_size = c.patch_size;
    self->width = c.width;
    self->fixed_size = c.kind == MP_VIT_CLIP;
    rc = 0;
done:
    checkpoint_args_free(&t);
    return rc;
}

static void vit_dealloc(VitObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_vit_free(self->vit);
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

// encode(pixels (N, 3, S, S), *, positions=None, pooling="cls", precision="fp32", num_threads=0)
//   -> (N, output dim) float32
static PyObject *vit_encode(VitObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"pixels", "positions", "pooling", "precision", "num_threads", NULL};
    PyObject *pixels_obj, *positions_obj = Py_None, *result = NULL, *out = NULL;
    const char *precision_name = "fp32", *pooling_name = "cls";
    int num_threads = 0;
    PyArrayObject *pixels = NULL, *positions = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$Ossi:encode", kwlist, &pixels_obj, &positions_obj,
                                     &pooling_name, &precision_name, &num_threads))
        return NULL;
    if (!self->vit) return PyErr_Format(PyExc_ValueError, "Vit is not initialised");
    if (check_threads(num_threads)) return NULL;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return NULL;
    enum mp_vit_pooling pooling;
    if (strcmp(pooling_name, "cls") == 0) pooling = MP_VIT_POOL_CLS;
    else if (strcmp(pooling_name, "cls+mean") == 0) pooling = MP_VIT_POOL_CLS_MEAN;
    else if (strcmp(pooling_name, "mean") == 0) pooling = MP_VIT_POOL_MEAN;
    else return PyErr_Format(PyExc_ValueError, "pooling must be 'cls', 'cls+mean' or 'mean', got '%s'", pooling_name);
    npy_intp E = (npy_intp)mp_vit_output_dim(self->vit, pooling);
    if (E == 0) return PyErr_Format(PyExc_ValueError, "pooling '%s' is not available for this model", pooling_name);
    if (!(pixels = as_f32_array(pixels_obj, 4, "pixels"))) return NULL;
    npy_intp N = PyArray_DIM(pixels, 0), S = PyArray_DIM(pixels, 2);
    if (PyArray_DIM(pixels, 1) != 3 || PyArray_DIM(pixels, 3) != S || S < self->patch_size ||
        (self->fixed_size && S != (npy_intp)self->image_size)) {
        if (self->fixed_size)
            PyErr_Format(PyExc_ValueError, "pixels must be (N, 3, %zd, %zd), got (%zd, %zd, %zd, %zd)",
                         (Py_ssize_t)self->image_size, (Py_ssize_t)self->image_size, (Py_ssize_t)N,
                         (Py_ssize_t)PyArray_DIM(pixels, 1), (Py_ssize_t)S, (Py_ssize_t)PyArray_DIM(pixels, 3));
        else
            PyErr_Format(PyExc_ValueError, "pixels must be (N, 3, S, S) with S >= %zd, got (%zd, %zd, %zd, %zd)",
                         (Py_ssize_t)self->patch_size, (Py_ssize_t)N, (Py_ssize_t)PyArray_DIM(pixels, 1),
                         (Py_ssize_t)S, (Py_ssize_t)PyArray_DIM(pixels, 3));
        goto done;
    }
    if (positions_obj != Py_None) {
        if (!(positions = as_f32_array(positions_obj, 2, "positions"))) goto done;
        npy_intp g = S / (npy_intp)self->patch_size;
        if (PyArray_DIM(positions, 0) != 1 + g * g || PyArray_DIM(positions, 1) != (npy_intp)self->width) {
            PyErr_Format(PyExc_ValueError, "positions must be (%zd, %zd) for %zd-pixel images, got (%zd, %zd)",
                         (Py_ssize_t)(1 + g * g), (Py_ssize_t)self->width, (Py_ssize_t)S,
                         (Py_ssize_t)PyArray_DIM(positions, 0), (Py_ssize_t)PyArray_DIM(positions, 1));
            goto done;
        }
    }
    npy_intp dims[2] = {N, E};
    if (!(out = PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))) goto done;
    float *out_data = PyArray_DATA((PyArrayObject *)out);
    const float *in = PyArray_DATA(pixels), *pos = positions ? PyArray_DATA(positions) : NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_vit_encode(self->vit, out_data, in, N, S, pos, pooling, precision);
    mp_thread_scope_end(scope);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(pixels);
    Py_XDECREF(positions);
    Py_XDECREF(out);
    return result;
}

// positions() -> (1 + G*G, D) float32: a copy of the checkpoint's position table.
static PyObject *vit_positions(VitObject *self, PyObject *unused) {
    (void)unused;
    if (!self->vit) {
        PyErr_SetString(PyExc_ValueError, "the model is not initialised");
        return NULL;
    }
    int64_t G = self->image_size / self->patch_size;
    npy_intp dims[2] = {(npy_intp)(1 + G * G), (npy_intp)self->width};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out) memcpy(PyArray_DATA((PyArrayObject *)out), mp_vit_positions(self->vit), (size_t)(dims[0] * dims[1]) * 4);
    return out;
}

static PyMethodDef vit_methods[] = {
    {"positions", (PyCFunction)vit_positions, METH_NOARGS,
     "positions() -> (1 + G*G, D) float32: the checkpoint's position embeddings."},
    {"encode", (PyCFunction)(void (*)(void))vit_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(pixels, *, precision='fp32', num_threads=0) -> (N, E) float32."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot vit_slots[] = {
    {Py_tp_doc, "Vit(config, tensors): a Vision Transformer image tower held by the C core."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, vit_init_py},
    {Py_tp_dealloc, vit_dealloc},
    {Py_tp_methods, vit_methods},
    {0, NULL},
};

static PyType_Spec vit_spec = {
    .name = "megapairs._core.Vit",
    .basicsize = sizeof(VitObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = vit_slots,
};

/* ---------------------------------------------------------------- kNN */

// knn_search(queries, corpus, k, lo=-inf, hi=inf, *, exclude_self=False, precision="bf16",
//            exact=True, num_threads=0) -> (scores (Q, k) float32, indices (Q, k) int64, candidates)
static PyObject *py_knn_search(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"queries", "corpus", "k", "lo", "hi", "exclude_self", "precision", "exact",
                             "num_threads", NULL};
    PyObject *q_obj, *c_obj, *result = NULL, *scores = NULL, *indices = NULL;
    long long k;
    double lo = -INFINITY, hi = INFINITY;
    int exclude_self = 0, exact = 1, num_threads = 0;
    const char *precision_name = "bf16";
    PyArrayObject *q = NULL, *c = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOL|dd$pspi:knn_search", kwlist, &q_obj, &c_obj, &k, &lo, &hi,
                                     &exclude_self, &precision_name, &exact, &num_threads))
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
    if (!(scores = PyArray_EMPTY(2, dims, NPY_FLOAT32, 0)) || !(indices = PyArray_EMPTY(2, dims, NPY_INT64, 0)))
        goto done;
    struct mp_knn_stats stats = {0};
    enum mp_status status;
    const float *qd = PyArray_DATA(q), *cd = PyArray_DATA(c);
    float *sd = PyArray_DATA((PyArrayObject *)scores);
    int64_t *id = PyArray_DATA((PyArrayObject *)indices);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_knn_search(sd, id, qd, Q, cd, M, d, k, lo, hi, exclude_self, precision, exact, &stats);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = Py_BuildValue("OOL", scores, indices, (long long)stats.candidates);
done:
    Py_XDECREF(q);
    Py_XDECREF(c);
    Py_XDECREF(scores);
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

/* ---------------------------------------------------------------- text transformer */

typedef struct {
    PyObject_HEAD
    struct mp_text *text;
    PyThread_type_lock lock; // the handle's arena and kept primitives admit one call at a time
} TextObject;


static int text_init_py(TextObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"config", "files", "aliases", NULL};
    static const char *const kinds[] = {"clip", "bert"}; // enum mp_text_kind
    PyObject *config, *files, *aliases;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO:Text", kwlist, &PyDict_Type, &config, &files, &aliases))
        return -1;
    struct mp_text_config c = {0};
    int activation = 0, kind = 0;
    if (dict_name(config, "kind", kinds, 2, &kind) || dict_int(config, "vocab", &c.vocab) ||
        dict_int(config, "positions", &c.positions) || dict_int(config, "token_types", &c.token_types) ||
        dict_int(config, "width", &c.width) || dict_int(config, "layers", &c.layers) ||
        dict_int(config, "heads", &c.heads) || dict_int(config, "mlp", &c.mlp) ||
        dict_int(config, "projection", &c.projection) || dict_name(config, "activation", ACTIVATIONS, 2, &activation))
        return -1;
    PyObject *eps = PyDict_GetItemString(config, "eps");
    if (!eps) {
        PyErr_SetString(PyExc_ValueError, "config has no 'eps'");
        return -1;
    }
    c.eps = (float)PyFloat_AsDouble(eps);
    if (PyErr_Occurred()) return -1;
    c.kind = (enum mp_text_kind)kind;
    c.activation = (enum mp_activation)activation;
    struct checkpoint_args t;
    if (checkpoint_args_init(&t, files, aliases)) return -1;
    int rc = -1;
    struct mp_text *text = NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_text_init(&text, &c, &t.ck);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (handle_lock(&self->lock)) {
        mp_text_free(text);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    mp_text_free(self->text);
    self->text = text;
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    rc = 0;
done:
    checkpoint_args_free(&t);
    return rc;
}

static void text_dealloc(TextObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_text_free(self->text);
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

// New reference to a C-contiguous int64 vector made from `obj`, or NULL with an exception set.
static PyArrayObject *as_i64_vector(PyObject *obj, const char *name) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) return NULL;
    char kind = PyArray_DESCR(arr)->kind;
    if ((kind != 'i' && kind != 'u') || PyArray_NDIM(arr) != 1) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D integer array, got %d-D dtype %R", name, PyArray_NDIM(arr),
                     PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *i64 = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_INT64,
                                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(arr);
    return i64;
}

// encode(ids (R,), offsets (N + 1,), *, token_types=None, pooling="last", precision="fp32",
//        num_threads=0) -> (N, output dim) float32
static PyObject *text_encode(TextObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"ids", "offsets", "token_types", "pooling", "precision", "num_threads", NULL};
    PyObject *ids_obj, *offsets_obj, *types_obj = Py_None, *result = NULL, *out = NULL;
    const char *precision_name = "fp32", *pooling_name = "last";
    int num_threads = 0;
    PyArrayObject *ids = NULL, *offsets = NULL, *types = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$Ossi:encode", kwlist, &ids_obj, &offsets_obj, &types_obj,
                                     &pooling_name, &precision_name, &num_threads))
        return NULL;
    if (!self->text) return PyErr_Format(PyExc_ValueError, "Text is not initialised");
    if (check_threads(num_threads)) return NULL;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return NULL;
    enum mp_text_pooling pooling;
    if (strcmp(pooling_name, "last") == 0) pooling = MP_TEXT_POOL_LAST;
    else if (strcmp(pooling_name, "mean") == 0) pooling = MP_TEXT_POOL_MEAN;
    else if (strcmp(pooling_name, "cls") == 0) pooling = MP_TEXT_POOL_CLS;
    else return PyErr_Format(PyExc_ValueError, "pooling must be 'last', 'mean' or 'cls', got '%s'", pooling_name);
    npy_intp E = (npy_intp)mp_text_output_dim(self->text, pooling);
    if (E == 0) return PyErr_Format(PyExc_ValueError, "pooling '%s' is not available for this model", pooling_name);
    if (!(ids = as_i64_vector(ids_obj, "ids")) || !(offsets = as_i64_vector(offsets_obj, "offsets"))) goto done;
    if (types_obj != Py_None && !(types = as_i64_vector(types_obj, "token_types"))) goto done;
    npy_intp N = PyArray_DIM(offsets, 0) - 1, R = PyArray_DIM(ids, 0);
    const int64_t *off = PyArray_DATA(offsets);
    if (N < 0 || off[N] != R || (types && PyArray_DIM(types, 0) != R)) {
        PyErr_Format(PyExc_ValueError,
                     "offsets must hold N + 1 >= 1 entries ending at len(ids) = %zd, and token_types match ids",
                     (Py_ssize_t)R);
        goto done;
    }
    for (npy_intp s = 0; s < N; s++)
        if (off[s + 1] < off[s]) {
            PyErr_Format(PyExc_ValueError, "offsets must be nondecreasing (offsets[%zd] > offsets[%zd])",
                         (Py_ssize_t)s, (Py_ssize_t)(s + 1));
            goto done;
        }
    npy_intp dims[2] = {N, E};
    if (!(out = PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))) goto done;
    float *out_data = PyArray_DATA((PyArrayObject *)out);
    const int64_t *id_data = PyArray_DATA(ids), *type_data = types ? PyArray_DATA(types) : NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_text_encode(self->text, out_data, id_data, type_data, off, N, pooling, precision);
    mp_thread_scope_end(scope);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(ids);
    Py_XDECREF(offsets);
    Py_XDECREF(types);
    Py_XDECREF(out);
    return result;
}

static PyMethodDef text_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))text_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(ids, offsets, *, token_types=None, pooling='last', precision='fp32', num_threads=0) -> (N, E) float32."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot text_slots[] = {
    {Py_tp_doc, "Text(config, tensors): a text Transformer (CLIP text tower or BERT) held by the C core."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, text_init_py},
    {Py_tp_dealloc, text_dealloc},
    {Py_tp_methods, text_methods},
    {0, NULL},
};

static PyType_Spec text_spec = {
    .name = "megapairs._core.Text",
    .basicsize = sizeof(TextObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = text_slots,
};

/* ---------------------------------------------------------------- safetensors reader
 * Arrays returned by get() view the mapping and hold a reference to the reader, so the
 * mapping is released only when the reader and every view of it are gone. close() stops
 * further reads; it cannot pull memory from under a live view. */

typedef struct {
    PyObject_HEAD
    struct mp_safetensors *st;
    int closed;
} SafetensorsReader;

static int numpy_type(enum mp_dtype dtype) {
    switch (dtype) {
    case MP_DTYPE_F32: return NPY_FLOAT32;
    case MP_DTYPE_F16: return NPY_FLOAT16;
    case MP_DTYPE_F64: return NPY_FLOAT64;
    case MP_DTYPE_BOOL: return NPY_BOOL;
    case MP_DTYPE_U8: return NPY_UINT8;
    case MP_DTYPE_I8: return NPY_INT8;
    case MP_DTYPE_U16: return NPY_UINT16;
    case MP_DTYPE_I16: return NPY_INT16;
    case MP_DTYPE_U32: return NPY_UINT32;
    case MP_DTYPE_I32: return NPY_INT32;
    case MP_DTYPE_U64: return NPY_UINT64;
    case MP_DTYPE_I64: return NPY_INT64;
    default: return -1; // BF16: no NumPy type
    }
}

static int reader_init(SafetensorsReader *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path_bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&:SafetensorsReader", kwlist, PyUnicode_FSConverter, &path_bytes))
        return -1;
    if (self->st) { // __init__ called twice
        mp_safetensors_close(self->st);
        self->st = NULL;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    struct mp_safetensors *st = NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_safetensors_open(&st, path);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (status != MP_STATUS_OK) {
        raise_status(status);
        return -1;
    }
    self->st = st;
    self->closed = 0;
    return 0;
}

static void reader_dealloc(SafetensorsReader *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_safetensors_close(self->st);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int reader_check_open(SafetensorsReader *self) {
    if (self->st && !self->closed) return 0;
    PyErr_SetString(PyExc_ValueError, "I/O operation on a closed safetensors file");
    return -1;
}

static const struct mp_tensor *reader_find(SafetensorsReader *self, PyObject *name_obj) {
    if (reader_check_open(self)) return NULL;
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (!name) return NULL;
    const struct mp_tensor *t = mp_safetensors_find(self->st, name);
    if (!t) PyErr_Format(PyExc_KeyError, "no tensor named %R in this file", name_obj);
    return t;
}

static PyObject *reader_keys(SafetensorsReader *self, PyObject *unused) {
    (void)unused;
    if (reader_check_open(self)) return NULL;
    int64_t n = mp_safetensors_count(self->st);
    PyObject *keys = PyList_New((Py_ssize_t)n);
    for (int64_t i = 0; keys && i < n; i++) {
        PyObject *key = PyUnicode_FromString(mp_safetensors_tensor(self->st, i)->name);
        if (!key) Py_CLEAR(keys);
        else PyList_SET_ITEM(keys, (Py_ssize_t)i, key);
    }
    return keys;
}

static PyObject *reader_metadata(SafetensorsReader *self, PyObject *unused) {
    (void)unused;
    if (reader_check_open(self)) return NULL;
    PyObject *meta = PyDict_New();
    for (int64_t i = 0; meta && i < mp_safetensors_metadata_count(self->st); i++) {
        const char *key, *value;
        mp_safetensors_metadata(self->st, i, &key, &value);
        PyObject *v = PyUnicode_FromString(value);
        if (!v || PyDict_SetItemString(meta, key, v) != 0) Py_CLEAR(meta);
        Py_XDECREF(v);
    }
    return meta;
}

static PyObject *shape_tuple(const struct mp_tensor *t) {
    PyObject *shape = PyTuple_New(t->ndim);
    for (int d = 0; shape && d < t->ndim; d++) {
        PyObject *dim = PyLong_FromLongLong(t->shape[d]);
        if (!dim) Py_CLEAR(shape);
        else PyTuple_SET_ITEM(shape, d, dim);
    }
    return shape;
}

// info(name) -> (dtype name, shape, file offset, nbytes)
static PyObject *reader_info(SafetensorsReader *self, PyObject *name) {
    const struct mp_tensor *t = reader_find(self, name);
    if (!t) return NULL;
    PyObject *shape = shape_tuple(t);
    if (!shape) return NULL;
    return Py_BuildValue("(sNKK)", mp_dtype_name(t->dtype), shape, (unsigned long long)t->offset,
                         (unsigned long long)t->nbytes);
}

// get(name, dtype=None, num_threads=0): dtype None (as stored; BF16 widened to float32),
// "float32", or "bfloat16" (uint16 bit patterns).
static PyObject *reader_get(SafetensorsReader *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"name", "dtype", "num_threads", NULL};
    PyObject *name;
    const char *want = NULL;
    int num_threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|z$i:get", kwlist, &name, &want, &num_threads)) return NULL;
    if (check_threads(num_threads)) return NULL;
    const struct mp_tensor *t = reader_find(self, name);
    if (!t) return NULL;

    enum mp_dtype target;
    if (!want) target = t->dtype == MP_DTYPE_BF16 ? MP_DTYPE_F32 : t->dtype;
    else if (strcmp(want, "float32") == 0) target = MP_DTYPE_F32;
    else if (strcmp(want, "bfloat16") == 0) target = MP_DTYPE_BF16;
    else return PyErr_Format(PyExc_ValueError, "dtype must be None, 'float32' or 'bfloat16', got '%s'", want);

    npy_intp dims[MP_TENSOR_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    if (target == t->dtype && target != MP_DTYPE_BF16) { // zero-copy, read-only view of the mapping
        PyArray_Descr *descr = PyArray_DescrFromType(numpy_type(target));
        PyObject *view = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL, (void *)t->data,
                                              NPY_ARRAY_C_CONTIGUOUS, NULL);
        if (!view) return NULL;
        Py_INCREF(self);
        if (PyArray_SetBaseObject((PyArrayObject *)view, (PyObject *)self) != 0) {
            Py_DECREF(view);
            return NULL;
        }
        return view;
    }
    PyObject *out = PyArray_EMPTY(t->ndim, dims, target == MP_DTYPE_BF16 ? NPY_UINT16 : numpy_type(target), 0);
    if (!out) return NULL;
    void *out_data = PyArray_DATA((PyArrayObject *)out);
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_tensor_read(out_data, target, t);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        Py_DECREF(out);
        return raise_status(status);
    }
    return out;
}

static PyTypeObject *reader_type_ref; // set by core_exec

// The open file behind a SafetensorsReader, or NULL with TypeError/ValueError.
static struct mp_safetensors *reader_handle(PyObject *obj) {
    if (!reader_type_ref || !PyObject_TypeCheck(obj, reader_type_ref)) {
        PyErr_Format(PyExc_TypeError, "files must be SafetensorsReader objects, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    SafetensorsReader *reader = (SafetensorsReader *)obj;
    return reader_check_open(reader) ? NULL : reader->st;
}

static PyObject *reader_close(SafetensorsReader *self, PyObject *unused) {
    (void)unused;
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *reader_get_closed(SafetensorsReader *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->closed || !self->st);
}

static PyMethodDef reader_methods[] = {
    {"keys", (PyCFunction)reader_keys, METH_NOARGS, "keys() -> list[str]: tensor names in sorted order."},
    {"metadata", (PyCFunction)reader_metadata, METH_NOARGS, "metadata() -> dict[str, str]: the __metadata__ entries."},
    {"info", (PyCFunction)reader_info, METH_O, "info(name) -> (dtype, shape, offset, nbytes)."},
    {"get", (PyCFunction)(void (*)(void))reader_get, METH_VARARGS | METH_KEYWORDS,
     "get(name, dtype=None, *, num_threads=0) -> numpy.ndarray."},
    {"close", (PyCFunction)reader_close, METH_NOARGS, "close(): no further reads."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"closed", (getter)reader_get_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot reader_slots[] = {
    {Py_tp_doc, "SafetensorsReader(path): a memory-mapped, validated .safetensors file."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, reader_init},
    {Py_tp_dealloc, reader_dealloc},
    {Py_tp_methods, reader_methods},
    {Py_tp_getset, reader_getset},
    {0, NULL},
};

static PyType_Spec reader_spec = {
    .name = "megapairs._core.SafetensorsReader",
    .basicsize = sizeof(SafetensorsReader),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = reader_slots,
};

// Raises what a core call failing with `status` and `message` raises; lets the tests check
// the one status-to-exception mapping for statuses no safe input can provoke.
static PyObject *py_raise_status_for_testing(PyObject *self, PyObject *args) {
    (void)self;
    int status;
    const char *message;
    if (!PyArg_ParseTuple(args, "is:_raise_status_for_testing", &status, &message)) return NULL;
    if (status <= MP_STATUS_OK || status > MP_STATUS_BACKEND)
        return PyErr_Format(PyExc_ValueError, "status must be a failing mp_status, got %d", status);
    return raise_status(mp_error((enum mp_status)status, "%s", message));
}

/* ---------------------------------------------------------------- module */

static PyMethodDef core_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): default thread count, 0 for OpenMP's."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int."},
    {"onednn_info", py_onednn_info, METH_NOARGS, "onednn_info() -> dict: version, runtime and dispatched ISA."},
    {"jpeg_version", py_jpeg_version, METH_NOARGS, "jpeg_version() -> str: libjpeg-turbo version built against."},
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
    {"_raise_status_for_testing", py_raise_status_for_testing, METH_VARARGS, "Test hook: raise for a status."},
    {NULL, NULL, 0, NULL},
};

static int core_exec(PyObject *module) {
    import_array1(-1);
    MpError = PyErr_NewExceptionWithDoc("megapairs.Error", "Base class of errors raised by megapairs.",
                                        PyExc_RuntimeError, NULL);
    if (!MpError) return -1;
    PyObject *bases = PyTuple_Pack(2, MpError, PyExc_ValueError);
    if (!bases) return -1;
    MpFormatError = PyErr_NewExceptionWithDoc("megapairs.FormatError",
                                              "Malformed input bytes: a weight file, an image, a vocabulary.", bases, NULL);
    Py_DECREF(bases);
    if (!MpFormatError) return -1;
    PyObject *reader_type = PyType_FromSpec(&reader_spec);
    if (!reader_type) return -1;
    reader_type_ref = (PyTypeObject *)reader_type;
    PyObject *vit_type = PyType_FromSpec(&vit_spec);
    if (!vit_type || PyModule_AddObject(module, "Vit", vit_type) < 0) {
        Py_XDECREF(vit_type);
        Py_DECREF(reader_type);
        return -1;
    }
    PyObject *text_type = PyType_FromSpec(&text_spec);
    if (!text_type || PyModule_AddObject(module, "Text", text_type) < 0) {
        Py_XDECREF(text_type);
        Py_DECREF(reader_type);
        return -1;
    }
    if (mp_text_binding_add(module) < 0 || mp_fusion_binding_add(module) < 0) {
        Py_DECREF(reader_type);
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Error", MpError) < 0 ||
        PyModule_AddObjectRef(module, "FormatError", MpFormatError) < 0 ||
        PyModule_AddObject(module, "SafetensorsReader", reader_type) < 0) {
        Py_DECREF(reader_type);
        return -1;
    }
    mp_get_num_threads(); // pin OpenMP's default before any thread changes its own count
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "megapairs._core",
    .m_doc = "The C core of megapairs. Private: use the megapairs package.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
