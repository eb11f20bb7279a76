/* python/module.c: the megapairs._core module: init and exec, the exception objects and
 * raise_status, the converters every binding file shares (binding.h), and the thread and
 * build-info functions. exec adds the other files' types and kernels via mp_<x>_binding_add. */
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

// 0 when num_threads >= 0, else -1 with ValueError set.
int check_threads(int num_threads) {
    if (num_threads >= 0) return 0;
    PyErr_Format(PyExc_ValueError, "num_threads must be >= 0 (0 means the default), got %d", num_threads);
    return -1;
}

// 'fp32' or 'bf16' -> *out and 0, else -1 with ValueError set.
int parse_precision(const char *name, enum mp_precision *out) {
    if (strcmp(name, "fp32") == 0) *out = MP_PRECISION_FP32;
    else if (strcmp(name, "bf16") == 0) *out = MP_PRECISION_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "precision must be 'fp32' or 'bf16', got '%s'", name);
        return -1;
    }
    return 0;
}

// config[key] as an integer -> *out and 0, else -1 with ValueError (missing) or TypeError set.
int dict_int(PyObject *dict, const char *key, int64_t *out) {
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

// config[key] as a float -> *out and 0, else -1 with ValueError (missing) or TypeError.
int dict_float(PyObject *dict, const char *key, float *out) {
    PyObject *v = PyDict_GetItemString(dict, key); // borrowed
    if (!v) {
        PyErr_Format(PyExc_ValueError, "config has no '%s'", key);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    *out = (float)x;
    return 0;
}

// The index in names[0..count) of the name config[key] holds -> *out and 0, else -1 with ValueError.
int dict_name(PyObject *dict, const char *key, const char *const *names, int count, int *out) {
    PyObject *v = PyDict_GetItemString(dict, key); // borrowed
    const char *name = v ? PyUnicode_AsUTF8(v) : NULL;
    if (!v) PyErr_Format(PyExc_ValueError, "config has no '%s'", key);
    if (!name) return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(name, names[i]) == 0) return *out = i, 0;
    PyErr_Format(PyExc_ValueError, "config '%s' is %R, not one of the names the core knows", key, v);
    return -1;
}

// Allocates *lock if it is not yet; -1 with MemoryError set when it cannot.
int handle_lock(PyThread_type_lock *lock) {
    if (!*lock && !(*lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

// Creates the type of `spec` and adds it to `module` under its short name; the type (borrowed:
// the module holds it) or NULL with an exception set.
PyTypeObject *add_type(PyObject *module, PyType_Spec *spec) {
    PyObject *type = PyType_FromSpec(spec);
    if (!type) return NULL;
    int rc = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return rc < 0 ? NULL : (PyTypeObject *)type;
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
    {"_raise_status_for_testing", py_raise_status_for_testing, METH_VARARGS, "Test hook: raise for a status."},
    {NULL, NULL, 0, NULL},
};

// Creates the exceptions, then lets each binding file add its types and functions to the
// module (core_methods, above, are added by the module definition itself).
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
    if (PyModule_AddObjectRef(module, "Error", MpError) < 0 ||
        PyModule_AddObjectRef(module, "FormatError", MpFormatError) < 0 || mp_safetensors_binding_add(module) < 0 ||
        mp_encoders_binding_add(module) < 0 || mp_tokenizers_binding_add(module) < 0 ||
        mp_kernels_binding_add(module) < 0 || mp_fusion_binding_add(module) < 0 || mp_linear_binding_add(module) < 0)
        return -1;
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
