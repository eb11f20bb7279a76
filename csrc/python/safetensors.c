/* python/safetensors.c: _core.SafetensorsReader, a memory-mapped .safetensors file (csrc/weights/).
 * get() returns read-only views of the mapping that hold the reader, so the mapping outlives
 * every view; close() only stops further reads. reader_handle gives encoders.c the open file. */
#include "python/binding.h"

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
    static char *kwlist[] = {"path", "max_tensors", "max_header_bytes", NULL};
    PyObject *path_bytes = NULL;
    long long max_tensors = 0, max_header = 0; // 0: the C defaults
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|$LL:SafetensorsReader", kwlist, PyUnicode_FSConverter,
                                     &path_bytes, &max_tensors, &max_header))
        return -1;
    if (max_tensors < 0 || max_header < 0) {
        Py_DECREF(path_bytes);
        PyErr_SetString(PyExc_ValueError, "max_tensors and max_header_bytes must be >= 0 (0: the default)");
        return -1;
    }
    struct mp_safetensors_limits limits = {.max_header = (uint64_t)max_header, .max_tensors = max_tensors};
    if (self->st) { // __init__ called twice
        mp_safetensors_close(self->st);
        self->st = NULL;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    struct mp_safetensors *st = NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_safetensors_open_limited(&st, path, &limits);
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

static PyTypeObject *reader_type; // set by mp_safetensors_binding_add; the module holds it

// The open file behind a SafetensorsReader, or NULL with TypeError/ValueError set.
struct mp_safetensors *reader_handle(PyObject *obj) {
    if (!reader_type || !PyObject_TypeCheck(obj, reader_type)) {
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

int mp_safetensors_binding_add(PyObject *module) { return (reader_type = add_type(module, &reader_spec)) ? 0 : -1; }
