/* python/text.c: bindings of the tokenizers (csrc/text/). */
#include "python/binding.h"

int mp_text_binding_add(PyObject *module) {
    (void)module;
    return 0;
}
