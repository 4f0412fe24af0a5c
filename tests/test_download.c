/* test_download.c: native/download.c against a small HTTP server on a thread of this process.
 *
 * The server answers one request per connection: GET /file (a fixed body of pseudo-random
 * bytes, honouring "Range: bytes=N-" with a 206), GET /cut (headers for the whole body but
 * only half of it, then a close: a cut transfer), GET /big (more than a request's max_bytes),
 * and 404 for anything else. Checked: a download lands whole under its name with no .partial
 * left, a wrong SHA-256 leaves neither the file nor the partial, a partial already on disk is
 * resumed (the server saw a Range), a cut transfer is retried to completion, a 404 fails with
 * its status and no retry, a request's body and status come back and a response over
 * max_bytes fails with ERANGE; bad arguments are EINVAL; progress of an unknown job is an
 * error. Hostile answers (the server plays a broken or malicious hub): a redirect to ftp://
 * is refused without a connection to its target (GET /toftp; the target is a listening
 * socket never accepted), a body longer than the listed size stops at the size and is never
 * renamed (GET /long), a body dripped under 1 KB/s is a stall (GET /drip), and an endless
 * error page is not read on (GET /endless404). The sanitizer builds run it too (threads, the
 * completion queue, no leaks). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../native/exo.h"
#include "check.h"

#define BODY_LEN 200000

static unsigned char body[BODY_LEN];
static int server_fd, server_port;
static int trap_fd, trap_port; /* listens, never accepts: a connection here is a followed redirect */
static int saw_range; /* requests that carried a Range header (server thread writes, main reads after) */
static pthread_mutex_t saw_lock = PTHREAD_MUTEX_INITIALIZER;

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

static void serve_one(int fd)
{
    char req[4096];
    size_t len = 0;
    while (len < sizeof req - 1) {
        ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
        if (r <= 0) return;
        len += (size_t)r;
        req[len] = 0;
        if (strstr(req, "\r\n\r\n")) break;
    }
    char head[512];
    long start = 0;
    const char *range = strcasestr(req, "\r\nRange: bytes=");
    if (range) {
        start = atol(range + 15);
        pthread_mutex_lock(&saw_lock);
        saw_range++;
        pthread_mutex_unlock(&saw_lock);
    }
    int cut = strncmp(req, "GET /cut ", 9) == 0;
    if (strncmp(req, "GET /toftp ", 11) == 0) {
        snprintf(head, sizeof head, "HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1:%d/x.gguf\r\n"
                 "Content-Length: 0\r\nConnection: close\r\n\r\n", trap_port);
        send_all(fd, head, strlen(head));
        return;
    }
    if (strncmp(req, "GET /long ", 10) == 0) {
        /* Four times the size the caller expects, announced as such. */
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
                 4 * BODY_LEN);
        send_all(fd, head, strlen(head));
        for (int i = 0; i < 4; i++) send_all(fd, body, BODY_LEN);
        return;
    }
    if (strncmp(req, "GET /drip ", 10) == 0 || strncmp(req, "GET /endless404 ", 16) == 0) {
        /* /drip: 100 bytes every 0.1 s until the client hangs up; /endless404: an error page
         * that never ends, as fast as the client reads. */
        int drip = req[5] == 'd';
        snprintf(head, sizeof head, "HTTP/1.1 %s\r\n%sConnection: close\r\n\r\n",
                 drip ? "200 OK" : "404 Not Found", drip ? "Content-Length: 200000\r\n" : "");
        send_all(fd, head, strlen(head));
        for (size_t off = 0;; off = (off + 100) % (BODY_LEN - 100)) {
            if (send(fd, body + off, 100, MSG_NOSIGNAL) <= 0) return;
            if (drip) usleep(100 * 1000);
        }
    }
    if (strncmp(req, "GET /file ", 10) == 0 || cut || strncmp(req, "GET /big ", 9) == 0) {
        if (start > 0 && start < BODY_LEN)
            snprintf(head, sizeof head,
                     "HTTP/1.1 206 Partial Content\r\nContent-Length: %ld\r\nContent-Range: bytes %ld-%d/%d\r\n"
                     "Connection: close\r\n\r\n", (long)BODY_LEN - start, start, BODY_LEN - 1, BODY_LEN);
        else
            snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
                     BODY_LEN);
        send_all(fd, head, strlen(head));
        if (start < 0 || start >= BODY_LEN) start = 0;
        size_t n = (size_t)(BODY_LEN - start);
        /* /cut sends half of the first answer; a resumed request gets the rest. */
        if (cut && start == 0) n /= 2;
        send_all(fd, body + start, n);
    } else {
        const char *msg = "{\"error\":\"Entry not found\"}";
        snprintf(head, sizeof head, "HTTP/1.1 404 Not Found\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                 strlen(msg));
        send_all(fd, head, strlen(head));
        send_all(fd, msg, strlen(msg));
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(server_fd, NULL, NULL);
        if (c < 0) return NULL;
        serve_one(c);
        shutdown(c, SHUT_RDWR);
        close(c);
    }
}

static void start_server(void)
{
    server_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(server_fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t al = sizeof a;
    getsockname(server_fd, (struct sockaddr *)&a, &al);
    server_port = ntohs(a.sin_port);
    CHECK(listen(server_fd, 16) == 0);
    trap_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(trap_fd, (struct sockaddr *)&b, sizeof b) == 0);
    al = sizeof b;
    getsockname(trap_fd, (struct sockaddr *)&b, &al);
    trap_port = ntohs(b.sin_port);
    CHECK(listen(trap_fd, 16) == 0);
    pthread_t t;
    pthread_create(&t, NULL, server_main, NULL);
    pthread_detach(t);
}

/* Waits (polling the fd, as the loop does) for job want; returns its status. */
static int wait_job(uint64_t want, int *http_status, char err[512])
{
    int fd = exo_download_fd();
    CHECK(fd >= 0);
    for (int i = 0; i < 600; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 100);
        uint64_t id;
        int status;
        while (exo_download_next(&id, &status, http_status, err, 512) == 1) {
            CHECK_MSG(id == want, "job %llu finished while waiting for %llu", (unsigned long long)id,
                      (unsigned long long)want);
            if (id == want) return status;
        }
    }
    CHECK_MSG(0, "job %llu never finished", (unsigned long long)want);
    return -1;
}

static int file_equals(const char *path, const unsigned char *want, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char *got = malloc(n + 1);
    size_t r = fread(got, 1, n + 1, f);
    fclose(f);
    int same = r == n && memcmp(got, want, n) == 0;
    free(got);
    return same;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    for (size_t i = 0; i < BODY_LEN; i++) body[i] = (unsigned char)((i * 2654435761u) >> 13);
    unsigned char h[32];
    char sha[65], wrong[65];
    crypto_hash_sha256(h, body, BODY_LEN);
    sodium_bin2hex(sha, sizeof sha, h, sizeof h);
    snprintf(wrong, sizeof wrong, "%s", sha);
    wrong[0] = wrong[0] == '0' ? '1' : '0';
    start_server();
    CHECK(exo_download_configure(3, 0.05, 1, 5) == EXO_OK);

    char dir[] = "/tmp/exo-test-download-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char url[128], dest[256], partial[300], err[512];
    int http;

    /* A whole download, verified and renamed. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/file", server_port);
    snprintf(dest, sizeof dest, "%s/a.gguf", dir);
    snprintf(partial, sizeof partial, "%s.partial", dest);
    CHECK(exo_download_file(url, dest, "X-Test: 1", BODY_LEN, sha, 1) == EXO_OK);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, sha, 1) == EXO_EINVAL); /* id in use */
    CHECK_MSG(wait_job(1, &http, err) == EXO_OK, "%s", err);
    int64_t done = 0, total = 0;
    double speed;
    int attempt;
    CHECK(exo_download_progress(1, &done, &total, &speed, &attempt) == EXO_OK);
    CHECK(done == BODY_LEN && total == BODY_LEN && attempt == 1);
    CHECK(exo_download_release(1) == EXO_OK);
    CHECK(exo_download_progress(1, &done, &total, &speed, &attempt) == EXO_EINVAL);
    CHECK(file_equals(dest, body, BODY_LEN));
    CHECK(!exists(partial));

    /* The wrong hash: nothing renamed into place, the partial gone. */
    snprintf(dest, sizeof dest, "%s/b.gguf", dir);
    snprintf(partial, sizeof partial, "%s.partial", dest);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, wrong, 2) == EXO_OK);
    CHECK(wait_job(2, &http, err) == EXO_EFORMAT);
    CHECK_MSG(strstr(err, "hash mismatch") != NULL, "%s", err);
    CHECK(exo_download_release(2) == EXO_OK);
    CHECK(!exists(dest) && !exists(partial));

    /* A partial on disk is resumed with a Range request. */
    snprintf(dest, sizeof dest, "%s/c.gguf", dir);
    snprintf(partial, sizeof partial, "%s.partial", dest);
    FILE *f = fopen(partial, "wb");
    fwrite(body, 1, 1000, f);
    fclose(f);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, sha, 3) == EXO_OK);
    CHECK_MSG(wait_job(3, &http, err) == EXO_OK, "%s", err);
    CHECK(http == 206);
    CHECK(exo_download_release(3) == EXO_OK);
    CHECK(file_equals(dest, body, BODY_LEN));
    pthread_mutex_lock(&saw_lock);
    CHECK(saw_range == 1);
    pthread_mutex_unlock(&saw_lock);

    /* A cut transfer: retried from where it stopped. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/cut", server_port);
    snprintf(dest, sizeof dest, "%s/d.gguf", dir);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, sha, 4) == EXO_OK);
    CHECK_MSG(wait_job(4, &http, err) == EXO_OK, "%s", err);
    CHECK(exo_download_progress(4, &done, &total, &speed, &attempt) == EXO_OK && attempt == 2);
    CHECK(exo_download_release(4) == EXO_OK);
    CHECK(file_equals(dest, body, BODY_LEN));

    /* A 404: its status, no retry, nothing written under the name. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing", server_port);
    snprintf(dest, sizeof dest, "%s/e.gguf", dir);
    CHECK(exo_download_file(url, dest, NULL, -1, NULL, 5) == EXO_OK);
    CHECK(wait_job(5, &http, err) != EXO_OK);
    CHECK(http == 404);
    CHECK(exo_download_progress(5, &done, &total, &speed, &attempt) == EXO_OK && attempt == 1);
    CHECK(exo_download_release(5) == EXO_OK);
    CHECK(!exists(dest));

    /* Requests: the body and status; a response over max_bytes. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing", server_port);
    CHECK(exo_download_request("GET", url, "Accept: application/json", NULL, 0, 4096, 10, 6) == EXO_OK);
    CHECK(wait_job(6, &http, err) == EXO_OK && http == 404);
    const char *resp, *hdrs;
    size_t resp_len, hdrs_len;
    CHECK(exo_download_result(6, &resp, &resp_len, &hdrs, &hdrs_len) == EXO_OK);
    CHECK(resp_len == 27 && memcmp(resp, "{\"error\":\"Entry not found\"}", 27) == 0);
    CHECK(strstr(hdrs, "Content-Length: 27") != NULL);
    CHECK(exo_download_release(6) == EXO_OK);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/big", server_port);
    CHECK(exo_download_request("GET", url, NULL, NULL, 0, 1000, 10, 7) == EXO_OK);
    CHECK(wait_job(7, &http, err) == EXO_ERANGE);
    CHECK(exo_download_release(7) == EXO_OK);

    /* A redirect to another scheme is not followed: no connection reaches its target. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/toftp", server_port);
    snprintf(dest, sizeof dest, "%s/f.gguf", dir);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, sha, 9) == EXO_OK);
    CHECK(wait_job(9, &http, err) != EXO_OK);
    CHECK(exo_download_release(9) == EXO_OK);
    CHECK_MSG(accept(trap_fd, NULL, NULL) < 0, "the redirect to ftp:// was followed (%s)", err);
    CHECK(!exists(dest));

    /* More bytes than the size given: nothing past it is written, nothing renamed, one attempt. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/long", server_port);
    snprintf(dest, sizeof dest, "%s/g.gguf", dir);
    snprintf(partial, sizeof partial, "%s.partial", dest);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN / 2, NULL, 10) == EXO_OK);
    CHECK(wait_job(10, &http, err) != EXO_OK);
    CHECK_MSG(strstr(err, "sent more than the 100000 bytes") != NULL, "%s", err);
    CHECK(exo_download_progress(10, &done, &total, &speed, &attempt) == EXO_OK && attempt == 1);
    CHECK(exo_download_release(10) == EXO_OK);
    struct stat pst;
    CHECK(!exists(dest));
    CHECK(stat(partial, &pst) != 0 || pst.st_size <= BODY_LEN / 2);

    /* An endless error page: its start in the message, not read to the end (never, here). */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/endless404", server_port);
    snprintf(dest, sizeof dest, "%s/h.gguf", dir);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, NULL, 11) == EXO_OK);
    CHECK(wait_job(11, &http, err) != EXO_OK);
    CHECK_MSG(http == 404 && strncmp(err, "HTTP 404", 8) == 0, "%d %s", http, err);
    CHECK(exo_download_release(11) == EXO_OK);

    /* A drip under 1 KB/s is a stall: given up after the attempts, the partial kept. */
    CHECK(exo_download_configure(2, 0.05, 1, 1) == EXO_OK);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/drip", server_port);
    snprintf(dest, sizeof dest, "%s/i.gguf", dir);
    CHECK(exo_download_file(url, dest, NULL, BODY_LEN, NULL, 12) == EXO_OK);
    CHECK(wait_job(12, &http, err) != EXO_OK);
    CHECK_MSG(strstr(err, "gave up after 2 attempts") != NULL, "%s", err);
    CHECK(exo_download_release(12) == EXO_OK);
    CHECK(!exists(dest));

    /* Misuse. */
    CHECK(exo_download_file("file:///etc/passwd", dest, NULL, -1, NULL, 8) == EXO_EINVAL);
    CHECK(exo_download_file(url, dest, NULL, -1, "not-hex", 8) == EXO_EINVAL);
    CHECK(exo_download_request("get me", url, NULL, NULL, 0, 10, 1, 8) == EXO_EINVAL);
    CHECK(exo_download_request("GET", url, NULL, NULL, 0, 0, 1, 8) == EXO_EINVAL);
    CHECK(exo_download_release(99) == EXO_ESTATE);
    CHECK(exo_download_configure(0, 1, 1, 1) == EXO_EINVAL);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    if (check_failures) fprintf(stderr, "test_download: %d failures\n", check_failures);
    return check_failures != 0;
}
