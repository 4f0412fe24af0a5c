/* download.c: model downloads and small HTTP requests, on their own threads.
 *
 * libcurl does the HTTP (redirects, TLS, Range); OpenSSL's libcrypto hashes
 * (SHA-256: it uses the CPU's SHA instructions, about 690 MB/s here against
 * libsodium's portable 120 MB/s, which would cap a gigabit download).
 * Every job runs on a thread of its own, never on the loop thread: a model
 * file is gigabytes and a slow hub must not stall the API. A finished job is
 * appended to a completion list and an eventfd is signalled; the loop thread
 * (lua/exo/download.lua, through native.lua) drains the list with
 * exo_download_next, reads a request's response with exo_download_result and
 * frees the job with exo_download_release. Same shape as engine.c's queue,
 * but a queue of its own: a download must never wait behind a forward pass.
 *
 * A file job writes DEST.partial, resuming it with a Range request when it
 * exists (a 200 instead of a 206 starts it over), retries transient failures
 * (connection errors, cut transfers, 408/429/5xx) with exponential backoff
 * or the server's Retry-After, and only after the size and SHA-256 (when
 * known) match renames it onto DEST. A hash mismatch deletes the partial (its
 * bytes cannot be trusted, so resuming it is unsafe); any other failure keeps
 * it for the next attempt. A request job (GET/POST with headers and a body,
 * for small APIs such as the hub's tree listing or Tailscale's) keeps at most
 * max_bytes of response and fails beyond that. Library code reads no
 * environment: timeouts and the backoff come from exo_download_configure. */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "exo.h"

#define ERR_CAP 512
#define HEADERS_CAP (64 * 1024) /* a request job's response headers kept, at most */
#define JOBS_MAX 256            /* jobs alive at once (running or not yet released) */

enum { KIND_FILE, KIND_REQUEST };

typedef struct dl_job {
    uint64_t id;
    int kind;
    char *url, *dest, *method, *headers_in, *body_in;
    size_t body_in_len;
    int64_t expect_size; /* -1: unknown */
    char sha256[65];     /* "" : unknown */
    size_t max_bytes;
    double timeout_s;
    /* progress, read by the loop thread under the lock */
    int64_t done, total;
    double speed, mark_t;
    int64_t mark_bytes;
    int attempt;
    int cancel; /* set by the loop thread, read by the job's: __atomic accesses */
    /* result */
    int finished, status, http_status;
    char err[ERR_CAP];
    char *resp, *resp_headers;
    size_t resp_len, resp_headers_len;
    struct dl_job *next, *done_next;
} dl_job;

static struct {
    pthread_once_t once;
    int init_rc;
    int fd;
    pthread_mutex_t lock;
    dl_job *jobs;                   /* every live job */
    dl_job *done_head, *done_tail;  /* finished, not yet handed to the loop */
    int n_jobs;
    int max_attempts;
    double backoff_s, max_wait_s, stall_s, connect_s;
} dl = {.once = PTHREAD_ONCE_INIT, .fd = -1, .max_attempts = 5, .backoff_s = 1.0, .max_wait_s = 60.0,
        .stall_s = 60.0, .connect_s = 30.0};

static void dl_start(void)
{
    pthread_mutex_init(&dl.lock, NULL);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        dl.init_rc = exo__error_set(EXO_EIO, "libcurl failed to initialise");
        return;
    }
    dl.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (dl.fd < 0) dl.init_rc = exo__error_set(EXO_EIO, "eventfd failed");
}

static int dl_ready(void)
{
    pthread_once(&dl.once, dl_start);
    if (dl.init_rc) return exo__error_set(dl.init_rc, "the downloader could not start");
    return EXO_OK;
}

int exo_download_fd(void)
{
    if (dl_ready()) return -1;
    return dl.fd;
}

int exo_download_configure(int max_attempts, double backoff_s, double max_wait_s, double stall_s)
{
    if (max_attempts < 1 || max_attempts > 100 || !(backoff_s >= 0) || !(max_wait_s >= 0) || !(stall_s > 0))
        return exo__error_set(EXO_EINVAL, "exo_download_configure: out of range");
    pthread_mutex_lock(&dl.lock);
    dl.max_attempts = max_attempts;
    dl.backoff_s = backoff_s;
    dl.max_wait_s = max_wait_s;
    dl.stall_s = stall_s;
    pthread_mutex_unlock(&dl.lock);
    return EXO_OK;
}

static void job_free(dl_job *j)
{
    free(j->url);
    free(j->dest);
    free(j->method);
    free(j->headers_in);
    free(j->body_in);
    free(j->resp);
    free(j->resp_headers);
    free(j);
}

/* Ends a job: records its outcome, queues it for the loop, wakes the loop. */
static void job_finish(dl_job *j, int status, int http_status, const char *err)
{
    pthread_mutex_lock(&dl.lock);
    j->finished = 1;
    j->status = status;
    j->http_status = http_status;
    snprintf(j->err, sizeof j->err, "%s", status ? err : "");
    if (dl.done_tail) dl.done_tail->done_next = j;
    else dl.done_head = j;
    dl.done_tail = j;
    pthread_mutex_unlock(&dl.lock);
    uint64_t one = 1;
    ssize_t w = write(dl.fd, &one, sizeof one);
    (void)w; /* fails only at counter overflow, when readiness is already set */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sleeps up to s seconds, waking early when the job is cancelled. */
static void nap(dl_job *j, double s)
{
    double until = now_s() + s;
    while (!__atomic_load_n(&j->cancel, __ATOMIC_RELAXED) && now_s() < until) usleep(50 * 1000);
}

/* "Name: value" lines (newline-separated) as a curl header list. */
static struct curl_slist *header_list(const char *text)
{
    struct curl_slist *list = NULL;
    if (!text) return NULL;
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && n < 8192) {
            char line[8192];
            memcpy(line, p, n);
            line[n] = 0;
            struct curl_slist *l = curl_slist_append(list, line);
            if (l) list = l;
        }
        p += n + (e ? 1 : 0);
    }
    return list;
}

static int on_xfer_info(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    dl_job *j = ud;
    return __atomic_load_n(&j->cancel, __ATOMIC_RELAXED) ? 1 : 0;
}

/* Options every transfer shares (curl copies the strings it is given). */
static void set_common(CURL *c)
{
    char ua[64];
    snprintf(ua, sizeof ua, "exo/%s", exo_version());
    curl_easy_setopt(c, CURLOPT_USERAGENT, ua);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    /* http and https only, redirects included: libcurl's default also
     * follows a redirect to ftp:// (and, with other options, more), which a
     * hostile hub or API could use to make this node speak to any service. */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_xfer_info);
}

/* ---- a file ---------------------------------------------------------------- */

/* The SHA-256 of the partial file's first `hashed` bytes, kept as they are
 * written so a finished download is not read a second time (-1: unknown). */
typedef struct {
    EVP_MD_CTX *ctx;
    int64_t hashed;
} hasher;

static void hasher_restart(hasher *h)
{
    EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL);
    h->hashed = 0;
}

/* One transfer's state: the partial file, where this response starts, and
 * what its headers said. */
typedef struct {
    dl_job *j;
    int fd;
    int64_t have;       /* bytes in the partial before this transfer */
    int64_t got;        /* bytes of this response written */
    int status;         /* the final response's status (redirects reset it) */
    int64_t range_start; /* from Content-Range; -1 when none */
    int64_t range_total; /* a 416's "bytes * /N"; -1 when none */
    double retry_after; /* seconds; -1 when none */
    int decided;        /* the first body byte came: append or restart chosen */
    hasher *h;
    int write_errno;
    int too_long;       /* the server sent more than the listing's size */
    char errbody[256];  /* an error response's first bytes, for the message */
    size_t errbody_len;
} xfer;

static size_t on_file_header(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* A new response (after a redirect): forget the last one's headers. */
        const char *sp = memchr(buf, ' ', len);
        x->status = sp ? atoi(sp + 1) : 0;
        x->range_start = -1;
        x->range_total = -1;
        x->retry_after = -1;
    } else if (len > 14 && strncasecmp(buf, "Content-Range:", 14) == 0) {
        long long a;
        if (sscanf(buf + 14, " bytes %lld-", &a) == 1) x->range_start = a;
        else if (sscanf(buf + 14, " bytes */%lld", &a) == 1) x->range_total = a;
    } else if (len > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
        double s;
        if (sscanf(buf + 12, " %lf", &s) == 1 && s >= 0) x->retry_after = s;
    }
    return len;
}

static void progress_update(dl_job *j, int64_t done)
{
    double t = now_s();
    pthread_mutex_lock(&dl.lock);
    j->done = done;
    if (j->mark_t == 0) {
        j->mark_t = t;
        j->mark_bytes = done;
    } else if (t - j->mark_t >= 0.5) {
        double inst = (done - j->mark_bytes) / (t - j->mark_t);
        j->speed = j->speed > 0 ? 0.5 * j->speed + 0.5 * inst : inst;
        j->mark_t = t;
        j->mark_bytes = done;
    }
    pthread_mutex_unlock(&dl.lock);
}

static size_t on_file_body(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    if (x->status != 200 && x->status != 206) {
        /* An error page: keep its start for the message, never write it. */
        size_t room = sizeof x->errbody - 1 - x->errbody_len;
        size_t k = len < room ? len : room;
        memcpy(x->errbody + x->errbody_len, buf, k);
        x->errbody_len += k;
        x->errbody[x->errbody_len] = 0;
        /* Enough for the message: an endless error page is not read on. */
        return x->errbody_len + 1 >= sizeof x->errbody ? 0 : len;
    }
    if (!x->decided) {
        x->decided = 1;
        /* A 206 must start where the partial ends; anything else restarts. */
        if (!(x->status == 206 && x->range_start == x->have)) {
            if (ftruncate(x->fd, 0) != 0) {
                x->write_errno = errno;
                return 0;
            }
            x->have = 0;
            hasher_restart(x->h);
        }
        if (lseek(x->fd, x->have, SEEK_SET) < 0) {
            x->write_errno = errno;
            return 0;
        }
    }
    /* Never more than the listed size on disk: a server that keeps sending
     * (a lie, or an endless body) would otherwise fill the store's disk. */
    if (x->j->expect_size >= 0 && x->have + x->got + (int64_t)len > x->j->expect_size) {
        x->too_long = 1;
        return 0;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(x->fd, buf + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            x->write_errno = errno;
            return 0; /* curl stops with CURLE_WRITE_ERROR */
        }
        off += (size_t)w;
    }
    x->got += (int64_t)len;
    if (x->h->hashed == x->have + x->got - (int64_t)len) {
        EVP_DigestUpdate(x->h->ctx, buf, len);
        x->h->hashed += (int64_t)len;
    }
    progress_update(x->j, x->have + x->got);
    return len;
}

/* Restarts h over the first n bytes of the file at fd (n < 0: all of it);
 * h->hashed is -1 when the file could not be read. */
static void hash_prefix(hasher *h, int fd, int64_t n)
{
    static _Thread_local unsigned char buf[1 << 20];
    hasher_restart(h);
    h->hashed = -1;
    int64_t at = 0;
    while (n < 0 || at < n) {
        size_t want = sizeof buf;
        if (n >= 0 && (int64_t)want > n - at) want = (size_t)(n - at);
        ssize_t r = pread(fd, buf, want, at);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return;
        if (r == 0) break;
        EVP_DigestUpdate(h->ctx, buf, (size_t)r);
        at += r;
    }
    if (n >= 0 && at != n) return;
    h->hashed = at;
}

/* The SHA-256 of the whole file at fd as lowercase hex, from h when it
 * already covers size bytes, else read again. */
static int hash_file(hasher *h, int fd, int64_t size, char hex[65])
{
    if (h->hashed != size) hash_prefix(h, fd, -1);
    if (h->hashed < 0) return -1;
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(h->ctx, out, &n) != 1 || n != 32) return -1;
    for (unsigned i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", out[i]);
    return 0;
}

static int transient_status(int s) { return s == 408 || s == 425 || s == 429 || (s >= 500 && s <= 599); }

static int transient_curl(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR: case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR: case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

/* Runs a file job to the end: returns its status, message in err. */
static int run_file(dl_job *j, int *http_status, char *err)
{
    char partial[4096];
    if (snprintf(partial, sizeof partial, "%s.partial", j->dest) >= (int)sizeof partial) {
        snprintf(err, ERR_CAP, "path too long");
        return EXO_EINVAL;
    }
    int fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, ERR_CAP, "cannot write the .partial file: %s", strerror(errno));
        return EXO_EIO;
    }
    pthread_mutex_lock(&dl.lock);
    int max_attempts = dl.max_attempts;
    double backoff = dl.backoff_s, max_wait = dl.max_wait_s, stall = dl.stall_s, connect_s = dl.connect_s;
    pthread_mutex_unlock(&dl.lock);

    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = header_list(j->headers_in);
    int rc = EXO_EIO;
    *http_status = 0;
    hasher h = {.ctx = EVP_MD_CTX_new(), .hashed = -1};
    if (!h.ctx) {
        close(fd);
        snprintf(err, ERR_CAP, "out of memory");
        return EXO_ENOMEM;
    }
    for (int attempt = 1;; attempt++) {
        pthread_mutex_lock(&dl.lock);
        j->attempt = attempt;
        pthread_mutex_unlock(&dl.lock);
        struct stat st;
        if (fstat(fd, &st) != 0) {
            snprintf(err, ERR_CAP, "cannot stat the .partial file: %s", strerror(errno));
            break;
        }
        xfer x = {.j = j, .fd = fd, .have = st.st_size, .range_start = -1, .range_total = -1, .retry_after = -1,
                  .h = &h};
        if (j->expect_size >= 0 && x.have > j->expect_size) {
            /* Longer than the file can be: not a prefix of it. */
            if (ftruncate(fd, 0) != 0) {
                snprintf(err, ERR_CAP, "cannot truncate the .partial file: %s", strerror(errno));
                break;
            }
            x.have = 0;
        }
        progress_update(j, x.have);
        if (j->expect_size >= 0 && x.have == j->expect_size) {
            rc = EXO_OK; /* everything is here already: verify it */
            break;
        }
        if (j->sha256[0] && h.hashed != x.have) hash_prefix(&h, fd, x.have); /* a partial from before */
        char range[64];
        curl_easy_reset(c);
        curl_easy_setopt(c, CURLOPT_URL, j->url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        set_common(c);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_s * 1000));
        /* A stalled transfer (under 1 KB/s for stall seconds) is a cut one:
         * a server dripping a byte now and then must not hold a job forever
         * (the retry resumes, so a truly slow link loses nothing). */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(stall < 1 ? 1 : stall));
        /* Fewer, larger writes (and hash updates) than curl's 16 KB default. */
        curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_file_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_file_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, j);
        if (x.have > 0) {
            snprintf(range, sizeof range, "%lld-", (long long)x.have);
            curl_easy_setopt(c, CURLOPT_RANGE, range);
        }
        CURLcode cc = curl_easy_perform(c);
        *http_status = x.status;
        double wait = -1;
        if (__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
            snprintf(err, ERR_CAP, "cancelled");
            rc = EXO_ESTATE;
            break;
        }
        if (x.write_errno) {
            snprintf(err, ERR_CAP, "cannot write the .partial file: %s", strerror(x.write_errno));
            break; /* disk full, read-only: retrying will not help */
        }
        if (x.too_long) {
            /* A broken or hostile server: what it sends past the size is
             * never written; another attempt would get the same. */
            snprintf(err, ERR_CAP, "the server sent more than the %lld bytes the listing gives",
                     (long long)j->expect_size);
            break;
        }
        if (x.status == 416 && x.have > 0 && x.range_total >= 0 && j->expect_size >= 0 &&
            x.range_total < j->expect_size) {
            /* The server holds fewer bytes than the listing says: the partial
             * may still be a good prefix, so it stays. */
            snprintf(err, ERR_CAP, "truncated transfer: the server has %lld of %lld bytes", (long long)x.range_total,
                     (long long)j->expect_size);
        } else if (x.status == 416 && x.have > 0) {
            /* The partial does not fit the file any more: start over. */
            if (ftruncate(fd, 0) != 0) break;
            snprintf(err, ERR_CAP, "the server refused to resume at byte %lld", (long long)x.have);
        } else if (cc == CURLE_OK && (x.status == 200 || x.status == 206)) {
            if (fstat(fd, &st) != 0) break;
            if (j->expect_size < 0 || st.st_size == j->expect_size) {
                rc = EXO_OK;
                break;
            }
            snprintf(err, ERR_CAP, "truncated transfer: %lld of %lld bytes", (long long)st.st_size,
                     (long long)j->expect_size);
        } else if (cc == CURLE_OK || (x.status != 200 && x.status != 206 && cc == CURLE_WRITE_ERROR)) {
            snprintf(err, ERR_CAP, "HTTP %d%s%s", x.status, x.errbody_len ? ": " : "", x.errbody);
            if (!transient_status(x.status)) break;
            wait = x.retry_after;
        } else {
            snprintf(err, ERR_CAP, "%s", curl_easy_strerror(cc));
            if (!transient_curl(cc)) break;
        }
        if (attempt >= max_attempts) {
            char last[ERR_CAP];
            snprintf(last, sizeof last, "%s", err);
            snprintf(err, ERR_CAP, "%.400s (gave up after %d attempts; the partial file is kept for resume)", last,
                     attempt);
            break;
        }
        if (wait < 0) wait = backoff * (double)(1u << (attempt - 1 < 10 ? attempt - 1 : 10));
        if (wait > max_wait) wait = max_wait;
        nap(j, wait);
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (rc == EXO_OK && j->sha256[0]) {
        char got[65];
        struct stat fst;
        if (fstat(fd, &fst) != 0 || hash_file(&h, fd, fst.st_size, got) != 0) {
            snprintf(err, ERR_CAP, "cannot read the .partial file: %s", strerror(errno));
            rc = EXO_EIO;
        } else if (strcmp(got, j->sha256) != 0) {
            /* Corrupt bytes: never renamed into place, and not resumable. */
            snprintf(err, ERR_CAP, "hash mismatch: sha256 %s, expected %s (the partial file was deleted)", got,
                     j->sha256);
            unlink(partial);
            rc = EXO_EFORMAT;
        }
    }
    if (rc == EXO_OK && fsync(fd) != 0) {
        snprintf(err, ERR_CAP, "cannot write the .partial file: %s", strerror(errno));
        rc = EXO_EIO;
    }
    close(fd);
    EVP_MD_CTX_free(h.ctx);
    if (rc == EXO_OK && rename(partial, j->dest) != 0) {
        snprintf(err, ERR_CAP, "cannot rename the .partial file: %s", strerror(errno));
        rc = EXO_EIO;
    }
    return rc;
}

/* ---- a request --------------------------------------------------------------- */

typedef struct {
    dl_job *j;
    int too_big;
} req_state;

static int append(char **buf, size_t *len, const char *data, size_t n, size_t cap)
{
    if (*len + n > cap) return -1;
    char *nb = realloc(*buf, *len + n + 1);
    if (!nb) return -1;
    memcpy(nb + *len, data, n);
    *len += n;
    nb[*len] = 0;
    *buf = nb;
    return 0;
}

static size_t on_req_header(char *buf, size_t size, size_t n, void *ud)
{
    req_state *r = ud;
    size_t len = size * n;
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) r->j->resp_headers_len = 0; /* a redirect's next response */
    append(&r->j->resp_headers, &r->j->resp_headers_len, buf, len, HEADERS_CAP);
    return len;
}

static size_t on_req_body(char *buf, size_t size, size_t n, void *ud)
{
    req_state *r = ud;
    size_t len = size * n;
    if (append(&r->j->resp, &r->j->resp_len, buf, len, r->j->max_bytes) != 0) {
        r->too_big = 1;
        return 0;
    }
    progress_update(r->j, (int64_t)r->j->resp_len);
    return len;
}

static int run_request(dl_job *j, int *http_status, char *err)
{
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, ERR_CAP, "curl_easy_init failed");
        return EXO_ENOMEM;
    }
    struct curl_slist *hdrs = header_list(j->headers_in);
    req_state r = {.j = j};
    set_common(c);
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, j->method);
    /* A HEAD reads the server's own headers (the hub's X-Linked-Etag sits on
     * its redirect), so it does not follow redirects. */
    if (strcmp(j->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    }
    if (j->body_in) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body_in);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->body_in_len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(j->timeout_s * 1000));
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_req_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_req_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, j);
    CURLcode cc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    *http_status = (int)code;
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (r.too_big) {
        snprintf(err, ERR_CAP, "response larger than %zu bytes", j->max_bytes);
        return EXO_ERANGE;
    }
    if (__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
        snprintf(err, ERR_CAP, "cancelled");
        return EXO_ESTATE;
    }
    if (cc != CURLE_OK) {
        snprintf(err, ERR_CAP, "%s", curl_easy_strerror(cc));
        return EXO_EIO;
    }
    return EXO_OK; /* any HTTP status: the caller reads it */
}

static void *job_main(void *arg)
{
    dl_job *j = arg;
    char err[ERR_CAP] = "";
    int http_status = 0;
    int rc = j->kind == KIND_FILE ? run_file(j, &http_status, err) : run_request(j, &http_status, err);
    job_finish(j, rc, http_status, err);
    return NULL;
}

/* Registers j and starts its thread. */
static int job_start(dl_job *j)
{
    pthread_mutex_lock(&dl.lock);
    for (dl_job *o = dl.jobs; o; o = o->next) {
        if (o->id == j->id) {
            pthread_mutex_unlock(&dl.lock);
            unsigned long long id = j->id;
            job_free(j);
            return exo__error_set(EXO_EINVAL, "download job id %llu is in use", id);
        }
    }
    if (dl.n_jobs >= JOBS_MAX) {
        pthread_mutex_unlock(&dl.lock);
        job_free(j);
        return exo__error_set(EXO_EAGAIN, "too many downloads at once (%d)", JOBS_MAX);
    }
    j->next = dl.jobs;
    dl.jobs = j;
    dl.n_jobs++;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int prc = pthread_create(&t, &attr, job_main, j);
    pthread_attr_destroy(&attr);
    if (prc != 0) {
        dl.jobs = j->next;
        dl.n_jobs--;
        pthread_mutex_unlock(&dl.lock);
        job_free(j);
        return exo__error_set(EXO_EIO, "could not start a download thread");
    }
    pthread_mutex_unlock(&dl.lock);
    return EXO_OK;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int is_http_url(const char *url)
{
    return url && (strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0);
}

int exo_download_file(const char *url, const char *dest, const char *headers, int64_t size, const char *sha256_hex,
                      uint64_t job_id)
{
    int rc = dl_ready();
    if (rc) return rc;
    if (!is_http_url(url)) return exo__error_set(EXO_EINVAL, "exo_download_file: not an http(s) URL");
    if (!dest || !*dest) return exo__error_set(EXO_EINVAL, "exo_download_file: dest is required");
    if (sha256_hex && *sha256_hex) {
        if (strlen(sha256_hex) != 64 || strspn(sha256_hex, "0123456789abcdef") != 64)
            return exo__error_set(EXO_EINVAL, "exo_download_file: sha256 must be 64 lowercase hex digits");
    }
    dl_job *j = calloc(1, sizeof *j);
    if (!j) return exo__error_set(EXO_ENOMEM, "out of memory");
    j->id = job_id;
    j->kind = KIND_FILE;
    j->url = strdup(url);
    j->dest = strdup(dest);
    j->headers_in = dup_or_null(headers);
    j->expect_size = size < 0 ? -1 : size;
    j->total = j->expect_size;
    if (sha256_hex) snprintf(j->sha256, sizeof j->sha256, "%s", sha256_hex);
    if (!j->url || !j->dest || (headers && !j->headers_in)) {
        job_free(j);
        return exo__error_set(EXO_ENOMEM, "out of memory");
    }
    return job_start(j);
}

int exo_download_request(const char *method, const char *url, const char *headers, const char *body,
                         size_t body_len, size_t max_bytes, double timeout_s, uint64_t job_id)
{
    int rc = dl_ready();
    if (rc) return rc;
    if (!is_http_url(url)) return exo__error_set(EXO_EINVAL, "exo_download_request: not an http(s) URL");
    if (!method || !*method || strspn(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(method))
        return exo__error_set(EXO_EINVAL, "exo_download_request: bad method");
    if (max_bytes == 0 || max_bytes > ((size_t)1 << 30) || !(timeout_s > 0) || timeout_s > 3600)
        return exo__error_set(EXO_EINVAL, "exo_download_request: max_bytes or timeout out of range");
    dl_job *j = calloc(1, sizeof *j);
    if (!j) return exo__error_set(EXO_ENOMEM, "out of memory");
    j->id = job_id;
    j->kind = KIND_REQUEST;
    j->url = strdup(url);
    j->method = strdup(method);
    j->headers_in = dup_or_null(headers);
    j->max_bytes = max_bytes;
    j->timeout_s = timeout_s;
    j->expect_size = -1;
    j->total = -1;
    if (body) {
        j->body_in = malloc(body_len + 1);
        if (j->body_in) {
            memcpy(j->body_in, body, body_len);
            j->body_in[body_len] = 0;
            j->body_in_len = body_len;
        }
    }
    if (!j->url || !j->method || (headers && !j->headers_in) || (body && !j->body_in)) {
        job_free(j);
        return exo__error_set(EXO_ENOMEM, "out of memory");
    }
    return job_start(j);
}

/* The live job with this id, under the lock. */
static dl_job *find_locked(uint64_t id)
{
    for (dl_job *j = dl.jobs; j; j = j->next)
        if (j->id == id) return j;
    return NULL;
}

int exo_download_progress(uint64_t job_id, int64_t *done, int64_t *total, double *bytes_per_s, int *attempt)
{
    int rc = dl_ready();
    if (rc) return rc;
    pthread_mutex_lock(&dl.lock);
    dl_job *j = find_locked(job_id);
    if (j) {
        if (done) *done = j->done;
        if (total) *total = j->total;
        /* A transfer that has gone quiet is not still at its last speed. */
        if (bytes_per_s) *bytes_per_s = (j->finished || now_s() - j->mark_t > 3) ? 0 : j->speed;
        if (attempt) *attempt = j->attempt;
    }
    pthread_mutex_unlock(&dl.lock);
    if (!j) return exo__error_set(EXO_EINVAL, "no download job %llu", (unsigned long long)job_id);
    return EXO_OK;
}

int exo_download_cancel(uint64_t job_id)
{
    int rc = dl_ready();
    if (rc) return rc;
    pthread_mutex_lock(&dl.lock);
    dl_job *j = find_locked(job_id);
    if (j) __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&dl.lock);
    if (!j) return exo__error_set(EXO_EINVAL, "no download job %llu", (unsigned long long)job_id);
    return EXO_OK;
}

int exo_download_next(uint64_t *job_id, int *status, int *http_status, char *err, size_t err_cap)
{
    if (dl_ready()) return 0;
    pthread_mutex_lock(&dl.lock);
    dl_job *j = dl.done_head;
    if (!j) {
        /* Reset readiness under the lock: a job finishing after this writes again. */
        uint64_t v;
        ssize_t r = read(dl.fd, &v, sizeof v);
        (void)r;
        pthread_mutex_unlock(&dl.lock);
        return 0;
    }
    dl.done_head = j->done_next;
    if (!dl.done_head) dl.done_tail = NULL;
    if (job_id) *job_id = j->id;
    if (status) *status = j->status;
    if (http_status) *http_status = j->http_status;
    if (err && err_cap) snprintf(err, err_cap, "%s", j->err);
    pthread_mutex_unlock(&dl.lock);
    return 1;
}

int exo_download_result(uint64_t job_id, const char **body, size_t *body_len, const char **headers,
                        size_t *headers_len)
{
    int rc = dl_ready();
    if (rc) return rc;
    pthread_mutex_lock(&dl.lock);
    dl_job *j = find_locked(job_id);
    int finished = j && j->finished;
    if (finished) {
        *body = j->resp ? j->resp : "";
        *body_len = j->resp_len;
        *headers = j->resp_headers ? j->resp_headers : "";
        *headers_len = j->resp_headers_len;
    }
    pthread_mutex_unlock(&dl.lock);
    if (!finished) return exo__error_set(EXO_ESTATE, "download job %llu is not finished", (unsigned long long)job_id);
    return EXO_OK;
}

int exo_download_release(uint64_t job_id)
{
    int rc = dl_ready();
    if (rc) return rc;
    pthread_mutex_lock(&dl.lock);
    dl_job **at = &dl.jobs;
    while (*at && (*at)->id != job_id) at = &(*at)->next;
    dl_job *j = *at;
    int ok = j && j->finished;
    if (ok) {
        /* Still queued for the loop? Then it is not the loop's to free yet. */
        for (dl_job *d = dl.done_head; d; d = d->done_next)
            if (d == j) ok = 0;
    }
    if (ok) {
        *at = j->next;
        dl.n_jobs--;
    }
    pthread_mutex_unlock(&dl.lock);
    if (!ok) return exo__error_set(EXO_ESTATE, "download job %llu is not finished", (unsigned long long)job_id);
    job_free(j);
    return EXO_OK;
}
