/* python/binding.h: what the binding files of megapairs._core share (module.c's exceptions and
 * converters, safetensors.c's reader_handle) and the one entry point each file gives module.c.
 * The only header csrc/python/ includes besides megapairs.h; no binding file includes another. */
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

/* Only csrc/python/ includes Python or NumPy headers. module.c defines MP_BINDING_MAIN and
 * imports the NumPy API once; the other files use it through PY_ARRAY_UNIQUE_SYMBOL.
 *
 * Every binding function has one shape: parse arguments, convert arrays, allocate outputs,
 * release the GIL around exactly one core call, map its status, clean up at `done:`. No
 * algorithm lives here: the core checks its arguments and names them, the Python layer checks
 * meaning, and a binding checks only what the core cannot see (the shapes of the arrays it
 * converts and allocates, lengths the core is not given). */

/* ---------------------------------------------------------------- module.c: errors, converters */

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

// config[key] as an integer -> *out and 0, else -1 with ValueError (missing) or TypeError set.
int dict_int(PyObject *dict, const char *key, int64_t *out);

// config[key] as a float -> *out and 0, else -1 with ValueError (missing) or TypeError set.
int dict_float(PyObject *dict, const char *key, float *out);

// The index in names[0..count) of the name config[key] holds -> *out and 0, else -1 with ValueError.
int dict_name(PyObject *dict, const char *key, const char *const *names, int count, int *out);

// Allocates *lock if it is not yet; -1 with MemoryError set when it cannot.
int handle_lock(PyThread_type_lock *lock);

// Creates the type of `spec` and adds it to `module` under its short name; the type (borrowed:
// the module holds it) or NULL with an exception set.
PyTypeObject *add_type(PyObject *module, PyType_Spec *spec);

/* ---------------------------------------------------------------- safetensors.c */

// The open file behind a SafetensorsReader, or NULL with TypeError/ValueError set.
struct mp_safetensors *reader_handle(PyObject *obj);

/* ---------------------------------------------------------------- one entry point per file
 * Each adds its types or functions to the module; 0, or -1 with an exception set. Called
 * from module.c's exec, safetensors first (reader_handle needs its type). */

int mp_safetensors_binding_add(PyObject *module); // SafetensorsReader
int mp_encoders_binding_add(PyObject *module);    // Vit, Text
int mp_tokenizers_binding_add(PyObject *module);  // ClipBpe, WordPiece
int mp_kernels_binding_add(PyObject *module);     // matmul_nt, knn_search, infonce, jpeg_*, preprocess
int mp_fusion_binding_add(PyObject *module);      // fuse, fuse_scores
int mp_linear_binding_add(PyObject *module);      // Linear, set_max_isa, get_max_isa, amx_usable, amx_peak_flops

#endif
