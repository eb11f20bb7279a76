/* python/fusion.c: megapairs._core.fuse and fuse_scores over csrc/fusion: a list of arrays of one
 * shape becomes a list of pointers (each array converted to float32 once, zero-copy when it
 * already is one), so `out` may be one of the inputs. */
#include "python/binding.h"

#include <string.h>

static void fusion_release(PyArrayObject **held, const float **ptrs, float *weights, Py_ssize_t count) {
    for (Py_ssize_t s = 0; held && s < count; s++) Py_XDECREF(held[s]);
    PyMem_Free(held), PyMem_Free((void *)ptrs), PyMem_Free(weights);
}

// The arrays of `seq` as float32 C arrays of one shape (that of the first; rank 2 when
// `matrix`), their data pointers in ptrs[], and the weights as float32 (NULL for None).
// Returns the count, or -1 with an exception set; *held gets the references to release.
static Py_ssize_t fusion_inputs(PyObject *seq, PyObject *weights_obj, int matrix, const char *name,
                                PyArrayObject ***held, const float ***ptrs, float **weights) {
    *held = NULL, *ptrs = NULL, *weights = NULL;
    PyObject *fast = PySequence_Fast(seq, "");
    if (!fast) {
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of arrays, got %s", name, Py_TYPE(seq)->tp_name);
        return -1;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    if (count < 1) {
        PyErr_Format(PyExc_ValueError, "%s must hold at least one array", name);
        Py_DECREF(fast);
        return -1;
    }
    *held = PyMem_Calloc((size_t)count, sizeof **held);
    *ptrs = PyMem_Calloc((size_t)count, sizeof **ptrs);
    if (!*held || !*ptrs) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t s = 0; s < count; s++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, s);
        char label[64];
        snprintf(label, sizeof label, "%s[%zd]", name, s);
        int ndim = matrix ? 2 : (s == 0 ? -1 : PyArray_NDIM((*held)[0]));
        if (ndim < 0) { // the first score array sets the rank
            PyArrayObject *probe = (PyArrayObject *)PyArray_FROM_O(item);
            if (!probe) goto fail;
            ndim = PyArray_NDIM(probe);
            Py_DECREF(probe);
        }
        if (!((*held)[s] = as_f32_array(item, ndim, label))) goto fail;
        if (s > 0 && !PyArray_SAMESHAPE((*held)[s], (*held)[0])) {
            PyObject *a = PyObject_GetAttrString((PyObject *)(*held)[0], "shape");
            PyObject *b = PyObject_GetAttrString((PyObject *)(*held)[s], "shape");
            if (a && b) PyErr_Format(PyExc_ValueError, "%s has shape %R but %s[0] has %R", label, b, name, a);
            Py_XDECREF(a), Py_XDECREF(b);
            goto fail;
        }
        (*ptrs)[s] = PyArray_DATA((*held)[s]);
    }
    if (weights_obj && weights_obj != Py_None) {
        PyArrayObject *w = (PyArrayObject *)PyArray_FROM_OTF(weights_obj, NPY_FLOAT32,
                                                             NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!w) goto fail;
        if (PyArray_NDIM(w) != 1 || PyArray_DIM(w, 0) != count) {
            PyErr_Format(PyExc_ValueError, "weights must hold one number per array of %s (%zd), got %zd", name, count,
                         (Py_ssize_t)PyArray_SIZE(w));
            Py_DECREF(w);
            goto fail;
        }
        if (!(*weights = PyMem_Malloc((size_t)count * sizeof **weights))) {
            Py_DECREF(w);
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(*weights, PyArray_DATA(w), (size_t)count * sizeof **weights);
        Py_DECREF(w);
    }
    Py_DECREF(fast);
    return count;
fail:
    Py_DECREF(fast);
    fusion_release(*held, *ptrs, *weights, count);
    *held = NULL, *ptrs = NULL, *weights = NULL;
    return -1;
}

static PyObject *py_fuse(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"inputs", "weights", "normalize", "out", "num_threads", NULL};
    PyObject *inputs, *weights_obj = Py_None, *out_obj = Py_None, *result = NULL;
    int normalize = 1, num_threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$pOi:fuse", kwlist, &inputs, &weights_obj, &normalize,
                                     &out_obj, &num_threads))
        return NULL;
    if (check_threads(num_threads)) return NULL;
    PyArrayObject **held, *out = NULL;
    const float **ptrs;
    float *weights;
    Py_ssize_t count = fusion_inputs(inputs, weights_obj, 1, "inputs", &held, &ptrs, &weights);
    if (count < 0) goto done;
    npy_intp N = PyArray_DIM(held[0], 0), D = PyArray_DIM(held[0], 1);
    if (!(out = output_f32(out_obj, N, D, "out"))) goto done;
    enum mp_status status;
    float *out_data = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_fuse(out_data, ptrs, weights, count, N, D, normalize);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = (PyObject *)out;
    Py_INCREF(result);
done:
    fusion_release(held, ptrs, weights, count);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_fuse_scores(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"scores", "weights", "out", "num_threads", NULL};
    PyObject *scores, *weights_obj = Py_None, *out_obj = Py_None, *result = NULL;
    int num_threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$Oi:fuse_scores", kwlist, &scores, &weights_obj, &out_obj,
                                     &num_threads))
        return NULL;
    if (check_threads(num_threads)) return NULL;
    PyArrayObject **held, *out = NULL;
    const float **ptrs;
    float *weights;
    Py_ssize_t count = fusion_inputs(scores, weights_obj, 0, "scores", &held, &ptrs, &weights);
    if (count < 0) goto done;
    if (out_obj == Py_None) {
        out = (PyArrayObject *)PyArray_EMPTY(PyArray_NDIM(held[0]), PyArray_DIMS(held[0]), NPY_FLOAT32, 0);
        if (!out) goto done;
    } else if (!PyArray_Check(out_obj) || PyArray_TYPE((PyArrayObject *)out_obj) != NPY_FLOAT32 ||
               !PyArray_ISCARRAY((PyArrayObject *)out_obj) || !PyArray_SAMESHAPE((PyArrayObject *)out_obj, held[0])) {
        PyErr_SetString(PyExc_ValueError, "out must be a writeable C-contiguous float32 array of the scores' shape");
        goto done;
    } else {
        out = (PyArrayObject *)out_obj;
        Py_INCREF(out);
    }
    enum mp_status status;
    float *out_data = PyArray_DATA(out);
    const npy_intp n = PyArray_SIZE(held[0]);
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_fuse_scores(out_data, ptrs, weights, count, n);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    result = (PyObject *)out;
    Py_INCREF(result);
done:
    fusion_release(held, ptrs, weights, count);
    Py_XDECREF(out);
    return result;
}

static PyMethodDef fusion_methods[] = {
    {"fuse", (PyCFunction)(void (*)(void))py_fuse, METH_VARARGS | METH_KEYWORDS,
     "fuse(inputs, weights=None, *, normalize=True, out=None, num_threads=0) -> (N, D) float32"},
    {"fuse_scores", (PyCFunction)(void (*)(void))py_fuse_scores, METH_VARARGS | METH_KEYWORDS,
     "fuse_scores(scores, weights=None, *, out=None, num_threads=0) -> float32 array of the scores' shape"},
    {NULL, NULL, 0, NULL},
};

int mp_fusion_binding_add(PyObject *module) { return PyModule_AddFunctions(module, fusion_methods); }
