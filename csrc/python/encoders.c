/* python/encoders.c: _core.Vit and _core.Text, the image and text Transformers (csrc/encoders/),
 * built from SafetensorsReader files and a table of name aliases, then encode() batches. A lock
 * per handle admits one call at a time: the handle's arena and primitives are reused. */
#include "python/binding.h"

/* ---------------------------------------------------------------- checkpoints */

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

/* ---------------------------------------------------------------- ViT
 * Vit(config: dict, files: readers, aliases: dict): the core binds and checks the tensors. */

typedef struct {
    PyObject_HEAD
    struct mp_vit *vit;
    PyThread_type_lock lock; // the handle's arena and kept primitives admit one call at a time
    int64_t image_size, patch_size, width;
    int fixed_size; // CLIP takes only image_size; DINOv2 interpolates its positions
} VitObject;

static int vit_init_py(VitObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"config", "files", "aliases", NULL};
    static const char *const kinds[] = {"clip", "dinov2"}; // enum mp_vit_kind
    PyObject *config, *files, *aliases;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO:Vit", kwlist, &PyDict_Type, &config, &files, &aliases))
        return -1;
    struct mp_vit_config c = {0};
    int activation = 0, kind = 0;
    if (dict_name(config, "kind", kinds, 2, &kind) || dict_int(config, "image_size", &c.image_size) ||
        dict_int(config, "patch_size", &c.patch_size) || dict_int(config, "width", &c.width) ||
        dict_int(config, "layers", &c.layers) || dict_int(config, "heads", &c.heads) ||
        dict_int(config, "mlp", &c.mlp) || dict_int(config, "projection", &c.projection) ||
        dict_name(config, "activation", ACTIVATIONS, 2, &activation))
        return -1;
    PyObject *registers = PyDict_GetItemString(config, "registers"), *swiglu = PyDict_GetItemString(config, "swiglu");
    if (registers && (c.registers = PyLong_AsLongLong(registers)) == -1 && PyErr_Occurred()) return -1;
    if (swiglu && (c.swiglu = PyObject_IsTrue(swiglu)) < 0) return -1;
    if (dict_float(config, "eps", &c.eps)) return -1;
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
    {Py_tp_doc, "Vit(config, files, aliases): a Vision Transformer image tower held by the C core, its weights bound by name."},
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
    if (dict_float(config, "eps", &c.eps)) return -1;
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
    {Py_tp_doc, "Text(config, files, aliases): a text Transformer (CLIP text tower or BERT) held by the C core."},
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

/* ---------------------------------------------------------------- module */

int mp_encoders_binding_add(PyObject *module) {
    return add_type(module, &vit_spec) && add_type(module, &text_spec) ? 0 : -1;
}
