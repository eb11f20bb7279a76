/* python/binding.h: what the binding files of megapairs._core share. Only csrc/python/ includes
 * Python or NumPy headers. module.c defines MP_BINDING_MAIN and imports the NumPy API once;
 * the other files use it through PY_ARRAY_UNIQUE_SYMBOL. */
#ifndef MP_PYTHON_BINDING_H
#define MP_PYTHON_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL megapairs_ARRAY_API
#ifndef MP_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "megapairs.h"

extern PyObject *MpError;       // megapairs.Error(RuntimeError)
extern PyObject *MpFormatError; // megapairs.FormatError(Error, ValueError)

// Sets the Python exception for `status`, with mp_last_error() as its text; returns NULL.
PyObject *raise_status(enum mp_status status);

// New reference to an aligned, C-contiguous float32 array of rank `ndim` made from `obj`
// (zero-copy when it already is one), or NULL with TypeError/ValueError set.
PyArrayObject *as_f32_array(PyObject *obj, int ndim, const char *name);

// New reference to `out` after checking it can receive a (rows, cols) float32 result,
// a fresh array when out is None, or NULL with an exception set.
PyArrayObject *output_f32(PyObject *out, npy_intp rows, npy_intp cols, const char *name);

// 0 when num_threads >= 0, else -1 with ValueError set.
int check_threads(int num_threads);

// 'fp32' or 'bf16' -> *out and 0, else -1 with ValueError set.
int parse_precision(const char *name, enum mp_precision *out);

// python/text.c: adds the tokenizer types to the module; -1 with an exception set on failure.
int mp_text_binding_add(PyObject *module);

// python/fusion.c: adds fuse and fuse_scores; -1 with an exception set on failure.
int mp_fusion_binding_add(PyObject *module);

#endif
