/* core/status.h: the status every fallible megapairs function returns, and the
 * thread-local message that explains it.
 *
 *     if (mp_safetensors_open(&st, path) != MP_STATUS_OK)
 *         log_failure(mp_last_error());  // the message says what failed and why
 *
 * The message belongs to the calling thread and stays valid until that thread's
 * next failing call. Functions that succeed leave it untouched. */
#ifndef MP_CORE_STATUS_H
#define MP_CORE_STATUS_H

enum mp_status {
    MP_STATUS_OK = 0,
    MP_STATUS_INVALID_ARGUMENT, // a caller error: bad size, null pointer, out-of-range option
    MP_STATUS_OUT_OF_MEMORY,
    MP_STATUS_IO,               // the operating system refused: open, stat, mmap
    MP_STATUS_BAD_FORMAT,       // input bytes are malformed: a file, an image, a vocabulary
    MP_STATUS_BACKEND,          // oneDNN or another library failed
};

// Short constant name of a status ("bad format"). Never NULL.
const char *mp_status_str(enum mp_status status);

// Message of the calling thread's last failure, or "" if there was none.
const char *mp_last_error(void);

// Records a printf-style message for the calling thread and returns `status`,
// so that error paths read `return mp_error(MP_STATUS_IO, "cannot open '%s'", path);`.
enum mp_status mp_error(enum mp_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
