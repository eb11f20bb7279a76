/* python/linear.c: _core.Linear, one linear layer of the C core (nn/linear.h) with its weights
 * packed once, and the ISA controls of core/isa.h (set_max_isa, amx_usable, amx_peak_flops).
 * Used by the benchmarks and the tests that run the bf16 kernels on both paths. */
#include "python/binding.h"

static const char *const OPS[] = {"none", "gelu", "quick_gelu"}; // enum mp_activation_op

typedef struct {
    PyObject_HEAD
    struct mp_linear *linear;
    PyArrayObject *weight, *bias; // owned: the layer reads them until it is freed
    npy_intp N, K;
    PyThread_type_lock lock;      // one call at a time: the layer keeps buffers
} LinearObject;

static int linear_init_py(LinearObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"weight", "bias", "precision", "activation", NULL};
    PyObject *w_obj, *b_obj = Py_None;
    const char *precision_name = "bf16", *op_name = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$ss:Linear", kwlist, &w_obj, &b_obj, &precision_name, &op_name))
        return -1;
    enum mp_precision precision;
    if (parse_precision(precision_name, &precision)) return -1;
    int op = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(op_name, OPS[i]) == 0) op = i;
    if (op < 0) {
        PyErr_Format(PyExc_ValueError, "activation must be 'none', 'gelu' or 'quick_gelu', got '%s'", op_name);
        return -1;
    }
    if (self->linear) {
        PyErr_SetString(PyExc_RuntimeError, "Linear is already initialised");
        return -1;
    }
    if (handle_lock(&self->lock)) return -1;
    if (!(self->weight = as_f32_array(w_obj, 2, "weight"))) return -1;
    self->N = PyArray_DIM(self->weight, 0), self->K = PyArray_DIM(self->weight, 1);
    if (b_obj != Py_None) {
        if (!(self->bias = as_f32_array(b_obj, 1, "bias"))) return -1;
        if (PyArray_DIM(self->bias, 0) != self->N) {
            PyErr_Format(PyExc_ValueError, "bias must have %zd values (the weight's rows), got %zd", (Py_ssize_t)self->N,
                         (Py_ssize_t)PyArray_DIM(self->bias, 0));
            return -1;
        }
    }
    enum mp_status status = mp_linear_init(&self->linear, PyArray_DATA(self->weight),
                                           self->bias ? PyArray_DATA(self->bias) : NULL, self->N, self->K, precision,
                                           (enum mp_activation_op)op, 0);
    return status == MP_STATUS_OK ? 0 : (raise_status(status), -1);
}

static void linear_dealloc(LinearObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_linear_free(self->linear);
    Py_XDECREF(self->weight);
    Py_XDECREF(self->bias);
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

// x: (M, K) float32, or uint16 holding bf16 bits; out_dtype 'float32' or 'bfloat16' (uint16 bits).
static PyObject *linear_call(LinearObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"x", "out_dtype", "num_threads", NULL};
    PyObject *x_obj, *result = NULL;
    const char *out_name = "float32";
    int num_threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$si:Linear", kwlist, &x_obj, &out_name, &num_threads))
        return NULL;
    if (!self->linear) {
        PyErr_SetString(PyExc_RuntimeError, "Linear is not initialised");
        return NULL;
    }
    if (check_threads(num_threads)) return NULL;
    int out_bf16 = strcmp(out_name, "bfloat16") == 0;
    if (!out_bf16 && strcmp(out_name, "float32") != 0) {
        PyErr_Format(PyExc_ValueError, "out_dtype must be 'float32' or 'bfloat16', got '%s'", out_name);
        return NULL;
    }
    int in_bf16 = PyArray_Check(x_obj) && PyArray_TYPE((PyArrayObject *)x_obj) == NPY_UINT16;
    PyArrayObject *x = in_bf16 ? (PyArrayObject *)PyArray_FROM_OTF(x_obj, NPY_UINT16, NPY_ARRAY_IN_ARRAY)
                               : as_f32_array(x_obj, 2, "x");
    if (!x) return NULL;
    if (PyArray_NDIM(x) != 2 || PyArray_DIM(x, 1) != self->K) {
        PyErr_Format(PyExc_ValueError, "x must be (M, %zd), got %d dimensions", (Py_ssize_t)self->K, PyArray_NDIM(x));
        goto done;
    }
    npy_intp M = PyArray_DIM(x, 0), dims[2] = {M, self->N};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, out_bf16 ? NPY_UINT16 : NPY_FLOAT32);
    if (!out) goto done;
    enum mp_status status;
    void *out_data = PyArray_DATA(out);
    const void *x_data = PyArray_DATA(x);
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_linear_forward_typed(self->linear, out_data, out_bf16 ? MP_DTYPE_BF16 : MP_DTYPE_F32, x_data,
                                     in_bf16 ? MP_DTYPE_BF16 : MP_DTYPE_F32, M);
    mp_thread_scope_end(scope);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        Py_DECREF(out);
        goto done;
    }
    result = (PyObject *)out;
done:
    Py_DECREF(x);
    return result;
}

static PyObject *linear_backend(LinearObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(mp_linear_backend(self->linear));
}

static PyGetSetDef linear_getset[] = {
    {"backend", (getter)linear_backend, NULL, "'amx', 'onednn', or 'none' before the first call.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot linear_slots[] = {
    {Py_tp_doc, "Linear(weight, bias=None, *, precision='bf16', activation='none'): y = act(x @ weight.T + bias), "
                "the weight (N, K) packed once. Call with x (M, K) float32 or uint16 bf16 bits; "
                "out_dtype='float32' or 'bfloat16'."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, linear_init_py},
    {Py_tp_dealloc, linear_dealloc},
    {Py_tp_call, linear_call},
    {Py_tp_getset, linear_getset},
    {0, NULL},
};

static PyType_Spec linear_spec = {
    .name = "megapairs._core.Linear",
    .basicsize = sizeof(LinearObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = linear_slots,
};

/* ---------------------------------------------------------------- the ISA cap */

static const char *const ISA_NAMES[] = {"generic", "avx2", "avx512", "amx"}; // enum mp_isa

static PyObject *py_set_max_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) return PyUnicode_FromString(ISA_NAMES[mp_set_max_isa((enum mp_isa)i)]);
    PyErr_Format(PyExc_ValueError, "isa must be 'amx', 'avx512', 'avx2' or 'generic', got %R", arg);
    return NULL;
}

static PyObject *py_get_max_isa(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyUnicode_FromString(ISA_NAMES[mp_get_max_isa()]);
}

static PyObject *py_amx_usable(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyBool_FromLong(mp_amx_usable());
}

static PyObject *py_amx_peak_flops(PyObject *self, PyObject *args) {
    (void)self;
    long long iters = 2000000;
    int num_threads = 0;
    if (!PyArg_ParseTuple(args, "|Li:amx_peak_flops", &iters, &num_threads)) return NULL;
    if (check_threads(num_threads)) return NULL;
    double flops;
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    flops = mp_amx_peak_flops(iters);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(flops);
}

static PyMethodDef isa_methods[] = {
    {"set_max_isa", py_set_max_isa, METH_O,
     "set_max_isa('amx' | 'avx512' | 'avx2' | 'generic') -> previous: cap megapairs' own kernels."},
    {"get_max_isa", py_get_max_isa, METH_NOARGS, "get_max_isa() -> 'amx', 'avx512', 'avx2' or 'generic'."},
    {"amx_usable", py_amx_usable, METH_NOARGS, "amx_usable() -> bool: the AMX kernels will run."},
    {"amx_peak_flops", py_amx_peak_flops, METH_VARARGS,
     "amx_peak_flops(iters=2000000, num_threads=0) -> FLOP/s of the tile loop (0 without AMX)."},
    {NULL, NULL, 0, NULL},
};

int mp_linear_binding_add(PyObject *module) {
    if (!add_type(module, &linear_spec)) return -1;
    return PyModule_AddFunctions(module, isa_methods);
}
