/* python/tokenizers.c: _core.ClipBpe and _core.WordPiece, the tokenizers of csrc/text/. Texts are
 * held in a tuple while the GIL is released so their cached UTF-8 buffers stay alive; cleaning
 * and Unicode normalisation are megapairs/text.py's. */
#include "python/binding.h"

/* ---------------------------------------------------------------- texts */

// UTF-8 views of the items of `texts` (a tuple of str): fills ptrs/sizes (N each, caller-
// allocated). -1 with TypeError (not a str) or ValueError (a lone surrogate) naming the index.
static int utf8_views(PyObject *texts, const char **ptrs, int64_t *sizes) {
    Py_ssize_t N = PyTuple_GET_SIZE(texts);
    for (Py_ssize_t i = 0; i < N; i++) {
        PyObject *item = PyTuple_GET_ITEM(texts, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd] must be str, got %s", i, Py_TYPE(item)->tp_name);
            return -1;
        }
        Py_ssize_t size;
        const char *p = PyUnicode_AsUTF8AndSize(item, &size);
        if (!p) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "texts[%zd] cannot be encoded as UTF-8 (it holds a lone surrogate)", i);
            }
            return -1;
        }
        ptrs[i] = p;
        sizes[i] = (int64_t)size;
    }
    return 0;
}

// A tuple of the texts (a new reference) and their UTF-8 views (PyMem-allocated, freed by
// the caller), or NULL with an exception set.
static PyObject *texts_tuple(PyObject *texts_obj, const char ***ptrs, int64_t **sizes) {
    if (PyUnicode_Check(texts_obj)) {
        PyErr_SetString(PyExc_TypeError, "texts must be a sequence of str, not a str");
        return NULL;
    }
    PyObject *texts = PySequence_Tuple(texts_obj);
    if (!texts) return NULL;
    Py_ssize_t N = PyTuple_GET_SIZE(texts);
    *ptrs = PyMem_Malloc((size_t)(N ? N : 1) * sizeof **ptrs);
    *sizes = PyMem_Malloc((size_t)(N ? N : 1) * sizeof **sizes);
    if (!*ptrs || !*sizes) {
        PyErr_NoMemory();
    } else if (utf8_views(texts, *ptrs, *sizes) == 0) {
        return texts;
    }
    PyMem_Free(*ptrs);
    PyMem_Free(*sizes);
    *ptrs = NULL;
    *sizes = NULL;
    Py_DECREF(texts);
    return NULL;
}

// The UTF-8 buffer (cached by the str) of `text` and its size, or NULL with TypeError (not a
// str) or ValueError (a lone surrogate).
static const char *text_utf8(PyObject *text, Py_ssize_t *size) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "text must be str, got %s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    const char *p = PyUnicode_AsUTF8AndSize(text, size);
    if (!p && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "text cannot be encoded as UTF-8 (it holds a lone surrogate)");
    }
    return p;
}

// 1-D int64 array of ids[0 .. n).
static PyObject *ids_array(const int64_t *ids, int64_t n) {
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *arr = PyArray_EMPTY(1, dims, NPY_INT64, 0);
    if (arr && n) memcpy(PyArray_DATA((PyArrayObject *)arr), ids, (size_t)n * sizeof *ids);
    return arr;
}

/* ---------------------------------------------------------------- ClipBpe */

typedef struct {
    PyObject_HEAD
    struct mp_clip_bpe *bpe;
    PyThread_type_lock  lock; // the handle's word caches admit one call at a time
} ClipBpeObject;

// ClipBpe(merges, *, n_merges=None, vocab=None, sot=..., eot=..., source=..., vocab_source=...)
// OpenAI/open_clip bpe text when vocab is None (n_merges required), else HF vocab.json (dict) + merges.txt.
static int clip_bpe_init(ClipBpeObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"merges", "n_merges", "vocab", "sot", "eot", "source", "vocab_source", NULL};
    Py_buffer merges;
    PyObject *n_merges_obj = Py_None, *vocab = Py_None;
    const char *sot = "<|startoftext|>", *eot = "<|endoftext|>", *source = NULL, *vocab_source = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$OOssss:ClipBpe", kwlist, &merges, &n_merges_obj, &vocab, &sot,
                                     &eot, &source, &vocab_source))
        return -1;
    int rc = -1;
    const char **tokens = NULL;
    int64_t *token_sizes = NULL, *token_ids = NULL;
    PyObject *items = NULL;
    struct mp_clip_bpe *bpe = NULL;
    enum mp_status status = MP_STATUS_OK;
    if (vocab == Py_None) {
        if (n_merges_obj == Py_None) {
            PyErr_SetString(PyExc_TypeError, "ClipBpe needs n_merges for an open_clip bpe file, or vocab");
            goto done;
        }
        long long n_merges = PyLong_AsLongLong(n_merges_obj);
        if (n_merges == -1 && PyErr_Occurred()) goto done;
        Py_BEGIN_ALLOW_THREADS
        status = mp_clip_bpe_init_openai(&bpe, merges.buf, (int64_t)merges.len, n_merges, source);
        Py_END_ALLOW_THREADS
    } else {
        if (!PyDict_Check(vocab)) {
            PyErr_Format(PyExc_TypeError, "vocab must be a dict of str to int, got %s", Py_TYPE(vocab)->tp_name);
            goto done;
        }
        if (!(items = PyDict_Items(vocab))) goto done;
        Py_ssize_t V = PyList_GET_SIZE(items);
        tokens = PyMem_Malloc((size_t)(V ? V : 1) * sizeof *tokens);
        token_sizes = PyMem_Malloc((size_t)(V ? V : 1) * sizeof *token_sizes);
        token_ids = PyMem_Malloc((size_t)(V ? V : 1) * sizeof *token_ids);
        if (!tokens || !token_sizes || !token_ids) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < V; i++) {
            PyObject *pair = PyList_GET_ITEM(items, i), *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
            Py_ssize_t size;
            if (!PyUnicode_Check(key) || !PyLong_Check(value)) {
                PyErr_Format(MpFormatError, "%s: expected token strings mapped to int ids, got %R: %R",
                             vocab_source ? vocab_source : "vocab.json", key, value);
                goto done;
            }
            if (!(tokens[i] = PyUnicode_AsUTF8AndSize(key, &size))) goto done;
            token_sizes[i] = (int64_t)size;
            token_ids[i] = (int64_t)PyLong_AsLongLong(value);
            if (token_ids[i] == -1 && PyErr_Occurred()) goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        status = mp_clip_bpe_init_hf(&bpe, tokens, token_sizes, token_ids, V, merges.buf, (int64_t)merges.len, sot, eot,
                                     vocab_source, source);
        Py_END_ALLOW_THREADS
    }
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (handle_lock(&self->lock)) {
        mp_clip_bpe_free(bpe);
        goto done;
    }
    mp_clip_bpe_free(self->bpe);
    self->bpe = bpe;
    rc = 0;
done:
    PyBuffer_Release(&merges);
    Py_XDECREF(items);
    PyMem_Free(tokens);
    PyMem_Free(token_sizes);
    PyMem_Free(token_ids);
    return rc;
}

static void clip_bpe_dealloc(ClipBpeObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_clip_bpe_free(self->bpe);
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int clip_bpe_ready(ClipBpeObject *self) {
    if (self->bpe) return 0;
    PyErr_SetString(PyExc_ValueError, "ClipBpe is not initialised");
    return -1;
}

// encode_batch(texts, context_length, *, num_threads=0) -> (N, context_length) int64
static PyObject *clip_bpe_encode_batch(ClipBpeObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"texts", "context_length", "num_threads", NULL};
    PyObject *texts_obj, *texts = NULL, *out = NULL;
    long long T;
    int num_threads = 0;
    const char **ptrs = NULL;
    int64_t *sizes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL|$i:encode_batch", kwlist, &texts_obj, &T, &num_threads))
        return NULL;
    if (clip_bpe_ready(self) || check_threads(num_threads)) return NULL;
    if (T < 2) return PyErr_Format(PyExc_ValueError, "context_length must be >= 2 (sot and eot), got %lld", T);
    if (!(texts = texts_tuple(texts_obj, &ptrs, &sizes))) return NULL;
    npy_intp dims[2] = {PyTuple_GET_SIZE(texts), (npy_intp)T};
    if (!(out = PyArray_EMPTY(2, dims, NPY_INT64, 0))) goto done;
    int64_t *ids = PyArray_DATA((PyArrayObject *)out);
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_clip_bpe_encode_batch(self->bpe, ids, ptrs, sizes, (int64_t)dims[0], (int64_t)T);
    mp_thread_scope_end(scope);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        Py_CLEAR(out);
    }
done:
    Py_XDECREF(texts);
    PyMem_Free(ptrs);
    PyMem_Free(sizes);
    return out;
}

// encode(text) -> (n,) int64, without sot/eot
static PyObject *clip_bpe_encode(ClipBpeObject *self, PyObject *arg) {
    if (clip_bpe_ready(self)) return NULL;
    Py_ssize_t size;
    const char *text = text_utf8(arg, &size);
    if (!text) return NULL;
    int64_t *ids = PyMem_Malloc((size_t)(size ? size : 1) * sizeof *ids), count = 0;
    if (!ids) return PyErr_NoMemory();
    enum mp_status status;
    Py_INCREF(arg); // keeps the UTF-8 buffer alive without the GIL
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    status = mp_clip_bpe_encode(self->bpe, ids, &count, text, (int64_t)size);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    Py_DECREF(arg);
    PyObject *result = status == MP_STATUS_OK ? ids_array(ids, count) : raise_status(status);
    PyMem_Free(ids);
    return result;
}

// decode(ids) -> bytes (the tokens' bytes, "</w>" included)
static PyObject *clip_bpe_decode(ClipBpeObject *self, PyObject *arg) {
    if (clip_bpe_ready(self)) return NULL;
    PyArrayObject *ids = (PyArrayObject *)PyArray_FROM_OTF(arg, NPY_INT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!ids) return NULL;
    PyObject *result = NULL;
    if (PyArray_NDIM(ids) != 1) {
        PyErr_Format(PyExc_ValueError, "ids must be 1-D, got %d-D", PyArray_NDIM(ids));
        goto done;
    }
    const int64_t *data = PyArray_DATA(ids);
    int64_t n = (int64_t)PyArray_DIM(ids, 0), size = 0;
    enum mp_status status = mp_clip_bpe_decode(self->bpe, NULL, 0, &size, data, n);
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    if (!(result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size))) goto done;
    status = mp_clip_bpe_decode(self->bpe, PyBytes_AS_STRING(result), size, &size, data, n);
    if (status != MP_STATUS_OK) {
        Py_CLEAR(result);
        raise_status(status);
    }
done:
    Py_DECREF(ids);
    return result;
}

static PyObject *clip_bpe_get(ClipBpeObject *self, void *which) {
    if (clip_bpe_ready(self)) return NULL;
    switch ((intptr_t)which) {
    case 0: return PyLong_FromLongLong(mp_clip_bpe_vocab_size(self->bpe));
    case 1: return PyLong_FromLongLong(mp_clip_bpe_sot(self->bpe));
    case 2: return PyLong_FromLongLong(mp_clip_bpe_eot(self->bpe));
    default: return PyLong_FromLongLong(mp_clip_bpe_max_id(self->bpe));
    }
}

static PyGetSetDef clip_bpe_getset[] = {
    {"vocab_size", (getter)clip_bpe_get, NULL, "distinct token strings", (void *)0},
    {"sot", (getter)clip_bpe_get, NULL, "id of the start token", (void *)1},
    {"eot", (getter)clip_bpe_get, NULL, "id of the end token", (void *)2},
    {"max_id", (getter)clip_bpe_get, NULL, "largest token id", (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef clip_bpe_methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))clip_bpe_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, context_length, *, num_threads=0) -> (N, context_length) int64."},
    {"encode", (PyCFunction)clip_bpe_encode, METH_O, "encode(text) -> (n,) int64 without sot/eot."},
    {"decode", (PyCFunction)clip_bpe_decode, METH_O, "decode(ids) -> bytes spelled by the tokens."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot clip_bpe_slots[] = {
    {Py_tp_doc, "ClipBpe(merges, *, n_merges=None, vocab=None, ...): CLIP's byte-level BPE held by the C core."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, clip_bpe_init},
    {Py_tp_dealloc, clip_bpe_dealloc},
    {Py_tp_methods, clip_bpe_methods},
    {Py_tp_getset, clip_bpe_getset},
    {0, NULL},
};

static PyType_Spec clip_bpe_spec = {
    .name = "megapairs._core.ClipBpe",
    .basicsize = sizeof(ClipBpeObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = clip_bpe_slots,
};

/* ---------------------------------------------------------------- WordPiece */

typedef struct {
    PyObject_HEAD
    struct mp_wordpiece *wp; // read-only after init: no lock needed
} WordPieceObject;

// WordPiece(vocab, *, unk, cls, sep, pad, specials=(), lowercase=True, strip_accents=True, tokenize_chinese_chars=True,
//           max_input_chars_per_word=100, prefix="##", source="vocab.txt")
static int wordpiece_init(WordPieceObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"vocab", "unk", "cls", "sep", "pad", "specials", "lowercase", "strip_accents",
                             "tokenize_chinese_chars", "max_input_chars_per_word", "prefix", "source", NULL};
    Py_buffer vocab;
    struct mp_wordpiece_options options = mp_wordpiece_options_default();
    PyObject *specials_obj = NULL, *specials = NULL;
    long long max_chars = options.max_input_chars_per_word;
    const char *source = "vocab.txt";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$ssssOpppLss:WordPiece", kwlist, &vocab, &options.unk,
                                     &options.cls, &options.sep, &options.pad, &specials_obj, &options.lowercase,
                                     &options.strip_accents, &options.tokenize_chinese_chars, &max_chars, &options.prefix, &source))
        return -1;
    int rc = -1;
    const char **strings = NULL;
    if (specials_obj) {
        if (!(specials = PySequence_Tuple(specials_obj))) goto done;
        Py_ssize_t n = PyTuple_GET_SIZE(specials);
        if (!(strings = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *strings))) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyTuple_GET_ITEM(specials, i);
            if (!PyUnicode_Check(item)) {
                PyErr_Format(PyExc_TypeError, "specials[%zd] must be str, got %s", i, Py_TYPE(item)->tp_name);
                goto done;
            }
            if (!(strings[i] = PyUnicode_AsUTF8(item))) goto done;
        }
        options.specials = strings;
        options.n_specials = (int64_t)n;
    }
    options.max_input_chars_per_word = (int64_t)max_chars;
    struct mp_wordpiece *wp = NULL;
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mp_wordpiece_init(&wp, vocab.buf, (int64_t)vocab.len, &options, source);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    mp_wordpiece_free(self->wp);
    self->wp = wp;
    rc = 0;
done:
    PyBuffer_Release(&vocab);
    Py_XDECREF(specials);
    PyMem_Free(strings);
    return rc;
}

static void wordpiece_dealloc(WordPieceObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    mp_wordpiece_free(self->wp);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int wordpiece_ready(WordPieceObject *self) {
    if (self->wp) return 0;
    PyErr_SetString(PyExc_ValueError, "WordPiece is not initialised");
    return -1;
}

// encode_batch(texts, max_length, *, num_threads=0) -> (input_ids (N, T), attention_mask (N, T)) int64,
// T the longest row; rows padded with the [PAD] id.
static PyObject *wordpiece_encode_batch(WordPieceObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"texts", "max_length", "num_threads", NULL};
    PyObject *texts_obj, *texts = NULL, *input_ids = NULL, *mask = NULL, *result = NULL;
    long long max_length;
    int num_threads = 0;
    const char **ptrs = NULL;
    int64_t *sizes = NULL, *offsets = NULL, *lengths = NULL, *flat = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL|$i:encode_batch", kwlist, &texts_obj, &max_length, &num_threads))
        return NULL;
    if (wordpiece_ready(self) || check_threads(num_threads)) return NULL;
    if (max_length < 2) return PyErr_Format(PyExc_ValueError, "max_length must be >= 2 ([CLS] and [SEP]), got %lld", max_length);
    if (!(texts = texts_tuple(texts_obj, &ptrs, &sizes))) return NULL;
    Py_ssize_t N = PyTuple_GET_SIZE(texts);
    offsets = PyMem_Malloc((size_t)(N + 1) * sizeof *offsets);
    lengths = PyMem_Malloc((size_t)(N ? N : 1) * sizeof *lengths);
    if (!offsets || !lengths) {
        PyErr_NoMemory();
        goto done;
    }
    offsets[0] = 0;
    for (Py_ssize_t i = 0; i < N; i++) offsets[i + 1] = offsets[i] + mp_wordpiece_capacity(sizes[i], max_length);
    if (!(flat = PyMem_Malloc((size_t)(offsets[N] ? offsets[N] : 1) * sizeof *flat))) {
        PyErr_NoMemory();
        goto done;
    }
    enum mp_status status;
    Py_BEGIN_ALLOW_THREADS
    struct mp_thread_scope scope = mp_thread_scope_begin(num_threads);
    status = mp_wordpiece_encode_batch(self->wp, flat, lengths, offsets, ptrs, sizes, (int64_t)N, (int64_t)max_length);
    mp_thread_scope_end(scope);
    Py_END_ALLOW_THREADS
    if (status != MP_STATUS_OK) {
        raise_status(status);
        goto done;
    }
    int64_t T = 0;
    for (Py_ssize_t i = 0; i < N; i++) T = lengths[i] > T ? lengths[i] : T;
    npy_intp dims[2] = {N, (npy_intp)T};
    if (!(input_ids = PyArray_EMPTY(2, dims, NPY_INT64, 0)) || !(mask = PyArray_EMPTY(2, dims, NPY_INT64, 0))) goto done;
    int64_t *ids_data = PyArray_DATA((PyArrayObject *)input_ids), *mask_data = PyArray_DATA((PyArrayObject *)mask);
    int64_t pad = mp_wordpiece_pad(self->wp);
    for (Py_ssize_t i = 0; i < N; i++) {
        int64_t *row = ids_data + i * T, *mrow = mask_data + i * T;
        memcpy(row, flat + offsets[i], (size_t)lengths[i] * sizeof *row);
        for (int64_t t = 0; t < T; t++) {
            if (t >= lengths[i]) row[t] = pad;
            mrow[t] = t < lengths[i];
        }
    }
    result = PyTuple_Pack(2, input_ids, mask);
done:
    Py_XDECREF(texts);
    Py_XDECREF(input_ids);
    Py_XDECREF(mask);
    PyMem_Free(ptrs);
    PyMem_Free(sizes);
    PyMem_Free(offsets);
    PyMem_Free(lengths);
    PyMem_Free(flat);
    return result;
}

// encode(text) -> (n,) int64, without [CLS]/[SEP]
static PyObject *wordpiece_encode(WordPieceObject *self, PyObject *arg) {
    if (wordpiece_ready(self)) return NULL;
    Py_ssize_t size;
    const char *text = text_utf8(arg, &size);
    if (!text) return NULL;
    int64_t *ids = PyMem_Malloc((size_t)(size ? size : 1) * sizeof *ids), count = 0;
    if (!ids) return PyErr_NoMemory();
    enum mp_status status;
    Py_INCREF(arg);
    Py_BEGIN_ALLOW_THREADS
    status = mp_wordpiece_encode(self->wp, ids, &count, text, (int64_t)size, (int64_t)size);
    Py_END_ALLOW_THREADS
    Py_DECREF(arg);
    PyObject *result = status == MP_STATUS_OK ? ids_array(ids, count) : raise_status(status);
    PyMem_Free(ids);
    return result;
}

static PyObject *wordpiece_get(WordPieceObject *self, void *which) {
    if (wordpiece_ready(self)) return NULL;
    switch ((intptr_t)which) {
    case 0: return PyLong_FromLongLong(mp_wordpiece_vocab_size(self->wp));
    case 1: return PyLong_FromLongLong(mp_wordpiece_unk(self->wp));
    case 2: return PyLong_FromLongLong(mp_wordpiece_cls(self->wp));
    case 3: return PyLong_FromLongLong(mp_wordpiece_sep(self->wp));
    default: return PyLong_FromLongLong(mp_wordpiece_pad(self->wp));
    }
}

static PyGetSetDef wordpiece_getset[] = {
    {"vocab_size", (getter)wordpiece_get, NULL, "distinct tokens", (void *)0},
    {"unk", (getter)wordpiece_get, NULL, "id of the unknown token", (void *)1},
    {"cls", (getter)wordpiece_get, NULL, "id of [CLS]", (void *)2},
    {"sep", (getter)wordpiece_get, NULL, "id of [SEP]", (void *)3},
    {"pad", (getter)wordpiece_get, NULL, "id of [PAD]", (void *)4},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef wordpiece_methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))wordpiece_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, max_length, *, num_threads=0) -> (input_ids, attention_mask), (N, T) int64 each."},
    {"encode", (PyCFunction)wordpiece_encode, METH_O, "encode(text) -> (n,) int64 without [CLS]/[SEP]."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot wordpiece_slots[] = {
    {Py_tp_doc, "WordPiece(vocab, *, unk, cls, sep, pad, ...): BERT's WordPiece tokenizer held by the C core."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, wordpiece_init},
    {Py_tp_dealloc, wordpiece_dealloc},
    {Py_tp_methods, wordpiece_methods},
    {Py_tp_getset, wordpiece_getset},
    {0, NULL},
};

static PyType_Spec wordpiece_spec = {
    .name = "megapairs._core.WordPiece",
    .basicsize = sizeof(WordPieceObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = wordpiece_slots,
};

/* ---------------------------------------------------------------- module */

int mp_tokenizers_binding_add(PyObject *module) {
    return add_type(module, &clip_bpe_spec) && add_type(module, &wordpiece_spec) ? 0 : -1;
}
