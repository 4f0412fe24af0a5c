/* error.c: libexo's error codes and the per-thread last-error message.
 *
 * One X-macro table gives each code its name and default text, as libuv does,
 * so adding a code is one line. Messages are formatted into a thread-local
 * buffer: no allocation, and safe to call from worker threads. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

#define EXO_ERROR_TABLE(X)                                   \
    X(EXO_OK, "OK", "success")                               \
    X(EXO_EINVAL, "EINVAL", "invalid argument")              \
    X(EXO_ENOMEM, "ENOMEM", "out of memory or over a limit") \
    X(EXO_EIO, "EIO", "input/output error")                  \
    X(EXO_EFORMAT, "EFORMAT", "malformed input")             \
    X(EXO_ERANGE, "ERANGE", "out of range")                  \
    X(EXO_ENOTSUP, "ENOTSUP", "not supported")               \
    X(EXO_ESTATE, "ESTATE", "wrong state")                   \
    X(EXO_EAGAIN, "EAGAIN", "try again")                     \
    X(EXO_EBUSY, "EBUSY", "in use")

static _Thread_local char last_message[1024];

int exo__error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return code;
}

const char *exo_last_error(void)
{
    return last_message;
}

const char *exo_error_name(int code)
{
#define EXO_ERROR_NAME(code_, name_, text_) \
    if (code == code_) return name_;
    EXO_ERROR_TABLE(EXO_ERROR_NAME)
#undef EXO_ERROR_NAME
    return "EUNKNOWN";
}
