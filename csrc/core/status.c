/* core/status.c: the thread-local last-error message behind every status. */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

#define MP_ERROR_CAPACITY 1024

static _Thread_local char last_error[MP_ERROR_CAPACITY];

const char *mp_status_str(enum mp_status status) {
    switch (status) {
    case MP_STATUS_OK: return "ok";
    case MP_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case MP_STATUS_OUT_OF_MEMORY: return "out of memory";
    case MP_STATUS_IO: return "i/o error";
    case MP_STATUS_BAD_FORMAT: return "bad format";
    case MP_STATUS_BACKEND: return "backend error";
    }
    return "unknown status";
}

const char *mp_last_error(void) { return last_error; }

enum mp_status mp_error(enum mp_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    // vsnprintf truncates long messages (a hostile tensor name, say) and always terminates.
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}
