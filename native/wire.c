/* wire.c: the transport between peers, on the host's libuv loop.
 *
 * Connections carry the frames of wire.h. Everything here runs on the loop
 * thread except route_done and pass_end, which the engine thread calls when a
 * forward pass it ran for routes is finished; they only queue the routes and
 * wake the loop (uv_async_send) once the whole pass is reported. Tensor
 * frames never pass through Lua: a frame's rows go to the route's shard on
 * the engine thread, and the result is sent on to the next peer from the
 * loop thread, so a hop costs a read, a forward and a write. What Lua must
 * decide about (a hello, a control frame, a closed connection, logits to
 * sample from) is queued as an event and signalled on an eventfd that luv
 * polls, as the engine does for its own completions.
 *
 * A peer is not trusted. A frame is validated (frame.c) before its payload is
 * buffered; a malformed one makes us send an ERROR frame saying why and close
 * that connection only. Rows for a route are checked against the route's
 * shard (dtype, width, position) before they reach the executor.
 *
 * With a cluster key (exo_wire_set_key) a connection starts with AUTH frames
 * each way, and every frame after them is sealed (seal.c): the first sealed
 * frame, the HELLO, proves the key, so a peer without it is refused before
 * anything but AUTH is read from it. docs/wire.md, "Keyed clusters".
 *
 * A pass the engine ran for several routes at once (it merges the jobs queued
 * for one shard) sends the hidden states going to one peer as one
 * TENSOR_BATCH frame, and a batch that arrives is submitted as one group, so
 * the next node runs its parts in one pass too. Only a peer whose hello lists
 * the feature gets one (hello_with_features, peer_reads_batches); one
 * request's rows alone keep the TENSOR frame every version reads.
 *
 * Model files travel between peers as CHUNK frames (share_* below): the
 * sender preads its file into frames as the receiver's credit allows, the
 * receiver pwrites them into a .partial file, hashes them in order and
 * renames the file into place once its SHA-256 matches; Lua only chooses who
 * serves what and grants credit (lua/exo/share.lua). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "engine.h"
#include "error.h"
#include "grow.h"
#include "exo.h"
#include "json.h"
#include <math.h>

#include "announce.h"
#include "quants.h"
#include "seal.h"
#include "wire.h"

#define WIRE_READ_CHUNK 65536
#define WIRE_HELLO_TIMEOUT_MS 10000
#define WIRE_MAX_EVENTS 65536
#define WIRE_MAX_ROUTES 1024
/* A peer that stops reading may not make us queue without bound: writes
 * queued for one connection, and for all of them, are counted in the bytes
 * they really hold (the frame, its request and the allocator's share), and
 * a connection past either cap is closed. One of them holds two of the
 * largest frames. */
#define WIRE_MAX_QUEUED_CONN ((size_t)160 << 20)
#define WIRE_MAX_QUEUED_TOTAL ((size_t)384 << 20)
#define WIRE_WRITE_COST(len) (sizeof(wire_write) + (len) + 32)
/* A pong is only a courtesy: a peer that sends pings faster than it reads
 * our writes gets none while this much is queued for it (a ping flood would
 * otherwise queue a pong per ping). */
#define WIRE_PONG_MAX_QUEUED ((size_t)1 << 20)
/* Frames being received, all connections together: a peer that announces a
 * large frame and sends it slowly, times many connections, may not hold more
 * of our memory than this; a connection whose frame would go past it is
 * closed. Four of the largest frames fit. */
#define WIRE_MAX_BUFFERED ((size_t)256 << 20)
/* Model-file transfers open at a time, both ways together, and the credit
 * one may hold (the receiver grants a window; the sender never has more in
 * flight, so a healthy transfer never meets the slowest-reader cut). */
#define WIRE_MAX_SHARES 64
#define WIRE_MAX_SHARES_SERVED_PER_PEER 8 /* one peer cannot take every slot */
#define WIRE_MAX_SHARE_CREDIT ((int64_t)16 << 20)
/* Connections that have not said hello yet, at most (each may be sending a
 * hello of up to 4 KiB; nothing bigger is buffered before it). */
#define WIRE_MAX_STRANGERS 64
/* A closing connection whose peer never lets the shutdown finish is cut. */
#define WIRE_SHUTDOWN_TIMEOUT_MS 5000

enum conn_state { CONN_CONNECTING, CONN_AUTH, CONN_HELLO, CONN_UP, CONN_CLOSING };

typedef struct wire_conn {
    exo_wire *w;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    int id;
    int state;
    int dialed;           /* we connected (crypto_kx's client in a keyed cluster) */
    exo_seal seal;        /* keyed clusters: this connection's keys; seal.ready once AUTH is through */
    uint64_t opened_ms, closing_ms;
    uint8_t *rbuf;
    size_t rlen, rcap;
    size_t need;          /* bytes of the frame being received, header included (0: unknown) */
    size_t queued;        /* bytes our queued writes to this peer hold (WIRE_WRITE_COST) */
    int queue_released;   /* closing: its queue no longer counts in queued_total */
    int reads_batches;    /* its hello listed EXO_WIRE_FEATURE_BATCH */
    char address[64];
    struct wire_conn *next;
} wire_conn;

typedef struct wire_route {
    exo_wire *w;
    uint64_t id;
    exo_shard *shard;
    exo_seq *seq;
    exo_shard_info info;
    int next_conn;
    uint32_t wire_dtype;
    int collector;        /* no shard: rows that arrive are logits for Lua (exo_wire_collect_open) */
    int allowed[4];       /* connections rows may come from (0: this node); n_allowed 0 = any */
    int n_allowed;
    int busy;             /* a forward pass is running on the engine thread */
    int closed;           /* forgotten by Lua; freed when the pass in flight ends */
    int position, n_rows, all_logits;
    int32_t *tokens;
    size_t tokens_cap;
    float *hidden, *out;
    size_t hidden_cap, out_cap;
    int status;
    char err[256];
    uint64_t arrived_ns, compute_ns; /* this pass: rows in (loop clock), forward time */
    struct wire_route *next, *done_next;
} wire_route;

typedef struct wire_share {
    uint64_t id;
    int conn;
    int sending;          /* 1: we serve the file; 0: we receive it */
    int fd;
    int64_t size;
    int64_t offset;       /* sending: the next byte to send; receiving: bytes on disk */
    int64_t credit;       /* sending: bytes the receiver still lets us send */
    EVP_MD_CTX *md;       /* receiving from offset 0: the SHA-256 of the bytes on disk so far */
    int resumed;          /* receiving: a partial from before; the whole file is hashed at the end */
    char sha256[65];
    char *dest;           /* receiving: the final path */
    char *partial;        /* receiving: dest + ".partial" */
    uv_work_t verify;     /* a resumed file's hash, on the thread pool */
    exo_wire *w_owner;
    char got[65];
    struct wire_share *next;
} wire_share;

typedef struct wire_event {
    exo_wire_event ev;
    char *data;
} wire_event;

struct exo_wire {
    uv_loop_t *loop;
    uv_tcp_t server;
    uv_async_t async;
    uv_timer_t timer;
    int listening;
    int open_handles;     /* handles whose close callback has not run yet */
    int freeing;
    int efd;
    char *hello;
    size_t hello_len;
    exo_seal_key key;     /* the cluster key, stretched (keyed only) */
    int keyed;
    wire_conn *conns;
    int next_conn_id;
    wire_route *routes;
    int n_routes;
    pthread_mutex_t done_lock;
    wire_route *done_head, *done_tail;
    wire_route *staged_head, *staged_tail; /* a pass's finished routes until its last is reported */
    wire_event *events;
    size_t ev_head, ev_count, ev_cap;
    char *last_data;
    size_t queued_total;  /* open connections' queued writes, as conn.queued */
    size_t buffered_total; /* all connections' receive buffers (rcap) */
    wire_share *shares;
    int n_shares;
    exo_wire_stats stats;
};

static uv_loop_t *host_loop;

int exo_runtime_set_loop(void *uv_loop)
{
    host_loop = uv_loop;
    return EXO_OK;
}

/* ---- events for Lua ------------------------------------------------------- */

static void push_event(exo_wire *w, int type, int conn, uint64_t request_id, int64_t value, const void *data,
                       size_t len, const char *address)
{
    if (w->freeing) return;
    if (w->ev_count == WIRE_MAX_EVENTS) return; /* Lua stopped draining; dropping beats growing without bound */
    if (w->ev_count == w->ev_cap) {
        size_t cap = w->ev_cap ? w->ev_cap * 2 : 64;
        wire_event *e = malloc(cap * sizeof *e);
        if (!e) return;
        for (size_t i = 0; i < w->ev_count; i++) e[i] = w->events[(w->ev_head + i) % w->ev_cap];
        free(w->events);
        w->events = e;
        w->ev_cap = cap;
        w->ev_head = 0;
    }
    wire_event *e = &w->events[(w->ev_head + w->ev_count) % w->ev_cap];
    memset(e, 0, sizeof *e);
    e->ev.type = type;
    e->ev.conn = conn;
    e->ev.request_id = request_id;
    e->ev.value = value;
    if (address) snprintf(e->ev.address, sizeof e->ev.address, "%s", address);
    if (len) {
        e->data = malloc(len);
        if (!e->data) return;
        memcpy(e->data, data, len);
        e->ev.len = (uint32_t)len;
    }
    w->ev_count++;
    uint64_t one = 1;
    ssize_t r = write(w->efd, &one, sizeof one);
    (void)r; /* fails only at counter overflow, when readiness is already set */
}

static void push_text_event(exo_wire *w, int type, int conn, uint64_t request_id, const char *text)
{
    push_event(w, type, conn, request_id, 0, text, strlen(text), NULL);
}

int exo_wire_next_event(exo_wire *w, exo_wire_event *ev)
{
    if (!w || !ev) return exo__error_set(EXO_EINVAL, "exo_wire_next_event: NULL argument");
    free(w->last_data);
    w->last_data = NULL;
    if (w->ev_count == 0) {
        uint64_t v;
        ssize_t r = read(w->efd, &v, sizeof v);
        (void)r;
        return 0;
    }
    wire_event *e = &w->events[w->ev_head];
    w->ev_head = (w->ev_head + 1) % w->ev_cap;
    w->ev_count--;
    *ev = e->ev;
    w->last_data = e->data;
    ev->data = e->data ? e->data : "";
    return 1;
}

int exo_wire_fd(const exo_wire *w) { return w ? w->efd : -1; }

/* ---- what frames a peer reads --------------------------------------------- */

/* The hello's field naming the optional frames this transport reads; the
 * transport adds it itself, since it alone knows what it reads. */
static const char FEATURES_FIELD[] = "\"wire_features\":[\"" EXO_WIRE_FEATURE_BATCH "\"]";

/* hello (a JSON object from Lua) with FEATURES_FIELD added as its last
 * member, in *out (malloc'd). Anything else (not an object, a field of that
 * name already, no room under the hello's limit) is kept as it is: such a
 * node is only never sent a batch. */
static int hello_with_features(const char *hello, size_t len, char **out, size_t *out_len)
{
    exo_json *j = NULL;
    size_t extra = sizeof FEATURES_FIELD; /* the field and a comma */
    int splice = len + extra <= EXO_WIRE_MAX_HELLO && exo__json_parse(hello, len, "hello", &j) == EXO_OK &&
                 exo__json_kind(j, 0) == EXO_JSON_OBJECT && exo__json_get(j, 0, "wire_features") == EXO_JSON_NONE;
    int empty = splice && exo__json_count(j, 0) == 0;
    exo__json_free(j);
    size_t end = len;
    while (splice && end > 0 && hello[end - 1] != '}') end--;
    splice = splice && end > 0;
    char *copy = malloc(len + (splice ? extra : 0) + 1);
    if (!copy) return exo__error_set(EXO_ENOMEM, "out of memory for the hello");
    if (!splice) {
        memcpy(copy, hello, len);
        *out_len = len;
    } else { /* the member goes before the object's closing brace */
        size_t n = end - 1;
        memcpy(copy, hello, n);
        if (!empty) copy[n++] = ',';
        memcpy(copy + n, FEATURES_FIELD, sizeof FEATURES_FIELD - 1);
        n += sizeof FEATURES_FIELD - 1;
        memcpy(copy + n, hello + end - 1, len - end + 1);
        *out_len = n + len - end + 1;
    }
    *out = copy;
    return EXO_OK;
}

/* Whether a peer's hello lists the batch frame among its wire_features. */
static int peer_reads_batches(const uint8_t *hello, size_t len)
{
    exo_json *j = NULL;
    if (exo__json_parse((const char *)hello, len, "hello", &j) != EXO_OK) return 0;
    int32_t list = exo__json_get(j, 0, "wire_features"), found = 0;
    if (exo__json_kind(j, list) == EXO_JSON_ARRAY)
        for (int32_t k = exo__json_first(j, list); k != EXO_JSON_NONE && !found; k = exo__json_next(j, k)) {
            size_t n = 0;
            const char *name = exo__json_kind(j, k) == EXO_JSON_STRING ? exo__json_str(j, k, &n) : NULL;
            found = name && n == strlen(EXO_WIRE_FEATURE_BATCH) && memcmp(name, EXO_WIRE_FEATURE_BATCH, n) == 0;
        }
    exo__json_free(j);
    return found;
}

/* ---- connections -------------------------------------------------------- */

static wire_conn *find_conn(exo_wire *w, int id)
{
    for (wire_conn *c = w->conns; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static void handle_closed(uv_handle_t *h)
{
    exo_wire *w = h->data;
    if (--w->open_handles == 0 && w->freeing) free(w);
}

static void conn_closed(uv_handle_t *h)
{
    wire_conn *c = h->data;
    exo_wire *w = c->w;
    for (wire_conn **p = &w->conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    w->buffered_total -= c->rcap;
    free(c->rbuf);
    exo__seal_wipe(&c->seal);
    free(c);
    if (--w->open_handles == 0 && w->freeing) free(w);
}

/* Closes c's handle unless that is under way (the host may have closed every
 * handle at exit already). */
static void conn_release(wire_conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void conn_shutdown_done(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_release(req->data);
}

static void shares_conn_closed(exo_wire *w, int conn);

/* Closes c after the writes already queued (an ERROR frame among them) go
 * out, and tells Lua why. */
static void conn_close(wire_conn *c, const char *reason)
{
    exo_wire *w = c->w;
    if (c->state == CONN_CLOSING) return;
    int was_connecting = c->state == CONN_CONNECTING;
    c->state = CONN_CLOSING;
    c->closing_ms = uv_now(w->loop);
    /* What is queued for it is cut within WIRE_SHUTDOWN_TIMEOUT_MS at most. */
    w->queued_total -= c->queued;
    c->queue_released = 1;
    w->stats.connections--;
    shares_conn_closed(w, c->id);
    push_text_event(w, EXO_WIRE_EV_CLOSED, c->id, 0, reason);
    if (was_connecting) return; /* the connect callback closes the handle */
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_shutdown_done) != 0) conn_release(c);
}

typedef struct wire_write {
    uv_write_t req;
    wire_conn *conn;
    size_t len;
    size_t cost;          /* what it adds to conn.queued */
    uint8_t data[];
} wire_write;

static void write_done(uv_write_t *req, int status)
{
    wire_write *ww = (wire_write *)req;
    wire_conn *c = ww->conn;
    c->queued -= ww->cost;
    if (!c->queue_released) c->w->queued_total -= ww->cost;
    if (status < 0 && status != UV_ECANCELED && c->state != CONN_CLOSING) {
        char msg[160];
        snprintf(msg, sizeof msg, "write to %s failed: %s", c->address, uv_strerror(status));
        conn_close(c, msg);
    }
    free(ww);
}

/* A write of a frame with payload_len bytes of payload, to be filled in at
 * data + EXO_WIRE_HEADER_SIZE (and room after it for a seal's tag); NULL when
 * out of memory. */
static wire_write *frame_alloc(uint8_t type, uint64_t request_id, size_t payload_len)
{
    wire_write *ww = malloc(sizeof *ww + EXO_WIRE_HEADER_SIZE + payload_len + EXO_WIRE_SEAL_TAG);
    if (!ww) return NULL;
    ww->len = EXO_WIRE_HEADER_SIZE + payload_len;
    exo__wire_encode_header(ww->data, type, request_id, (uint32_t)payload_len);
    return ww;
}

/* The open connection with the most bytes queued for it: the slowest reader. */
static wire_conn *slowest_reader(exo_wire *w)
{
    wire_conn *slowest = NULL;
    for (wire_conn *k = w->conns; k; k = k->next)
        if (k->state != CONN_CLOSING && (!slowest || k->queued > slowest->queued)) slowest = k;
    return slowest;
}

/* Whether cost more bytes may be queued for c. Past all peers' budget the
 * slowest reader is cut first (its queue no longer counts once it closes),
 * so one stalled peer cannot make the others' frames fail. */
static int queue_has_room(wire_conn *c, size_t cost)
{
    exo_wire *w = c->w;
    if (c->queued + cost > WIRE_MAX_QUEUED_CONN) {
        conn_close(c, "the peer stopped reading (over 160 MiB queued for it)");
        return 0;
    }
    while (w->queued_total + cost > WIRE_MAX_QUEUED_TOTAL) {
        wire_conn *slowest = slowest_reader(w);
        if (!slowest || slowest == c || slowest->queued == 0) {
            conn_close(c, "the peers stopped reading (over 384 MiB queued for all of them)");
            return 0;
        }
        conn_close(slowest, "the slowest of the peers that stopped reading (over 384 MiB queued for all of them)");
    }
    return 1;
}

static int frame_send(wire_conn *c, wire_write *ww)
{
    if (c->state == CONN_CLOSING) {
        free(ww);
        return exo__error_set(EXO_ESTATE, "the connection to %s is closing", c->address);
    }
    size_t sealed_len = ww->len + (c->seal.ready ? EXO_WIRE_SEAL_TAG : 0);
    size_t cost = WIRE_WRITE_COST(sealed_len);
    if (!queue_has_room(c, cost)) {
        free(ww);
        return exo__error_set(EXO_EIO, "the peer at %s stopped reading", c->address);
    }
    if (c->seal.ready) { /* sealed in the order the writes go out: the counter nonces follow it */
        size_t plain = ww->len - EXO_WIRE_HEADER_SIZE;
        exo__wire_set_payload_len(ww->data, (uint32_t)(plain + EXO_WIRE_SEAL_TAG));
        exo__seal_frame(&c->seal, ww->data, plain);
        ww->len = sealed_len;
    }
    ww->conn = c;
    ww->cost = cost;
    uv_buf_t buf = uv_buf_init((char *)ww->data, (unsigned)ww->len);
    int rc = uv_write(&ww->req, (uv_stream_t *)&c->tcp, &buf, 1, write_done);
    if (rc < 0) {
        free(ww);
        char msg[160];
        snprintf(msg, sizeof msg, "write to %s failed: %s", c->address, uv_strerror(rc));
        conn_close(c, msg); /* a frame missing from the stream: nothing after it could be read */
        return exo__error_set(EXO_EIO, "%s", msg);
    }
    c->queued += cost;
    c->w->queued_total += cost;
    c->w->stats.frames_sent++;
    c->w->stats.bytes_sent += ww->len;
    return EXO_OK;
}

static int send_simple(wire_conn *c, uint8_t type, uint64_t request_id, const void *payload, size_t len)
{
    wire_write *ww = frame_alloc(type, request_id, len);
    if (!ww) return exo__error_set(EXO_ENOMEM, "out of memory for a frame of %zu bytes", len);
    if (len) memcpy(ww->data + EXO_WIRE_HEADER_SIZE, payload, len);
    return frame_send(c, ww);
}

/* Refuses a peer's frame: tell it why, then close. */
static void conn_reject(wire_conn *c, const char *why)
{
    char reason[400];
    snprintf(reason, sizeof reason, "bad frame from %s: %s", c->address, why);
    c->w->stats.frames_rejected++;
    if (c->state != CONN_CLOSING) send_simple(c, EXO_WIRE_ERROR, 0, why, strlen(why) < 1024 ? strlen(why) : 1024);
    conn_close(c, reason);
}

/* A connected stream: say hello and start reading. */
static void conn_start(wire_conn *c)
{
    exo_wire *w = c->w;
    struct sockaddr_storage addr;
    int len = sizeof addr;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&addr, &len) == 0) {
        char ip[48] = "?";
        int port = 0;
        if (addr.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&addr;
            uv_ip4_name(a, ip, sizeof ip);
            port = ntohs(a->sin_port);
        }
        snprintf(c->address, sizeof c->address, "%s:%d", ip, port);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->opened_ms = uv_now(w->loop);
    if (w->keyed) {
        uint8_t auth[EXO_WIRE_AUTH_SIZE];
        c->state = CONN_AUTH;
        if (exo__seal_begin(&c->seal, &w->key, c->dialed, auth) != EXO_OK) {
            conn_close(c, exo_last_error());
            return;
        }
        send_simple(c, EXO_WIRE_AUTH, 0, auth, sizeof auth);
        return;
    }
    c->state = CONN_HELLO;
    send_simple(c, EXO_WIRE_HELLO, 0, w->hello, w->hello_len);
}

/* A keyed connection's peer sent its AUTH: agree on the keys, then say hello
 * (sealed: the proof that we hold the key). */
static void conn_authenticate(wire_conn *c, const uint8_t *payload, size_t len)
{
    exo_wire *w = c->w;
    if (exo__seal_accept(&c->seal, &w->key, payload, len) != EXO_OK) {
        w->stats.auth_refused++;
        conn_reject(c, exo_last_error());
        return;
    }
    c->state = CONN_HELLO;
    send_simple(c, EXO_WIRE_HELLO, 0, w->hello, w->hello_len);
}

/* What a connection that has not said hello may send next, or NULL for this
 * frame type: before the handshake only AUTH (keyed) or HELLO (open), and an
 * ERROR saying why the peer refuses us. */
static const char *early_frame_refusal(const wire_conn *c, uint8_t type)
{
    if (type == EXO_WIRE_ERROR) return NULL;
    if (c->state == CONN_AUTH)
        return type == EXO_WIRE_AUTH ? NULL
                                     : "this cluster needs its key: start the peer with the same cluster key "
                                       "(--cluster-key, EXO_CLUSTER_KEY or cluster.key; 'exo key' makes one)";
    if (c->state == CONN_HELLO) {
        if (type == EXO_WIRE_AUTH && !c->seal.ready) return "this node is in an open cluster (no cluster key)";
        return type == EXO_WIRE_HELLO ? NULL : "the first frame must be a hello";
    }
    return NULL;
}

static void deliver_tensor(exo_wire *w, wire_conn *from, uint64_t request_id, const uint8_t *payload, size_t len);
static void deliver_chunk(wire_conn *from, const uint8_t *payload, size_t len);
static void deliver_batch(exo_wire *w, wire_conn *from, const uint8_t *payload, size_t len);

static void dispatch(wire_conn *c, const exo_wire_header *h, const uint8_t *payload)
{
    exo_wire *w = c->w;
    w->stats.frames_received++;
    switch (h->type) {
    case EXO_WIRE_AUTH:
        if (c->state != CONN_AUTH) {
            conn_reject(c, c->w->keyed ? "a second AUTH" : "this node is in an open cluster (no cluster key)");
            return;
        }
        conn_authenticate(c, payload, h->payload_len);
        break;
    case EXO_WIRE_HELLO:
        if (c->state != CONN_HELLO) {
            conn_reject(c, "a second hello");
            return;
        }
        c->state = CONN_UP;
        c->reads_batches = peer_reads_batches(payload, h->payload_len);
        push_event(w, EXO_WIRE_EV_PEER, c->id, 0, 0, payload, h->payload_len, c->address);
        break;
    case EXO_WIRE_CONTROL:
        push_event(w, EXO_WIRE_EV_CONTROL, c->id, h->request_id, 0, payload, h->payload_len, NULL);
        break;
    case EXO_WIRE_TENSOR: deliver_tensor(w, c, h->request_id, payload, h->payload_len); break;
    case EXO_WIRE_TENSOR_BATCH: deliver_batch(w, c, payload, h->payload_len); break;
    case EXO_WIRE_CHUNK: deliver_chunk(c, payload, h->payload_len); break;
    case EXO_WIRE_PING:
        if (c->queued <= WIRE_PONG_MAX_QUEUED) send_simple(c, EXO_WIRE_PONG, h->request_id, payload, 8);
        break;
    case EXO_WIRE_PONG: {
        uint64_t sent = 0;
        for (int i = 7; i >= 0; i--) sent = sent << 8 | payload[i];
        uint64_t now = uv_hrtime();
        push_event(w, EXO_WIRE_EV_PONG, c->id, 0, now > sent ? (int64_t)((now - sent) / 1000) : 0, NULL, 0, NULL);
        break;
    }
    case EXO_WIRE_ERROR: {
        char reason[300];
        int n = (int)(h->payload_len < 200 ? h->payload_len : 200);
        char text[201];
        for (int i = 0; i < n; i++) text[i] = payload[i] >= 0x20 && payload[i] < 0x7f ? (char)payload[i] : '?';
        text[n] = 0;
        snprintf(reason, sizeof reason, "%s refused us: %s", c->address, text);
        conn_close(c, reason);
        break;
    }
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    wire_conn *c = h->data;
    size_t want = c->rlen + WIRE_READ_CHUNK;
    if (c->need > want) want = c->need;
    /* Past the budget the buffer stays as it is, and on_read closes c. */
    if (want > c->rcap && c->w->buffered_total - c->rcap + want <= WIRE_MAX_BUFFERED) {
        uint8_t *p = realloc(c->rbuf, want);
        if (p) {
            c->w->buffered_total += want - c->rcap;
            c->rbuf = p;
            c->rcap = want;
        }
    }
    *buf = uv_buf_init((char *)c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    wire_conn *c = s->data;
    if (nread < 0) {
        char msg[160];
        if (nread == UV_EOF) snprintf(msg, sizeof msg, "%s closed the connection", c->address);
        else if (nread == UV_ENOBUFS) /* on_alloc found no room: the budget for frames in flight is spent */
            snprintf(msg, sizeof msg, "%s sends a frame there is no room for (%zu MiB of frames in flight)", c->address,
                     WIRE_MAX_BUFFERED >> 20);
        else snprintf(msg, sizeof msg, "reading from %s failed: %s", c->address, uv_strerror((int)nread));
        conn_close(c, msg);
        return;
    }
    if (nread == 0 || c->state == CONN_CLOSING) return;
    if (c->rlen + (size_t)nread > c->rcap) {
        conn_close(c, "no room for its frame (out of memory)");
        return;
    }
    c->rlen += (size_t)nread;
    c->w->stats.bytes_received += (uint64_t)nread;
    size_t off = 0;
    while (c->state != CONN_CLOSING) {
        exo_wire_header h;
        int rc = exo__wire_decode_header(c->rbuf + off, c->rlen - off, c->seal.ready, &h);
        if (rc == 0) break;
        if (rc < 0) {
            conn_reject(c, exo_last_error());
            return;
        }
        /* Before its hello a peer gets nothing buffered but its handshake. */
        const char *early = early_frame_refusal(c, h.type);
        if (early) {
            if (c->state == CONN_AUTH) c->w->stats.auth_refused++;
            conn_reject(c, early);
            return;
        }
        size_t total = EXO_WIRE_HEADER_SIZE + (size_t)h.payload_len;
        if (c->rlen - off < total) {
            c->need = total;
            break;
        }
        c->need = 0;
        if (c->seal.ready) {
            if (exo__seal_open(&c->seal, c->rbuf + off, h.payload_len) != EXO_OK) {
                if (c->state == CONN_HELLO) c->w->stats.auth_refused++; /* its proof of the key failed */
                conn_reject(c, exo_last_error());
                return;
            }
            h.payload_len -= EXO_WIRE_SEAL_TAG;
        }
        dispatch(c, &h, c->rbuf + off + EXO_WIRE_HEADER_SIZE);
        off += total;
    }
    if (c->state == CONN_CLOSING) return;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    /* A big frame's buffer is given back once it is through. */
    if (c->rcap > 4 * WIRE_READ_CHUNK && c->rlen < WIRE_READ_CHUNK && c->need == 0) {
        uint8_t *p = realloc(c->rbuf, WIRE_READ_CHUNK);
        if (p) {
            c->w->buffered_total -= c->rcap - WIRE_READ_CHUNK;
            c->rbuf = p;
            c->rcap = WIRE_READ_CHUNK;
        }
    }
}

static wire_conn *conn_new(exo_wire *w)
{
    wire_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->w = w;
    c->id = w->next_conn_id++;
    c->state = CONN_CONNECTING;
    snprintf(c->address, sizeof c->address, "?");
    uv_tcp_init(w->loop, &c->tcp);
    c->tcp.data = c;
    w->open_handles++;
    c->next = w->conns;
    w->conns = c;
    w->stats.connections++;
    return c;
}

static void on_connection(uv_stream_t *server, int status)
{
    exo_wire *w = server->data;
    if (status < 0) return;
    int strangers = 0;
    for (wire_conn *k = w->conns; k; k = k->next) strangers += k->state == CONN_AUTH || k->state == CONN_HELLO;
    wire_conn *c = conn_new(w);
    if (!c) return;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || strangers >= WIRE_MAX_STRANGERS) {
        c->state = CONN_CLOSING;
        w->stats.connections--;
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    conn_start(c);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_connect(uv_connect_t *req, int status)
{
    wire_conn *c = req->data;
    if (c->state == CONN_CLOSING || status < 0) {
        if (c->state != CONN_CLOSING) {
            char msg[200];
            snprintf(msg, sizeof msg, "cannot connect to %s: %s", c->address, uv_strerror(status));
            conn_close(c, msg);
        }
        conn_release(c);
        return;
    }
    conn_start(c);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0) return EXO_OK;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0) return EXO_OK;
    return exo__error_set(EXO_EINVAL, "'%s' is not an IP address", host);
}

int exo_wire_listen(exo_wire *w, const char *host, int port, int *bound_port)
{
    if (!w || !host) return exo__error_set(EXO_EINVAL, "exo_wire_listen: NULL argument");
    if (w->listening) return exo__error_set(EXO_ESTATE, "the wire already listens");
    if (port < 0 || port > 65535) return exo__error_set(EXO_EINVAL, "port %d is out of range", port);
    struct sockaddr_storage addr;
    int rc = resolve(host, port, &addr);
    if (rc) return rc;
    uv_tcp_init(w->loop, &w->server);
    w->server.data = w;
    w->open_handles++;
    w->listening = 1;
    int err = uv_tcp_bind(&w->server, (struct sockaddr *)&addr, 0);
    if (!err) err = uv_listen((uv_stream_t *)&w->server, 128, on_connection);
    if (err) {
        w->listening = 0;
        uv_close((uv_handle_t *)&w->server, handle_closed);
        return exo__error_set(err == UV_EADDRINUSE ? EXO_EBUSY : EXO_EIO, "cannot listen on %s:%d: %s", host, port,
                             uv_strerror(err));
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&w->server, (struct sockaddr *)&bound, &len);
    if (bound_port)
        *bound_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                         : ((struct sockaddr_in *)&bound)->sin_port);
    return EXO_OK;
}

int exo_wire_connect(exo_wire *w, const char *host, int port, int *conn)
{
    if (!w || !host || !conn) return exo__error_set(EXO_EINVAL, "exo_wire_connect: NULL argument");
    if (port < 1 || port > 65535) return exo__error_set(EXO_EINVAL, "port %d is out of range", port);
    struct sockaddr_storage addr;
    int rc = resolve(host, port, &addr);
    if (rc) return rc;
    wire_conn *c = conn_new(w);
    if (!c) return exo__error_set(EXO_ENOMEM, "out of memory for a connection");
    snprintf(c->address, sizeof c->address, "%s:%d", host, port);
    c->dialed = 1;
    c->connect_req.data = c;
    int err = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&addr, on_connect);
    if (err) {
        c->state = CONN_CLOSING;
        w->stats.connections--;
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return exo__error_set(EXO_EIO, "cannot connect to %s:%d: %s", host, port, uv_strerror(err));
    }
    *conn = c->id;
    return EXO_OK;
}

int exo_wire_close(exo_wire *w, int conn, const char *reason)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_close: NULL argument");
    wire_conn *c = find_conn(w, conn);
    if (!c || c->state == CONN_CLOSING) return EXO_OK;
    if (reason && *reason && c->state != CONN_CONNECTING)
        send_simple(c, EXO_WIRE_ERROR, 0, reason, strlen(reason) < 1024 ? strlen(reason) : 1024);
    conn_close(c, reason && *reason ? reason : "closed by this node");
    return EXO_OK;
}

/* The live connection id names, or NULL with an error. */
static wire_conn *up_conn(exo_wire *w, int conn)
{
    wire_conn *c = find_conn(w, conn);
    if (!c || c->state != CONN_UP) {
        exo__error_set(EXO_ESTATE, "connection %d is not open", conn);
        return NULL;
    }
    return c;
}

int exo_wire_send_control(exo_wire *w, int conn, uint64_t request_id, const char *json, size_t len)
{
    if (!w || (!json && len)) return exo__error_set(EXO_EINVAL, "exo_wire_send_control: NULL argument");
    if (len > EXO_WIRE_MAX_CONTROL)
        return exo__error_set(EXO_ENOMEM, "control frame of %zu bytes is over the %u-byte limit", len,
                             EXO_WIRE_MAX_CONTROL);
    if (conn == 0) {
        push_event(w, EXO_WIRE_EV_CONTROL, 0, request_id, 0, json, len, NULL);
        return EXO_OK;
    }
    wire_conn *c = up_conn(w, conn);
    return c ? send_simple(c, EXO_WIRE_CONTROL, request_id, json, len) : EXO_ESTATE;
}

int exo_wire_ping(exo_wire *w, int conn)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_ping: NULL argument");
    wire_conn *c = up_conn(w, conn);
    if (!c) return EXO_ESTATE;
    uint8_t stamp[8];
    uint64_t now = uv_hrtime();
    for (int i = 0; i < 8; i++) stamp[i] = (uint8_t)(now >> 8 * i);
    return send_simple(c, EXO_WIRE_PING, 0, stamp, 8);
}

/* Sends a tensor frame whose rows pack() writes; conn 0 delivers it here. */
static int send_tensor(exo_wire *w, int conn, uint64_t request_id, const exo_wire_tensor *t, const void *rows)
{
    size_t bytes = exo__wire_tensor_bytes(t->dtype, t->n_rows, t->row_len);
    if (!bytes) return exo__error_set(EXO_EINVAL, "tensor of dtype %u and shape [%u][%u] cannot be sent", t->dtype,
                                     t->n_rows, t->row_len);
    if (bytes + EXO_WIRE_TENSOR_HEADER_SIZE > EXO_WIRE_MAX_TENSOR)
        return exo__error_set(EXO_ENOMEM, "tensor of %zu bytes is over the frame limit", bytes);
    wire_conn *c = NULL;
    if (conn != 0 && !(c = up_conn(w, conn))) return EXO_ESTATE;
    wire_write *ww = frame_alloc(EXO_WIRE_TENSOR, request_id, EXO_WIRE_TENSOR_HEADER_SIZE + bytes);
    if (!ww) return exo__error_set(EXO_ENOMEM, "out of memory for a tensor frame of %zu bytes", bytes);
    uint8_t *payload = ww->data + EXO_WIRE_HEADER_SIZE;
    exo__wire_encode_tensor(payload, t);
    if (t->dtype == EXO_WIRE_DTYPE_I32) memcpy(payload + EXO_WIRE_TENSOR_HEADER_SIZE, rows, bytes);
    else exo__wire_pack_rows(t->dtype, rows, (int)t->n_rows, (int)t->row_len, payload + EXO_WIRE_TENSOR_HEADER_SIZE);
    if (!c) {
        deliver_tensor(w, NULL, request_id, payload, EXO_WIRE_TENSOR_HEADER_SIZE + bytes);
        free(ww);
        return EXO_OK;
    }
    w->stats.tensor_bytes_sent += EXO_WIRE_TENSOR_HEADER_SIZE + bytes;
    return frame_send(c, ww);
}

int exo_wire_send_tokens(exo_wire *w, int conn, uint64_t request_id, int position, const int32_t *ids, int n,
                         int flags)
{
    if (!w || !ids) return exo__error_set(EXO_EINVAL, "exo_wire_send_tokens: NULL argument");
    if (n < 1 || position < 0) return exo__error_set(EXO_EINVAL, "cannot send %d tokens at position %d", n, position);
    exo_wire_tensor t = {.position = position, .dtype = EXO_WIRE_DTYPE_I32, .n_rows = (uint32_t)n, .row_len = 1,
                         .flags = (uint32_t)flags & EXO_WIRE_TENSOR_ALL_LOGITS};
    return send_tensor(w, conn, request_id, &t, ids);
}

/* ---- sharing model files ---------------------------------------------------- */

static wire_share *find_share(exo_wire *w, int conn, uint64_t id, int sending)
{
    for (wire_share *s = w->shares; s; s = s->next)
        if (s->id == id && s->sending == sending && (conn < 0 || s->conn == conn)) return s;
    return NULL;
}

static void share_free(exo_wire *w, wire_share *s)
{
    for (wire_share **p = &w->shares; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            w->n_shares--;
            break;
        }
    if (s->fd >= 0) close(s->fd);
    if (s->md) EVP_MD_CTX_free(s->md);
    free(s->dest);
    free(s->partial);
    free(s);
}

static int share_new(exo_wire *w, int conn, uint64_t id, int sending, wire_share **out)
{
    if (w->n_shares >= WIRE_MAX_SHARES)
        return exo__error_set(EXO_EAGAIN, "too many file transfers at once (%d)", WIRE_MAX_SHARES);
    if (find_share(w, sending ? conn : -1, id, sending))
        return exo__error_set(EXO_ESTATE, "transfer %llu is already open", (unsigned long long)id);
    int served = 0;
    for (wire_share *k = w->shares; k; k = k->next) served += k->sending && k->conn == conn;
    if (sending && served >= WIRE_MAX_SHARES_SERVED_PER_PEER)
        return exo__error_set(EXO_EAGAIN, "this peer already has %d files coming from this node",
                             WIRE_MAX_SHARES_SERVED_PER_PEER);
    wire_share *s = calloc(1, sizeof *s);
    if (!s) return exo__error_set(EXO_ENOMEM, "out of memory for a transfer");
    s->id = id;
    s->w_owner = w;
    s->conn = conn;
    s->sending = sending;
    s->fd = -1;
    s->next = w->shares;
    w->shares = s;
    w->n_shares++;
    *out = s;
    return EXO_OK;
}

/* A receiving transfer is over: tell Lua (status 0: the file is in place). */
static void share_end(exo_wire *w, wire_share *s, int status, const char *why)
{
    push_event(w, EXO_WIRE_EV_SHARE_END, s->conn, s->id, status, why, why ? strlen(why) : 0, NULL);
    share_free(w, s);
}

static void shares_conn_closed(exo_wire *w, int conn)
{
    for (wire_share *s = w->shares, *next; s; s = next) {
        next = s->next;
        if (s->conn != conn) continue;
        if (s->sending) share_free(w, s);
        else share_end(w, s, EXO_EIO, "the peer's connection closed (the partial file is kept)");
    }
}

static void to_hex(const unsigned char *d, char hex[65])
{
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* Feeds the first n bytes of fd into md; 0, or -1 when they cannot be read. */
static int digest_fd(EVP_MD_CTX *md, int fd, int64_t n)
{
    static _Thread_local unsigned char buf[1 << 20]; /* the loop thread and the thread pool's */
    for (int64_t at = 0; n < 0 || at < n;) {
        size_t want = sizeof buf;
        if (n >= 0 && (int64_t)want > n - at) want = (size_t)(n - at);
        ssize_t r = pread(fd, buf, want, at);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return n < 0 ? 0 : -1;
        EVP_DigestUpdate(md, buf, (size_t)r);
        at += r;
    }
    return 0;
}

int exo_wire_file_sha256(const char *path, char *hex65)
{
    if (!path || !hex65) return exo__error_set(EXO_EINVAL, "exo_wire_file_sha256: NULL argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return exo__error_set(EXO_EIO, "cannot open %s: %s", path, strerror(errno));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 && digest_fd(md, fd, -1) == 0 &&
             EVP_DigestFinal_ex(md, d, &n) == 1 && n == 32;
    int err = errno;
    EVP_MD_CTX_free(md);
    close(fd);
    if (!ok) return exo__error_set(EXO_EIO, "cannot read %s: %s", path, strerror(err));
    to_hex(d, hex65);
    return EXO_OK;
}

typedef struct wire_hash {
    uv_work_t req;
    exo_wire *w;
    uint64_t id;
    int status;
    char hex[65];
    char why[256];
    char path[];
} wire_hash;

static void hash_work(uv_work_t *req)
{
    wire_hash *h = req->data;
    h->status = exo_wire_file_sha256(h->path, h->hex);
    if (h->status) snprintf(h->why, sizeof h->why, "%s", exo_last_error());
}

static void hash_done(uv_work_t *req, int status)
{
    wire_hash *h = req->data;
    exo_wire *w = h->w;
    if (status < 0 && !h->status) {
        h->status = EXO_EIO;
        snprintf(h->why, sizeof h->why, "hashing %s was cancelled", h->path);
    }
    if (h->status) push_event(w, EXO_WIRE_EV_HASHED, 0, h->id, h->status, h->why, strlen(h->why), NULL);
    else push_event(w, EXO_WIRE_EV_HASHED, 0, h->id, 0, h->hex, 64, NULL);
    free(h);
    /* Pending work counts as a handle: exo_wire_free's memory waits for it. */
    if (--w->open_handles == 0 && w->freeing) free(w);
}

int exo_wire_hash_file(exo_wire *w, uint64_t id, const char *path)
{
    if (!w || !path) return exo__error_set(EXO_EINVAL, "exo_wire_hash_file: NULL argument");
    size_t n = strlen(path);
    wire_hash *h = calloc(1, sizeof *h + n + 1);
    if (!h) return exo__error_set(EXO_ENOMEM, "out of memory for a hash job");
    h->w = w;
    h->id = id;
    memcpy(h->path, path, n + 1);
    h->req.data = h;
    int rc = uv_queue_work(w->loop, &h->req, hash_work, hash_done);
    if (rc) {
        free(h);
        return exo__error_set(EXO_EIO, "cannot queue a hash job: %s", uv_strerror(rc));
    }
    w->open_handles++;
    return EXO_OK;
}

int exo_wire_share_receive(exo_wire *w, int conn, uint64_t transfer_id, const char *dest, int64_t size,
                           const char *sha256_hex, int64_t *offset)
{
    if (!w || !dest || !sha256_hex || !offset) return exo__error_set(EXO_EINVAL, "exo_wire_share_receive: NULL argument");
    if (size < 1 || size >> 62) return exo__error_set(EXO_EINVAL, "a file of %lld bytes", (long long)size);
    if (strlen(sha256_hex) != 64 || strspn(sha256_hex, "0123456789abcdef") != 64)
        return exo__error_set(EXO_EINVAL, "exo_wire_share_receive: sha256 must be 64 lowercase hex digits");
    if (!up_conn(w, conn)) return EXO_ESTATE;
    wire_share *s;
    int rc = share_new(w, conn, transfer_id, 0, &s);
    if (rc) return rc;
    size_t dl = strlen(dest);
    s->dest = malloc(dl + sizeof ".partial");
    s->md = EVP_MD_CTX_new();
    if (!s->dest || !s->md || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
        share_free(w, s);
        return exo__error_set(EXO_ENOMEM, "out of memory for a transfer");
    }
    memcpy(s->dest, dest, dl + 1);
    s->partial = malloc(dl + sizeof ".partial");
    if (!s->partial) {
        share_free(w, s);
        return exo__error_set(EXO_ENOMEM, "out of memory for a transfer");
    }
    snprintf(s->partial, dl + sizeof ".partial", "%s.partial", dest);
    s->fd = open(s->partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int err = errno;
    struct stat st;
    if (s->fd < 0 || fstat(s->fd, &st) != 0) {
        share_free(w, s);
        return exo__error_set(EXO_EIO, "cannot open %s.partial: %s", dest, strerror(err));
    }
    /* A partial from an earlier try continues where it ends; the whole file
     * is hashed once it is complete, on the thread pool (its bytes are not
     * read on the loop thread). A partial as long as the file (or longer)
     * starts over: it failed its check or is not this file. */
    int64_t have = st.st_size;
    if (have >= size) {
        if (ftruncate(s->fd, 0) != 0) {
            err = errno;
            share_free(w, s);
            return exo__error_set(EXO_EIO, "cannot reset %s.partial: %s", dest, strerror(err));
        }
        have = 0;
    }
    s->resumed = have > 0;
    s->size = size;
    s->offset = have;
    memcpy(s->sha256, sha256_hex, 65);
    *offset = have;
    return EXO_OK;
}

/* Sends what the credit allows of a transfer we serve; ends it at the file's end. */
static void share_pump(exo_wire *w, wire_share *s)
{
    wire_conn *c = find_conn(w, s->conn);
    while (c && c->state == CONN_UP && s->offset < s->size && s->credit > 0) {
        int64_t n = s->size - s->offset;
        if (n > EXO_WIRE_MAX_CHUNK) n = EXO_WIRE_MAX_CHUNK;
        if (n > s->credit) n = s->credit;
        wire_write *ww = frame_alloc(EXO_WIRE_CHUNK, 0, EXO_WIRE_CHUNK_HEADER_SIZE + (size_t)n);
        if (!ww) return; /* out of memory: the next credit tries again */
        uint8_t *payload = ww->data + EXO_WIRE_HEADER_SIZE;
        exo__wire_encode_chunk(payload, s->id, (uint64_t)s->offset);
        ssize_t r = pread(s->fd, payload + EXO_WIRE_CHUNK_HEADER_SIZE, (size_t)n, s->offset);
        if (r != n) { /* the file shrank under us: stop; the receiver falls back to another source */
            free(ww);
            share_free(w, s);
            return;
        }
        if (frame_send(c, ww) != EXO_OK) return; /* the connection is closing: shares_conn_closed frees s */
        s->offset += n;
        s->credit -= n;
    }
    if (s->offset >= s->size) share_free(w, s);
}

int exo_wire_share_send(exo_wire *w, int conn, uint64_t transfer_id, const char *path, int64_t offset, int64_t size,
                        int64_t credit)
{
    if (!w || !path) return exo__error_set(EXO_EINVAL, "exo_wire_share_send: NULL argument");
    if (!up_conn(w, conn)) return EXO_ESTATE;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return exo__error_set(EXO_EIO, "cannot serve %s", path);
    }
    if (st.st_size != size || offset < 0 || offset > size) {
        close(fd);
        return exo__error_set(EXO_ERANGE, "the file is %lld bytes: %lld from offset %lld cannot be sent",
                             (long long)st.st_size, (long long)size, (long long)offset);
    }
    wire_share *s;
    int rc = share_new(w, conn, transfer_id, 1, &s);
    if (rc) {
        close(fd);
        return rc;
    }
    s->fd = fd;
    s->size = size;
    s->offset = offset;
    s->credit = credit < 0 ? 0 : credit > WIRE_MAX_SHARE_CREDIT ? WIRE_MAX_SHARE_CREDIT : credit;
    share_pump(w, s);
    return EXO_OK;
}

int exo_wire_share_credit(exo_wire *w, int conn, uint64_t transfer_id, int64_t bytes)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_share_credit: NULL argument");
    wire_share *s = find_share(w, conn, transfer_id, 1);
    if (!s || bytes <= 0) return EXO_OK; /* finished or unknown: nothing to send */
    s->credit = s->credit + bytes > WIRE_MAX_SHARE_CREDIT ? WIRE_MAX_SHARE_CREDIT : s->credit + bytes;
    share_pump(w, s);
    return EXO_OK;
}

int exo_wire_share_cancel(exo_wire *w, int conn, uint64_t transfer_id)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_share_cancel: NULL argument");
    for (int sending = 0; sending < 2; sending++) {
        wire_share *s = find_share(w, conn, transfer_id, sending);
        if (s) share_free(w, s);
    }
    return EXO_OK;
}

/* All bytes of a receiving transfer are on disk and s->got holds their
 * SHA-256: rename into place, or reject. Ends (frees) s. */
static void share_verified(exo_wire *w, wire_share *s)
{
    char why[300];
    if (strcmp(s->got, s->sha256) != 0) {
        unlink(s->partial); /* nothing of it can be trusted */
        snprintf(why, sizeof why, "hash mismatch: sha256 %.16s..., the peer promised %.16s... (the file was deleted)",
                 s->got[0] ? s->got : "(unreadable)", s->sha256);
        share_end(w, s, EXO_EFORMAT, why);
        return;
    }
    if (fsync(s->fd) != 0 || rename(s->partial, s->dest) != 0) {
        snprintf(why, sizeof why, "cannot move %s into place: %s", s->dest, strerror(errno));
        share_end(w, s, EXO_EIO, why);
        return;
    }
    share_end(w, s, EXO_OK, NULL);
}

static void verify_work(uv_work_t *req)
{
    wire_share *s = req->data;
    if (exo_wire_file_sha256(s->partial, s->got)) s->got[0] = 0;
}

static void verify_done(uv_work_t *req, int status)
{
    wire_share *s = req->data;
    exo_wire *w = NULL;
    (void)status;
    /* s is off the list; share_end's unlink finds nothing and frees it. */
    w = s->w_owner;
    if (!w->freeing) share_verified(w, s);
    else share_free(w, s);
    if (--w->open_handles == 0 && w->freeing) free(w);
}

/* A CHUNK from a peer. A chunk for no transfer of ours (one we cancelled,
 * or never asked for) is dropped; one out of place, past the announced size
 * or from another connection ends that transfer: the file is not what was
 * promised. */
static void deliver_chunk(wire_conn *from, const uint8_t *payload, size_t len)
{
    exo_wire *w = from->w;
    uint64_t id, offset;
    const uint8_t *data;
    size_t n;
    if (exo__wire_decode_chunk(payload, len, &id, &offset, &data, &n)) {
        conn_reject(from, exo_last_error());
        return;
    }
    wire_share *s = find_share(w, from->id, id, 0);
    if (!s) return;
    char why[200];
    if ((int64_t)offset != s->offset || (int64_t)(offset + n) > s->size) {
        snprintf(why, sizeof why, "the peer sent %zu bytes at offset %llu where %lld of %lld were expected", n,
                 (unsigned long long)offset, (long long)s->offset, (long long)s->size);
        share_end(w, s, EXO_EFORMAT, why);
        return;
    }
    for (size_t done = 0; done < n;) {
        ssize_t r = pwrite(s->fd, data + done, n - done, (off_t)offset + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(why, sizeof why, "cannot write %s.partial: %s (the partial file is kept)", s->dest,
                     r < 0 ? strerror(errno) : "no progress");
            share_end(w, s, EXO_EIO, why);
            return;
        }
        done += (size_t)r;
    }
    if (!s->resumed) EVP_DigestUpdate(s->md, data, n);
    s->offset += (int64_t)n;
    push_event(w, EXO_WIRE_EV_SHARE, from->id, id, s->offset, NULL, 0, NULL);
    if (s->offset < s->size) return;
    if (!s->resumed) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dn = 0;
        if (EVP_DigestFinal_ex(s->md, d, &dn) == 1 && dn == 32) to_hex(d, s->got);
        share_verified(w, s);
        return;
    }
    /* The verify job owns s from now on: off the list, so a closing
     * connection, a cancel or exo_wire_free leave it to verify_done. */
    for (wire_share **p = &w->shares; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            w->n_shares--;
            break;
        }
    s->verify.data = s;
    int rc = uv_queue_work(w->loop, &s->verify, verify_work, verify_done);
    if (rc) {
        s->next = w->shares; /* back on the list, to be ended as usual */
        w->shares = s;
        w->n_shares++;
        snprintf(why, sizeof why, "cannot hash the file: %s (the partial file is kept)", uv_strerror(rc));
        share_end(w, s, EXO_EIO, why);
        return;
    }
    w->open_handles++;
}

/* ---- hidden-state encodings ------------------------------------------------ */

void exo__wire_pack_rows(uint32_t dtype, const float *x, int n_rows, int row_len, uint8_t *out)
{
    size_t n = (size_t)n_rows * row_len;
    if (dtype == EXO_DTYPE_F32) {
        memcpy(out, x, n * 4);
    } else if (dtype == EXO_DTYPE_F16) {
        for (size_t i = 0; i < n; i++) {
            exo_half h = exo__float_to_half(x[i]);
            memcpy(out + 2 * i, &h, 2);
        }
    } else { /* Q8_0: blocks of 32 with an fp16 scale, as the weights use */
        for (size_t b = 0; b < n / 32; b++) {
            const float *v = x + 32 * b;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
            float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
            exo_half hd = exo__float_to_half(d);
            uint8_t *blk = out + 34 * b;
            memcpy(blk, &hd, 2);
            for (int i = 0; i < 32; i++) blk[2 + i] = (uint8_t)(int8_t)lrintf(v[i] * id);
        }
    }
}

void exo__wire_unpack_rows(uint32_t dtype, const uint8_t *in, int n_rows, int row_len, float *x)
{
    size_t n = (size_t)n_rows * row_len;
    if (dtype == EXO_DTYPE_F32) {
        memcpy(x, in, n * 4);
    } else if (dtype == EXO_DTYPE_F16) {
        for (size_t i = 0; i < n; i++) {
            exo_half h;
            memcpy(&h, in + 2 * i, 2);
            x[i] = exo__half_to_float(h);
        }
    } else {
        for (size_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = in + 34 * b;
            exo_half hd;
            memcpy(&hd, blk, 2);
            float d = exo__half_to_float(hd);
            for (int i = 0; i < 32; i++) x[32 * b + i] = d * (float)(int8_t)blk[2 + i];
        }
    }
}

/* ---- routes ---------------------------------------------------------------- */

static wire_route *find_route(exo_wire *w, uint64_t id)
{
    for (wire_route *r = w->routes; r; r = r->next)
        if (r->id == id && !r->closed) return r;
    return NULL;
}

static void route_free(wire_route *r)
{
    if (r->seq) exo_seq_free(r->seq);
    free(r->tokens);
    free(r->hidden);
    free(r->out);
    free(r);
}

static void route_unlink(exo_wire *w, wire_route *r)
{
    for (wire_route **p = &w->routes; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            w->n_routes--;
            w->stats.routes--;
            return;
        }
}

static void route_fail(exo_wire *w, wire_route *r, uint64_t request_id, const char *fmt, const char *detail)
{
    char msg[400];
    snprintf(msg, sizeof msg, fmt, detail);
    (void)r;
    push_text_event(w, EXO_WIRE_EV_FAILED, 0, request_id, msg);
}

/* Engine thread: a finished route waits, staged, for the rest of its pass. */
static void route_done(void *ctx, int status, const char *err, uint64_t compute_ns)
{
    wire_route *r = ctx;
    exo_wire *w = r->w;
    r->status = status;
    r->compute_ns = compute_ns;
    snprintf(r->err, sizeof r->err, "%s", status ? err : "");
    pthread_mutex_lock(&w->done_lock);
    r->done_next = NULL;
    if (w->staged_tail) w->staged_tail->done_next = r;
    else w->staged_head = r;
    w->staged_tail = r;
    pthread_mutex_unlock(&w->done_lock);
}

/* Engine thread: the pass has reported all its routes; hand them to the loop
 * together, so it sees the whole pass in one drain (and batches it). */
static void pass_end(void *ctx)
{
    exo_wire *w = ctx;
    pthread_mutex_lock(&w->done_lock);
    if (w->staged_head) {
        if (w->done_tail) w->done_tail->done_next = w->staged_head;
        else w->done_head = w->staged_head;
        w->done_tail = w->staged_tail;
        w->staged_head = w->staged_tail = NULL;
    }
    pthread_mutex_unlock(&w->done_lock);
    uv_async_send(&w->async);
}

/* A route's hidden states on to its next node as a TENSOR frame of its own. */
static void send_hidden(exo_wire *w, wire_route *r)
{
    exo_wire_tensor t = {.position = r->position, .dtype = r->wire_dtype, .n_rows = (uint32_t)r->n_rows,
                         .row_len = (uint32_t)r->info.n_embd, .flags = r->all_logits ? EXO_WIRE_TENSOR_ALL_LOGITS : 0};
    if (send_tensor(w, r->next_conn, r->id, &t, r->out))
        route_fail(w, r, r->id, "cannot pass hidden states on: %s", exo_last_error());
}

/* The routes' hidden states (n >= 2, one next connection, dtype and width)
 * in one TENSOR_BATCH frame of payload_len bytes. */
static void send_batch(exo_wire *w, wire_route **rs, int n, size_t payload_len)
{
    wire_conn *c = up_conn(w, rs[0]->next_conn);
    wire_write *ww = c ? frame_alloc(EXO_WIRE_TENSOR_BATCH, 0, payload_len) : NULL;
    if (!ww) {
        if (c) exo__error_set(EXO_ENOMEM, "out of memory for a tensor batch of %zu bytes", payload_len);
        for (int i = 0; i < n; i++) route_fail(w, rs[i], rs[i]->id, "cannot pass hidden states on: %s", exo_last_error());
        return;
    }
    exo_wire_batch b = {.dtype = rs[0]->wire_dtype, .row_len = (uint32_t)rs[0]->info.n_embd, .n_parts = (uint32_t)n};
    for (int i = 0; i < n; i++)
        b.parts[i] = (exo_wire_part){.request_id = rs[i]->id, .position = rs[i]->position,
                                     .n_rows = (uint32_t)rs[i]->n_rows,
                                     .flags = rs[i]->all_logits ? EXO_WIRE_TENSOR_ALL_LOGITS : 0};
    uint8_t *payload = ww->data + EXO_WIRE_HEADER_SIZE;
    exo__wire_encode_batch(payload, &b);
    uint8_t *rows = payload + EXO_WIRE_BATCH_HEADER_SIZE + (size_t)n * EXO_WIRE_BATCH_PART_SIZE;
    for (int i = 0; i < n; i++) {
        exo__wire_pack_rows(b.dtype, rs[i]->out, rs[i]->n_rows, (int)b.row_len, rows);
        rows += exo__wire_tensor_bytes(b.dtype, b.parts[i].n_rows, b.row_len);
    }
    w->stats.tensor_bytes_sent += payload_len;
    w->stats.batch_frames_sent++;
    w->stats.batch_parts_sent += (uint64_t)n;
    if (frame_send(c, ww))
        for (int i = 0; i < n; i++) route_fail(w, rs[i], rs[i]->id, "cannot pass hidden states on: %s", exo_last_error());
}

/* Hidden states that go to a peer able to read a batch: rs[0..n) are sent
 * grouped by next connection (and dtype and width), each group in frames of
 * at most EXO_WIRE_MAX_PARTS parts within the tensor limits; a group of one
 * keeps the TENSOR frame. */
static void send_grouped(exo_wire *w, wire_route **rs, int n)
{
    for (int i = 0; i < n; i++) {
        if (!rs[i]) continue;
        wire_route *group[EXO_WIRE_MAX_PARTS], *lead = rs[i];
        uint32_t dtype = lead->wire_dtype, row_len = (uint32_t)lead->info.n_embd;
        size_t bytes = EXO_WIRE_BATCH_HEADER_SIZE;
        uint32_t rows = 0;
        int k = 0;
        for (int j = i; j < n && k < (int)EXO_WIRE_MAX_PARTS; j++) {
            wire_route *r = rs[j];
            if (!r || r->next_conn != lead->next_conn || r->wire_dtype != dtype || (uint32_t)r->info.n_embd != row_len)
                continue;
            size_t part = EXO_WIRE_BATCH_PART_SIZE + exo__wire_tensor_bytes(dtype, (uint32_t)r->n_rows, row_len);
            if (r != lead && (bytes + part > EXO_WIRE_MAX_TENSOR || rows + (uint32_t)r->n_rows > EXO_WIRE_MAX_ROWS))
                continue; /* a later frame takes it (the lead always goes: it came in one frame) */
            group[k++] = r;
            rs[j] = NULL;
            bytes += part;
            rows += (uint32_t)r->n_rows;
        }
        if (k == 0) continue; /* not reached: the lead is always taken */
        if (k == 1) send_hidden(w, group[0]);
        else send_batch(w, group, k, bytes);
    }
}

/* Whether a finished route's hidden states may travel in a batch: they go
 * to a peer whose hello said it reads one. */
static int goes_in_batch(exo_wire *w, const wire_route *r)
{
    if (r->info.is_last || r->next_conn == 0) return 0;
    wire_conn *c = find_conn(w, r->next_conn);
    return c && c->state == CONN_UP && c->reads_batches;
}

/* Loop thread: results of finished passes go on to the next peer, or to Lua. */
static void on_routes_done(uv_async_t *a)
{
    exo_wire *w = a->data;
    pthread_mutex_lock(&w->done_lock);
    wire_route *r = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->done_lock);
    wire_route *batch[WIRE_MAX_ROUTES]; /* a route has one pass in flight: at most every route is here */
    int n_batch = 0;
    while (r) {
        wire_route *next = r->done_next;
        r->busy = 0;
        w->stats.in_flight--;
        if (r->closed) {
            route_free(r);
        } else if (r->status) {
            route_fail(w, r, r->id, "forward pass failed: %s", r->err);
        } else {
            if (r->info.is_last && r->next_conn == 0) {
                push_event(w, EXO_WIRE_EV_OUTPUT, 0, r->id, r->all_logits ? r->n_rows : 1, NULL, 0, NULL);
            } else if (r->info.is_last) {
                /* Logits go back to the asking node (a speculative verify it
                 * decides on itself), always as f32: the target's exact rows. */
                exo_wire_tensor t = {.position = r->position, .dtype = EXO_DTYPE_F32,
                                     .n_rows = (uint32_t)(r->all_logits ? r->n_rows : 1),
                                     .row_len = (uint32_t)r->info.n_vocab};
                if (send_tensor(w, r->next_conn, r->id + EXO_WIRE_REPLY_OFFSET, &t, r->out))
                    route_fail(w, r, r->id, "cannot send the logits back: %s", exo_last_error());
            } else if (goes_in_batch(w, r) && n_batch < WIRE_MAX_ROUTES) {
                batch[n_batch++] = r;
            } else {
                send_hidden(w, r);
            }
            w->stats.passes++;
            w->stats.pass_total_ns += uv_hrtime() - r->arrived_ns;
            w->stats.pass_compute_ns += r->compute_ns;
        }
        r = next;
    }
    send_grouped(w, batch, n_batch);
}

/* Rows for request_id from a peer (from NULL: from this node), checked
 * against its route and copied into the route's buffers: the route, ready
 * for its pass, or NULL when the rows went elsewhere (dropped, a collector's
 * logits handed to Lua) or fail the request. */
static wire_route *route_take(exo_wire *w, wire_conn *from, uint64_t request_id, const exo_wire_tensor *tp,
                              const uint8_t *data)
{
    const exo_wire_tensor t = *tp;
    wire_route *r = find_route(w, request_id);
    if (!r) {
        w->stats.tensors_dropped++;
        return NULL;
    }
    /* Rows come from the node before this one in the ring (or, for the
     * first, the asker and the last node): anyone else is ignored. */
    if (r->n_allowed) {
        int from_id = from ? from->id : 0, ok = 0;
        for (int i = 0; i < r->n_allowed; i++) ok |= r->allowed[i] == from_id;
        if (!ok) {
            w->stats.tensors_dropped++;
            return NULL;
        }
    }
    char detail[160];
    if (r->busy) {
        route_fail(w, r, request_id, "%s", "rows arrived while the previous pass was still running");
        return NULL;
    }
    if (r->collector) {
        if (t.dtype == EXO_WIRE_DTYPE_I32 || t.row_len != (uint32_t)r->info.n_vocab) {
            snprintf(detail, sizeof detail, "dtype %u rows of %u where logits of %d were expected", t.dtype,
                     t.row_len, r->info.n_vocab);
            route_fail(w, r, request_id, "logits do not fit: %s", detail);
            return NULL;
        }
        if (exo_grow(&r->out, &r->out_cap, (size_t)t.n_rows * t.row_len, sizeof(float))) {
            route_fail(w, r, request_id, "%s", "out of memory for the route's rows");
            return NULL;
        }
        exo__wire_unpack_rows(t.dtype, data, (int)t.n_rows, (int)t.row_len, r->out);
        r->position = t.position;
        r->n_rows = (int)t.n_rows;
        r->all_logits = 1;
        push_event(w, EXO_WIRE_EV_OUTPUT, 0, r->id, r->n_rows, NULL, 0, NULL);
        return NULL;
    }
    if (r->info.is_first ? t.dtype != EXO_WIRE_DTYPE_I32
                         : (t.dtype == EXO_WIRE_DTYPE_I32 || t.row_len != (uint32_t)r->info.n_embd)) {
        snprintf(detail, sizeof detail, "dtype %u rows of %u for a shard that takes %s", t.dtype, t.row_len,
                 r->info.is_first ? "token ids" : "hidden states");
        route_fail(w, r, request_id, "rows do not fit the shard: %s", detail);
        return NULL;
    }
    int pos = exo_seq_pos(r->seq);
    /* Rows at an earlier position roll the sequence back first: that is how
     * a speculative step's rejected drafts leave every shard's cache. */
    if (t.position < pos && exo_seq_truncate(r->seq, t.position) == EXO_OK) pos = t.position;
    if (t.position != pos || (int64_t)t.n_rows > exo_seq_n_ctx(r->seq) - pos) {
        snprintf(detail, sizeof detail, "%u rows at position %d, the sequence is at %d of %d", t.n_rows, t.position,
                 pos, exo_seq_n_ctx(r->seq));
        route_fail(w, r, request_id, "rows out of place: %s", detail);
        return NULL;
    }
    int all_logits = (t.flags & EXO_WIRE_TENSOR_ALL_LOGITS) != 0;
    size_t out_rows = r->info.is_last ? (all_logits ? t.n_rows : 1) : t.n_rows;
    size_t out_width = r->info.is_last ? (size_t)r->info.n_vocab : (size_t)r->info.n_embd;
    int oom = exo_grow(&r->out, &r->out_cap, out_rows * out_width, sizeof(float));
    if (!oom && r->info.is_first) {
        oom = exo_grow(&r->tokens, &r->tokens_cap, t.n_rows, sizeof(int32_t));
        if (!oom) memcpy(r->tokens, data, (size_t)t.n_rows * 4);
    } else if (!oom) {
        oom = exo_grow(&r->hidden, &r->hidden_cap, (size_t)t.n_rows * t.row_len, sizeof(float));
        if (!oom) exo__wire_unpack_rows(t.dtype, data, (int)t.n_rows, (int)t.row_len, r->hidden);
    }
    if (oom) {
        route_fail(w, r, request_id, "%s", "out of memory for the route's rows");
        return NULL;
    }
    r->arrived_ns = uv_hrtime();
    r->position = t.position;
    r->n_rows = (int)t.n_rows;
    r->all_logits = all_logits;
    return r;
}

/* Starts the passes of n routes route_take made ready, queued side by side
 * so the engine runs those of one shard as one pass. */
static void routes_submit(exo_wire *w, wire_route **rs, int n)
{
    exo_engine_cb_job jobs[EXO_WIRE_MAX_PARTS];
    if (n < 1) return;
    for (int i = 0; i < n; i++) {
        wire_route *r = rs[i];
        jobs[i] = (exo_engine_cb_job){.shard = r->shard, .seq = r->seq, .tokens = r->info.is_first ? r->tokens : NULL,
                                      .hidden = r->info.is_first ? NULL : r->hidden, .n_tokens = r->n_rows,
                                      .all_logits = r->all_logits, .out = r->out, .done = route_done, .done_ctx = r};
    }
    if (exo__engine_submit_cb_many(jobs, n, pass_end, w)) {
        for (int i = 0; i < n; i++) route_fail(w, rs[i], rs[i]->id, "cannot start the forward pass: %s", exo_last_error());
        return;
    }
    for (int i = 0; i < n; i++) rs[i]->busy = 1;
    w->stats.in_flight += n;
}

/* Rows for request_id from a peer (from NULL: from this node). Structural
 * errors were caught by the frame decoder and close the connection; rows that
 * do not fit the route fail only that request. */
static void deliver_tensor(exo_wire *w, wire_conn *from, uint64_t request_id, const uint8_t *payload, size_t len)
{
    exo_wire_tensor t;
    const uint8_t *data;
    if (exo__wire_decode_tensor(payload, len, &t, &data)) {
        if (from) conn_reject(from, exo_last_error());
        return;
    }
    wire_route *r = route_take(w, from, request_id, &t, data);
    if (r) routes_submit(w, &r, 1);
}

/* A TENSOR_BATCH: a malformed one closes the connection as a TENSOR does;
 * each part then meets its route as a frame of its own would (dropped, or
 * failing its request only), and the parts that fit go to the engine
 * together. */
static void deliver_batch(exo_wire *w, wire_conn *from, const uint8_t *payload, size_t len)
{
    exo_wire_batch b;
    if (exo__wire_decode_batch(payload, len, &b)) {
        conn_reject(from, exo_last_error());
        return;
    }
    w->stats.batch_frames_received++;
    wire_route *ready[EXO_WIRE_MAX_PARTS];
    int n = 0;
    for (uint32_t i = 0; i < b.n_parts; i++) {
        const exo_wire_part *p = &b.parts[i];
        exo_wire_tensor t = {.position = p->position, .dtype = b.dtype, .n_rows = p->n_rows, .row_len = b.row_len,
                             .flags = p->flags};
        wire_route *r = route_take(w, from, p->request_id, &t, p->data);
        if (r) ready[n++] = r;
    }
    routes_submit(w, ready, n);
}

int exo_wire_route_open(exo_wire *w, uint64_t request_id, exo_shard *s, exo_seq *q, int next_conn, int wire_dtype)
{
    if (!w || !s || !q) return exo__error_set(EXO_EINVAL, "exo_wire_route_open: NULL argument");
    if (find_route(w, request_id)) return exo__error_set(EXO_ESTATE, "request %llu already has a route",
                                                        (unsigned long long)request_id);
    if (w->n_routes >= WIRE_MAX_ROUTES) return exo__error_set(EXO_EAGAIN, "too many requests in flight");
    if (wire_dtype != EXO_DTYPE_F32 && wire_dtype != EXO_DTYPE_F16 && wire_dtype != EXO_DTYPE_Q8_0)
        return exo__error_set(EXO_ENOTSUP, "wire dtype %d (f32, f16 or q8_0 are)", wire_dtype);
    wire_route *r = calloc(1, sizeof *r);
    if (!r) return exo__error_set(EXO_ENOMEM, "out of memory for a route");
    int rc = exo_shard_get_info(s, &r->info);
    if (rc) {
        free(r);
        return rc;
    }
    if (wire_dtype == EXO_DTYPE_Q8_0 && r->info.n_embd % 32) {
        int n_embd = r->info.n_embd;
        free(r);
        return exo__error_set(EXO_ENOTSUP, "q8_0 on the wire needs a width that is a multiple of 32, not %d", n_embd);
    }
    r->w = w;
    r->id = request_id;
    r->shard = s;
    r->seq = q;
    r->next_conn = next_conn;
    r->wire_dtype = (uint32_t)wire_dtype;
    r->next = w->routes;
    w->routes = r;
    w->n_routes++;
    w->stats.routes++;
    return EXO_OK;
}

int exo_wire_route_allow(exo_wire *w, uint64_t request_id, int conn)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_route_allow: NULL argument");
    wire_route *r = find_route(w, request_id);
    if (!r) return exo__error_set(EXO_ESTATE, "request %llu has no route", (unsigned long long)request_id);
    if (r->n_allowed == (int)(sizeof r->allowed / sizeof r->allowed[0]))
        return exo__error_set(EXO_ERANGE, "a route takes rows from at most 4 connections");
    r->allowed[r->n_allowed++] = conn;
    return EXO_OK;
}

int exo_wire_collect_open(exo_wire *w, uint64_t request_id, int n_vocab)
{
    if (!w || n_vocab < 1) return exo__error_set(EXO_EINVAL, "exo_wire_collect_open: bad arguments");
    if (find_route(w, request_id)) return exo__error_set(EXO_ESTATE, "request %llu already has a route",
                                                        (unsigned long long)request_id);
    if (w->n_routes >= WIRE_MAX_ROUTES) return exo__error_set(EXO_EAGAIN, "too many requests in flight");
    wire_route *r = calloc(1, sizeof *r);
    if (!r) return exo__error_set(EXO_ENOMEM, "out of memory for a route");
    r->w = w;
    r->id = request_id;
    r->collector = 1;
    r->info.is_last = 1;
    r->info.n_vocab = n_vocab;
    r->next = w->routes;
    w->routes = r;
    w->n_routes++;
    w->stats.routes++;
    return EXO_OK;
}

int exo_wire_route_close(exo_wire *w, uint64_t request_id)
{
    if (!w) return exo__error_set(EXO_EINVAL, "exo_wire_route_close: NULL argument");
    wire_route *r = find_route(w, request_id);
    if (!r) return EXO_OK;
    route_unlink(w, r);
    r->closed = 1;
    if (!r->busy) route_free(r); /* else on_routes_done frees it */
    return EXO_OK;
}

int exo_wire_route_output(exo_wire *w, uint64_t request_id, const float **logits, int *n_rows, int *position)
{
    if (!w || !logits || !n_rows || !position) return exo__error_set(EXO_EINVAL, "exo_wire_route_output: NULL argument");
    wire_route *r = find_route(w, request_id);
    if (!r) return exo__error_set(EXO_ESTATE, "request %llu has no route", (unsigned long long)request_id);
    if (!r->info.is_last || r->busy || !r->out)
        return exo__error_set(EXO_ESTATE, "request %llu has no logits ready", (unsigned long long)request_id);
    *logits = r->out;
    *n_rows = r->all_logits ? r->n_rows : 1;
    *position = r->all_logits ? r->position : r->position + r->n_rows - 1;
    return EXO_OK;
}

int exo_wire_get_stats(const exo_wire *w, exo_wire_stats *out)
{
    if (!w || !out) return exo__error_set(EXO_EINVAL, "exo_wire_get_stats: NULL argument");
    *out = w->stats;
    return EXO_OK;
}

/* ---- the transport -------------------------------------------------------- */

/* Connections that never say hello are closed, so an idle socket cannot hold
 * a slot forever. */
static void on_timer(uv_timer_t *t)
{
    exo_wire *w = t->data;
    uint64_t now = uv_now(w->loop);
    for (wire_conn *c = w->conns, *next; c; c = next) {
        next = c->next; /* conn_release frees c only in the close callback, later */
        if ((c->state == CONN_AUTH || c->state == CONN_HELLO) && now - c->opened_ms > WIRE_HELLO_TIMEOUT_MS)
            conn_reject(c, c->state == CONN_AUTH ? "no AUTH within 10 s" : "no hello within 10 s");
        else if (c->state == CONN_CLOSING && now - c->closing_ms > WIRE_SHUTDOWN_TIMEOUT_MS) conn_release(c);
    }
}

int exo_wire_new(void *uv_loop, const char *hello, size_t hello_len, exo_wire **out)
{
    if (!out || (!hello && hello_len)) return exo__error_set(EXO_EINVAL, "exo_wire_new: NULL argument");
    uv_loop_t *loop = uv_loop ? uv_loop : host_loop;
    if (!loop) return exo__error_set(EXO_ESTATE, "no event loop: the host did not call exo_runtime_set_loop");
    if (hello_len > EXO_WIRE_MAX_HELLO)
        return exo__error_set(EXO_ENOMEM, "hello of %zu bytes is over the %u-byte limit", hello_len, EXO_WIRE_MAX_HELLO);
    exo_wire *w = calloc(1, sizeof *w);
    if (!w) return exo__error_set(EXO_ENOMEM, "out of memory for the wire");
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0 || hello_with_features(hello ? hello : "", hello_len, &w->hello, &w->hello_len) != EXO_OK) {
        if (w->efd >= 0) close(w->efd);
        free(w);
        return exo__error_set(EXO_EIO, "cannot set up the wire (memory or eventfd)");
    }
    w->loop = loop;
    w->next_conn_id = 1;
    pthread_mutex_init(&w->done_lock, NULL);
    uv_async_init(loop, &w->async, on_routes_done);
    w->async.data = w;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_timer, 1000, 1000);
    uv_unref((uv_handle_t *)&w->timer);
    w->open_handles = 2;
    *out = w;
    return EXO_OK;
}

int exo_wire_set_key(exo_wire *w, const char *key, size_t len)
{
    if (!w || !key) return exo__error_set(EXO_EINVAL, "exo_wire_set_key: NULL argument");
    if (w->conns || w->listening) return exo__error_set(EXO_ESTATE, "the cluster key is set before listening or dialing");
    int rc = exo__seal_key_derive(key, len, &w->key);
    if (rc) return rc;
    w->keyed = 1;
    w->stats.keyed = 1;
    return EXO_OK;
}

int exo_wire_announce_seal(const exo_wire *w, const char *json, size_t len, uint8_t *out, size_t cap,
                           size_t *out_len)
{
    if (!w || !json || !out || !out_len) return exo__error_set(EXO_EINVAL, "exo_wire_announce_seal: NULL argument");
    return exo__announce_seal(w->keyed ? &w->key : NULL, json, len, out, cap, out_len);
}

int exo_wire_announce_open(const exo_wire *w, const uint8_t *dgram, size_t len, char *json, size_t cap,
                           size_t *json_len)
{
    if (!w || (!dgram && len) || !json || !json_len)
        return exo__error_set(EXO_EINVAL, "exo_wire_announce_open: NULL argument");
    return exo__announce_open(w->keyed ? &w->key : NULL, dgram, len, json, cap, json_len);
}

int exo_wire_set_hello(exo_wire *w, const char *hello, size_t hello_len)
{
    if (!w || (!hello && hello_len)) return exo__error_set(EXO_EINVAL, "exo_wire_set_hello: NULL argument");
    if (hello_len > EXO_WIRE_MAX_HELLO)
        return exo__error_set(EXO_ENOMEM, "hello of %zu bytes is over the %u-byte limit", hello_len, EXO_WIRE_MAX_HELLO);
    char *copy = NULL;
    size_t len = 0;
    int rc = hello_with_features(hello ? hello : "", hello_len, &copy, &len);
    if (rc) return rc;
    free(w->hello);
    w->hello = copy;
    w->hello_len = len;
    return EXO_OK;
}

void exo_wire_free(exo_wire *w)
{
    if (!w) return;
    w->freeing = 1;
    for (wire_conn *c = w->conns; c; c = c->next) {
        c->state = CONN_CLOSING;
        conn_release(c); /* a pending connect or shutdown is cancelled; its callback sees the handle closing */
    }
    /* Passes still running use routes, sequences and this struct: wait them
     * out, then take back what finished without the loop seeing it. */
    exo_engine_wait_idle();
    pthread_mutex_lock(&w->done_lock);
    wire_route *done = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->done_lock);
    for (wire_route *next; done; done = next) {
        next = done->done_next;
        done->busy = 0;
        if (done->closed) route_free(done);
    }
    for (wire_route *r = w->routes, *next; r; r = next) {
        next = r->next;
        route_free(r);
    }
    w->routes = NULL;
    while (w->shares) share_free(w, w->shares);
    for (size_t i = 0; i < w->ev_count; i++) free(w->events[(w->ev_head + i) % w->ev_cap].data);
    free(w->events);
    free(w->last_data);
    free(w->hello);
    exo__seal_key_wipe(&w->key);
    close(w->efd);
    if (w->listening) uv_close((uv_handle_t *)&w->server, handle_closed);
    uv_close((uv_handle_t *)&w->async, handle_closed);
    uv_close((uv_handle_t *)&w->timer, handle_closed);
}
