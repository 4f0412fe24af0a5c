/* error.h: setting and reading the per-thread error message (internal).
 *
 * Every libexo function that fails calls exo__error_set() with a code and a
 * printf-style message, then returns the code. The message is thread-local, so
 * a worker thread's failure never overwrites the loop thread's. */
#ifndef EXO_ERROR_H
#define EXO_ERROR_H

#include "exo.h" /* exo_last_error and exo_error_name are public */

#if defined(__GNUC__)
#define EXO_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define EXO_PRINTF(a, b)
#endif

/* Records the message for exo_last_error() and returns code, so callers can
 * write `return exo__error_set(EXO_EFORMAT, "...", ...);`. */
int exo__error_set(int code, const char *fmt, ...) EXO_PRINTF(2, 3);

/* exo.h: exo_last_error() is the last message set on this thread ("" when
 * none); exo_error_name(code) its short name ("EFORMAT"), or "EUNKNOWN". */

#endif
