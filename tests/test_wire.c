/* test_wire.c: wire frames and the transport between two nodes in one process.
 *
 * The frame decoder refuses every malformed header and tensor payload with
 * the right code; hidden states survive the f16 and q8_0 encodings within
 * their precision; and two transports on one loop say hello, exchange control
 * frames and pings, and run the tiny model split in two ([0,2) here, [2,4)
 * there) with tensor frames alone, giving the same logits bit for bit as the
 * whole model in one piece. A raw socket sending garbage is refused and
 * disconnected while the other connection keeps working. Keyed clusters:
 * the seal's handshake and frames refuse replays, reordering, tampering and
 * strangers who copy the key id; keyed transports admit a peer with the key
 * and refuse an open node and another key's node, each side saying why.
 * Model files (CHUNK frames): the chunk decoder's bounds; a transfer never
 * runs past its credit, lands verified, resumes from a partial, and a wrong
 * hash or bytes out of place end it with the file rejected. Batches
 * (TENSOR_BATCH): the decoder refuses every malformed field; a pass the
 * engine ran for four routes crosses to the next transport as one frame whose
 * parts run there as one pass, each answer equal to its solo run, while a
 * peer whose hello does not list the feature gets one TENSOR frame a request. */
#define _GNU_SOURCE /* memmem */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "../native/engine.h"
#include "../native/error.h"
#include "../native/exo.h"
#include "../native/seal.h"
#include "../native/wire.h"
#include "check.h"

/* ---- frames ---------------------------------------------------------------- */

static void test_header(void)
{
    uint8_t buf[EXO_WIRE_HEADER_SIZE];
    exo_wire_header h;
    exo__wire_encode_header(buf, EXO_WIRE_CONTROL, 0x1122334455667788ULL, 42);
    CHECK(exo__wire_decode_header(buf, sizeof buf - 1, 0, &h) == 0); /* needs more */
    CHECK(exo__wire_decode_header(buf, sizeof buf, 0, &h) == EXO_WIRE_HEADER_SIZE);
    CHECK(h.type == EXO_WIRE_CONTROL && h.request_id == 0x1122334455667788ULL && h.payload_len == 42);
    CHECK(memcmp(buf, "EXOW", 4) == 0); /* the magic reads as text on the wire */

    uint8_t bad[EXO_WIRE_HEADER_SIZE];
    memcpy(bad, buf, sizeof bad);
    bad[0] = 'G';
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_EFORMAT);
    memcpy(bad, buf, sizeof bad);
    bad[4] = 3; /* version 3 */
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_ENOTSUP);
    CHECK(strstr(exo_last_error(), "version 3") != NULL);
    memcpy(bad, buf, sizeof bad);
    bad[6] = 99; /* type */
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_EFORMAT);
    memcpy(bad, buf, sizeof bad);
    bad[7] = 1; /* flags */
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_EFORMAT);
    exo__wire_encode_header(bad, EXO_WIRE_CONTROL, 1, EXO_WIRE_MAX_CONTROL + 1);
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_ENOMEM);
    exo__wire_encode_header(bad, EXO_WIRE_TENSOR, 1, 0xffffffffu);
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_ENOMEM);
    exo__wire_encode_header(bad, EXO_WIRE_PING, 0, 7);
    CHECK(exo__wire_decode_header(bad, sizeof bad, 0, &h) == EXO_EFORMAT);
}

static void test_tensor_payload(void)
{
    uint8_t buf[EXO_WIRE_TENSOR_HEADER_SIZE + 64 * 4];
    exo_wire_tensor t = {.position = 5, .dtype = EXO_DTYPE_F32, .n_rows = 2, .row_len = 32}, d;
    const uint8_t *data;
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, sizeof buf, &d, &data) == 0);
    CHECK(d.position == 5 && d.n_rows == 2 && d.row_len == 32 && data == buf + EXO_WIRE_TENSOR_HEADER_SIZE);
    CHECK(exo__wire_decode_tensor(buf, sizeof buf - 1, &d, &data) == EXO_EFORMAT);     /* truncated */
    CHECK(exo__wire_decode_tensor(buf, 10, &d, &data) == EXO_EFORMAT);                /* shorter than its header */
    t.n_rows = 3; /* shape says more than the payload holds */
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, sizeof buf, &d, &data) == EXO_EFORMAT);
    t = (exo_wire_tensor){.dtype = 7, .n_rows = 1, .row_len = 32}; /* not a wire dtype */
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, EXO_WIRE_TENSOR_HEADER_SIZE + 128, &d, &data) == EXO_EFORMAT);
    t = (exo_wire_tensor){.dtype = EXO_DTYPE_Q8_0, .n_rows = 1, .row_len = 33};
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, EXO_WIRE_TENSOR_HEADER_SIZE + 34, &d, &data) == EXO_EFORMAT);
    t = (exo_wire_tensor){.dtype = EXO_WIRE_DTYPE_I32, .n_rows = 2, .row_len = 2};
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, EXO_WIRE_TENSOR_HEADER_SIZE + 16, &d, &data) == EXO_EFORMAT);
    t = (exo_wire_tensor){.position = -1, .dtype = EXO_WIRE_DTYPE_I32, .n_rows = 1, .row_len = 1};
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, EXO_WIRE_TENSOR_HEADER_SIZE + 4, &d, &data) == EXO_EFORMAT);
    t = (exo_wire_tensor){.dtype = EXO_DTYPE_F32, .n_rows = 0, .row_len = 1};
    exo__wire_encode_tensor(buf, &t);
    CHECK(exo__wire_decode_tensor(buf, EXO_WIRE_TENSOR_HEADER_SIZE, &d, &data) == EXO_EFORMAT);
    /* Shapes whose byte count would overflow 32 bits are refused, not wrapped. */
    CHECK(exo__wire_tensor_bytes(EXO_DTYPE_F32, 65536, 1u << 20) == (size_t)65536 * 4 * (1u << 20));
    CHECK(exo__wire_tensor_bytes(EXO_DTYPE_F32, 65537, 1) == 0);
}

static void test_chunk_payload(void)
{
    uint8_t buf[EXO_WIRE_CHUNK_HEADER_SIZE + 8] = {0};
    exo_wire_header h;
    uint64_t id, off;
    const uint8_t *data;
    size_t n;
    exo__wire_encode_chunk(buf, 7, 4096);
    CHECK(exo__wire_decode_chunk(buf, sizeof buf, &id, &off, &data, &n) == 0);
    CHECK(id == 7 && off == 4096 && n == 8 && data == buf + EXO_WIRE_CHUNK_HEADER_SIZE);
    CHECK(exo__wire_decode_chunk(buf, EXO_WIRE_CHUNK_HEADER_SIZE, &id, &off, &data, &n) == EXO_EFORMAT); /* no bytes */
    CHECK(exo__wire_decode_chunk(buf, 3, &id, &off, &data, &n) == EXO_EFORMAT);
    exo__wire_encode_chunk(buf, 7, 1ULL << 63); /* an offset no file has (offset + n could wrap) */
    CHECK(exo__wire_decode_chunk(buf, sizeof buf, &id, &off, &data, &n) == EXO_EFORMAT);
    uint8_t hb[EXO_WIRE_HEADER_SIZE];
    exo__wire_encode_header(hb, EXO_WIRE_CHUNK, 0, EXO_WIRE_CHUNK_HEADER_SIZE + EXO_WIRE_MAX_CHUNK);
    CHECK(exo__wire_decode_header(hb, sizeof hb, 0, &h) == EXO_WIRE_HEADER_SIZE);
    exo__wire_encode_header(hb, EXO_WIRE_CHUNK, 0, EXO_WIRE_CHUNK_HEADER_SIZE + EXO_WIRE_MAX_CHUNK + 1);
    CHECK(exo__wire_decode_header(hb, sizeof hb, 0, &h) == EXO_ENOMEM);
}

/* A batch of two F32 parts (2 rows and 1 of 32), rows filled in. */
static size_t make_batch(uint8_t *buf, exo_wire_batch *b)
{
    *b = (exo_wire_batch){.dtype = EXO_DTYPE_F32, .row_len = 32, .n_parts = 2};
    b->parts[0] = (exo_wire_part){.request_id = 7, .position = 3, .n_rows = 2};
    b->parts[1] = (exo_wire_part){.request_id = 9, .position = 0, .n_rows = 1, .flags = EXO_WIRE_TENSOR_ALL_LOGITS};
    size_t n = exo__wire_batch_bytes(b);
    exo__wire_encode_batch(buf, b);
    size_t table = EXO_WIRE_BATCH_HEADER_SIZE + 2 * EXO_WIRE_BATCH_PART_SIZE;
    for (size_t i = table; i < n; i++) buf[i] = (uint8_t)i;
    return n;
}

/* Sets the u32 at off of a good batch, and whether it still decodes. */
static int batch_with(size_t off, uint32_t v, size_t len_delta)
{
    static uint8_t buf[512];
    exo_wire_batch b;
    size_t n = make_batch(buf, &b);
    for (int i = 0; i < 4; i++) buf[off + i] = (uint8_t)(v >> 8 * i);
    return exo__wire_decode_batch(buf, n + len_delta, &b);
}

static void test_batch_payload(void)
{
    uint8_t buf[512];
    exo_wire_batch b, d;
    size_t n = make_batch(buf, &b);
    size_t table = EXO_WIRE_BATCH_HEADER_SIZE + 2 * EXO_WIRE_BATCH_PART_SIZE;
    CHECK(n == table + 3 * 32 * 4);
    CHECK(exo__wire_decode_batch(buf, n, &d) == 0);
    CHECK(d.dtype == EXO_DTYPE_F32 && d.row_len == 32 && d.n_parts == 2);
    CHECK(d.parts[0].request_id == 7 && d.parts[0].position == 3 && d.parts[0].n_rows == 2 && d.parts[0].flags == 0);
    CHECK(d.parts[1].request_id == 9 && d.parts[1].n_rows == 1 && d.parts[1].flags == EXO_WIRE_TENSOR_ALL_LOGITS);
    CHECK(d.parts[0].data == buf + table && d.parts[1].data == buf + table + 2 * 32 * 4);

    /* Every field, one at a time (offsets: header 0..16, part 0 at 16, part 1 at 40). */
    size_t p0 = EXO_WIRE_BATCH_HEADER_SIZE, p1 = p0 + EXO_WIRE_BATCH_PART_SIZE;
    CHECK(batch_with(0, 7, 0) == EXO_EFORMAT);                     /* not a wire dtype */
    CHECK(batch_with(0, EXO_DTYPE_Q8_0, 0) == EXO_EFORMAT);        /* rows no longer match the bytes */
    CHECK(batch_with(4, 33, 0) == EXO_EFORMAT);                    /* row_len */
    CHECK(batch_with(4, 0, 0) == EXO_EFORMAT);
    CHECK(batch_with(8, 0, 0) == EXO_EFORMAT);                     /* no parts */
    CHECK(batch_with(8, EXO_WIRE_MAX_PARTS + 1, 0) == EXO_EFORMAT); /* too many parts */
    CHECK(batch_with(8, 3, 0) == EXO_EFORMAT);                     /* a part more than the table holds */
    CHECK(batch_with(12, 1, 0) == EXO_EFORMAT);                    /* reserved */
    CHECK(batch_with(p0, 0, 0) == EXO_EFORMAT);                    /* request 0 is the connection's */
    CHECK(batch_with(p0 + 4, 1u << 21, 0) == EXO_EFORMAT);         /* request 2^53 */
    CHECK(batch_with(p1, 7, 0) == EXO_EFORMAT);                    /* request 7 twice */
    CHECK(strstr(exo_last_error(), "twice") != NULL);
    CHECK(batch_with(p0 + 8, 0xffffffffu, 0) == EXO_EFORMAT);      /* negative position */
    CHECK(batch_with(p0 + 12, 0, 0) == EXO_EFORMAT);               /* no rows */
    CHECK(batch_with(p0 + 12, 3, 0) == EXO_EFORMAT);               /* more rows than bytes */
    CHECK(batch_with(p0 + 12, 1, 0) == EXO_EFORMAT);               /* fewer: bytes left over */
    CHECK(batch_with(p1 + 16, 2, 0) == EXO_EFORMAT);               /* unknown flag */
    CHECK(batch_with(p1 + 20, 1, 0) == EXO_EFORMAT);               /* part reserved */
    CHECK(batch_with(p0, 7, (size_t)-1) == EXO_EFORMAT);           /* one byte short */
    CHECK(batch_with(p0, 7, 1) == EXO_EFORMAT);                    /* one byte over */
    CHECK(batch_with(p0, 7, 0) == 0);                              /* the helper's own frame is good */
    CHECK(exo__wire_decode_batch(buf, 15, &d) == EXO_EFORMAT);     /* shorter than its header */
    CHECK(exo__wire_decode_batch(buf, table - 1, &d) == EXO_EFORMAT); /* table cut short */

    /* Rows in all: two parts of token ids, 65536 and 1 rows. */
    size_t big = EXO_WIRE_BATCH_HEADER_SIZE + 2 * EXO_WIRE_BATCH_PART_SIZE + (size_t)(EXO_WIRE_MAX_ROWS + 1) * 4;
    uint8_t *many = calloc(1, big);
    exo_wire_batch m = {.dtype = EXO_WIRE_DTYPE_I32, .row_len = 1, .n_parts = 2};
    m.parts[0] = (exo_wire_part){.request_id = 1, .n_rows = EXO_WIRE_MAX_ROWS};
    m.parts[1] = (exo_wire_part){.request_id = 2, .n_rows = 1};
    exo__wire_encode_batch(many, &m);
    CHECK(exo__wire_decode_batch(many, big, &d) == EXO_EFORMAT);
    m.parts[0].n_rows = EXO_WIRE_MAX_ROWS - 1; /* 65536 in all: allowed */
    exo__wire_encode_batch(many, &m);
    CHECK(exo__wire_decode_batch(many, big - 4, &d) == 0);
    free(many);

    /* The header: request id 0, the TENSOR's limit. */
    uint8_t hb[EXO_WIRE_HEADER_SIZE];
    exo_wire_header h;
    exo__wire_encode_header(hb, EXO_WIRE_TENSOR_BATCH, 0, (uint32_t)n);
    CHECK(exo__wire_decode_header(hb, sizeof hb, 0, &h) == EXO_WIRE_HEADER_SIZE && h.type == EXO_WIRE_TENSOR_BATCH);
    exo__wire_encode_header(hb, EXO_WIRE_TENSOR_BATCH, 5, (uint32_t)n);
    CHECK(exo__wire_decode_header(hb, sizeof hb, 0, &h) == EXO_EFORMAT);
    exo__wire_encode_header(hb, EXO_WIRE_TENSOR_BATCH, 0, EXO_WIRE_MAX_TENSOR + 1);
    CHECK(exo__wire_decode_header(hb, sizeof hb, 0, &h) == EXO_ENOMEM);
}

static void test_encodings(void)
{
    enum { N = 256 };
    float x[N], y[N];
    uint8_t packed[N * 4];
    for (int i = 0; i < N; i++) x[i] = sinf(0.37f * i) * (1 + i % 7);
    const uint32_t dtypes[] = {EXO_DTYPE_F32, EXO_DTYPE_F16, EXO_DTYPE_Q8_0};
    const double tol[] = {0, 1e-6, 1e-3};
    for (int k = 0; k < 3; k++) {
        exo__wire_pack_rows(dtypes[k], x, 2, N / 2, packed);
        exo__wire_unpack_rows(dtypes[k], packed, 2, N / 2, y);
        double num = 0, den = 0;
        for (int i = 0; i < N; i++) {
            num += (double)(x[i] - y[i]) * (x[i] - y[i]);
            den += (double)x[i] * x[i];
        }
        CHECK_MSG(num / den <= tol[k], "dtype %u round trip nmse %g", dtypes[k], num / den);
    }
}

/* ---- two transports on one loop ------------------------------------------------ */

#define MAX_SEEN 64

typedef struct seen {
    int n;
    exo_wire_event ev[MAX_SEEN];
    char data[MAX_SEEN][256];
} seen;

static void drain(exo_wire *w, seen *s)
{
    exo_wire_event ev;
    while (exo_wire_next_event(w, &ev) == 1) {
        if (s->n == MAX_SEEN) continue;
        s->ev[s->n] = ev;
        snprintf(s->data[s->n], sizeof s->data[0], "%.*s", (int)ev.len, ev.data);
        s->ev[s->n].data = s->data[s->n];
        s->n++;
    }
}

static int count(const seen *s, int type)
{
    int n = 0;
    for (int i = 0; i < s->n; i++) n += s->ev[i].type == type;
    return n;
}

static const exo_wire_event *last_of(const seen *s, int type)
{
    for (int i = s->n - 1; i >= 0; i--)
        if (s->ev[i].type == type) return &s->ev[i];
    return NULL;
}

/* Runs the loop until want(type) events of that type are seen on w, or 5 s. */
static int run_until(uv_loop_t *loop, exo_wire *a, seen *sa, exo_wire *b, seen *sb, seen *target, int type,
                     int want)
{
    uint64_t start = uv_hrtime();
    while (count(target, type) < want) {
        uv_run(loop, UV_RUN_NOWAIT);
        drain(a, sa);
        drain(b, sb);
        if (uv_hrtime() - start > 5000000000ULL) return 0;
        usleep(200);
    }
    return 1;
}

static exo_shard *load(const char *path, int start, int end)
{
    exo_shard *s = NULL;
    int rc = exo_shard_load(path, start, end, -1, -1, &s);
    CHECK_MSG(rc == 0, "load %s [%d,%d): %s", path, start, end, exo_last_error());
    return s;
}

typedef struct raw_client {
    uv_tcp_t tcp;
    uv_connect_t req;
    uv_write_t write;
    const char *garbage;
    int closed;
} raw_client;

static void raw_closed(uv_handle_t *h) { ((raw_client *)h->data)->closed = 1; }
static void raw_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
    (void)h;
    static char space[4096];
    *buf = uv_buf_init(space, n < sizeof space ? (unsigned)n : sizeof space);
}
static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    if (n < 0) uv_close((uv_handle_t *)s, raw_closed);
}
static void raw_connected(uv_connect_t *req, int status)
{
    raw_client *r = req->data;
    if (status < 0) {
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
        return;
    }
    uv_buf_t buf = uv_buf_init((char *)r->garbage, (unsigned)strlen(r->garbage));
    uv_write(&r->write, (uv_stream_t *)&r->tcp, &buf, 1, NULL);
    uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read);
}

static void test_transport(const char *tiny)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    exo_wire *a = NULL, *b = NULL;
    const char *hello_a = "{\"node_id\":\"a\"}", *hello_b = "{\"node_id\":\"b\"}";
    CHECK(exo_wire_new(&loop, hello_a, strlen(hello_a), &a) == 0);
    CHECK(exo_wire_new(&loop, hello_b, strlen(hello_b), &b) == 0);
    if (!a || !b) return;
    int port = 0, conn_ab = 0;
    CHECK(exo_wire_listen(b, "127.0.0.1", 0, &port) == 0 && port > 0);
    CHECK(exo_wire_listen(b, "127.0.0.1", 0, &port) == EXO_ESTATE);
    CHECK(exo_wire_connect(a, "not-an-ip", port, &conn_ab) == EXO_EINVAL);
    CHECK(exo_wire_connect(a, "127.0.0.1", port, &conn_ab) == 0 && conn_ab > 0);
    seen sa = {0}, sb = {0};
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PEER, 1));
    const exo_wire_event *pa = last_of(&sa, EXO_WIRE_EV_PEER), *pb = last_of(&sb, EXO_WIRE_EV_PEER);
    /* Each transport adds the frames it reads to the hello it was given. */
    CHECK(pa && strcmp(pa->data, "{\"node_id\":\"b\",\"wire_features\":[\"tensor_batch\"]}") == 0 &&
          pa->conn == conn_ab);
    CHECK(pb && strcmp(pb->data, "{\"node_id\":\"a\",\"wire_features\":[\"tensor_batch\"]}") == 0 &&
          strncmp(pb->address, "127.0.0.1:", 10) == 0);
    int conn_ba = pb ? pb->conn : -1;

    /* Control frames and pings. */
    CHECK(exo_wire_send_control(a, conn_ab, 9, "{\"t\":\"x\"}", 9) == 0);
    CHECK(exo_wire_send_control(a, 0, 10, "{\"t\":\"self\"}", 12) == 0);
    CHECK(exo_wire_send_control(a, 12345, 10, "{}", 2) == EXO_ESTATE);
    CHECK(exo_wire_ping(a, conn_ab) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_CONTROL, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PONG, 1));
    const exo_wire_event *cb = last_of(&sb, EXO_WIRE_EV_CONTROL), *ca = last_of(&sa, EXO_WIRE_EV_CONTROL);
    CHECK(cb && cb->request_id == 9 && strcmp(cb->data, "{\"t\":\"x\"}") == 0);
    CHECK(ca && ca->conn == 0 && ca->request_id == 10);

    /* The tiny model in two shards across the wire equals the whole model. */
    exo_shard *whole = load(tiny, 0, -1), *first = load(tiny, 0, 2), *second = load(tiny, 2, -1);
    if (whole && first && second) {
        exo_shard_info info;
        exo_shard_get_info(whole, &info);
        int nv = info.n_vocab;
        int32_t prompt[12];
        for (int i = 0; i < 12; i++) prompt[i] = (i * 53 + 7) % nv;
        exo_seq *ref_seq = NULL;
        CHECK(exo_seq_new(whole, 64, &ref_seq) == 0);
        float *ref = malloc(sizeof(float) * nv), *got = NULL;
        const uint32_t wire_dtypes[] = {EXO_DTYPE_F32, EXO_DTYPE_F16, EXO_DTYPE_Q8_0};
        for (int k = 0; k < 3; k++) {
            uint64_t req = 100 + k;
            exo_seq *qa = NULL, *qb = NULL;
            CHECK(exo_seq_new(first, 64, &qa) == 0);
            CHECK(exo_seq_new(second, 64, &qb) == 0);
            CHECK(exo_wire_route_open(a, req, first, qa, conn_ab, (int)wire_dtypes[k]) == 0);
            CHECK(exo_wire_route_open(b, req, second, qb, 0, EXO_DTYPE_F32) == 0);
            CHECK(exo_wire_route_open(b, req, second, qb, 0, EXO_DTYPE_F32) == EXO_ESTATE);
            /* Prompt, then two decode steps; the reference runs alongside. */
            for (int step = 0; step < 3; step++) {
                int pos = step == 0 ? 0 : 10 + step - 1;
                int n = step == 0 ? 10 : 1;
                if (k == 0) {
                    exo_seq_truncate(ref_seq, pos);
                    CHECK(exo_shard_forward(whole, ref_seq, prompt + pos, NULL, n, 0, ref) == 0);
                }
                int before = count(&sb, EXO_WIRE_EV_OUTPUT);
                CHECK(exo_wire_send_tokens(a, 0, req, pos, prompt + pos, n, 0) == 0);
                CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_OUTPUT, before + 1));
                int rows = 0, at = -1;
                CHECK(exo_wire_route_output(b, req, (const float **)&got, &rows, &at) == 0);
                if (!got) break;
                CHECK(rows == 1 && at == pos + n - 1); /* the one row scores the last position */
                if (k == 0) {
                    CHECK_MSG(memcmp(got, ref, sizeof(float) * nv) == 0, "split logits differ at step %d", step);
                    if (step == 2) memcpy(ref, got, sizeof(float) * nv); /* kept for the encodings below */
                } else {
                    double num = 0, den = 0;
                    for (int i = 0; i < nv; i++) {
                        num += (double)(got[i] - ref[i]) * (got[i] - ref[i]);
                        den += (double)ref[i] * ref[i];
                    }
                    if (step == 2) CHECK_MSG(num / den < 1e-3, "wire dtype %u: nmse %g", wire_dtypes[k], num / den);
                }
            }
            /* Rows at an earlier position roll every shard back: the last
             * decode step again gives the same logits. */
            if (k == 0 && got) {
                int before = count(&sb, EXO_WIRE_EV_OUTPUT);
                CHECK(exo_wire_send_tokens(a, 0, req, 11, prompt + 11, 1, 0) == 0);
                CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_OUTPUT, before + 1));
                int rows = 0, at = -1;
                CHECK(exo_wire_route_output(b, req, (const float **)&got, &rows, &at) == 0 && at == 11);
                CHECK_MSG(memcmp(got, ref, sizeof(float) * nv) == 0, "rolled-back step differs");
            }
            /* Rows ahead of the sequence fail the request, not the connection. */
            int failed = count(&sb, EXO_WIRE_EV_FAILED) + count(&sa, EXO_WIRE_EV_FAILED);
            CHECK(exo_wire_send_tokens(a, 0, req, 50, prompt, 1, 0) == 0);
            uv_run(&loop, UV_RUN_NOWAIT);
            drain(a, &sa);
            CHECK(count(&sa, EXO_WIRE_EV_FAILED) + count(&sb, EXO_WIRE_EV_FAILED) == failed + 1);
            CHECK(exo_wire_route_close(a, req) == 0);
            CHECK(exo_wire_route_close(b, req) == 0);
        }
        /* A verify pass whose logits rows come back to the asking node: a's
         * first shard, b's last shard sending every row to a's collector. */
        {
            uint64_t req = 200;
            exo_seq *qa = NULL, *qb = NULL, *qr = NULL;
            CHECK(exo_seq_new(first, 64, &qa) == 0 && exo_seq_new(second, 64, &qb) == 0);
            CHECK(exo_wire_route_open(a, req, first, qa, conn_ab, EXO_DTYPE_F32) == 0);
            CHECK(exo_wire_route_open(b, req, second, qb, conn_ba, EXO_DTYPE_F32) == 0);
            CHECK(exo_wire_collect_open(a, req + EXO_WIRE_REPLY_OFFSET, nv) == 0);
            /* b takes this request's rows only from the connection it names: a
             * pass from anywhere else is dropped. */
            exo_wire_stats sb0, sb1;
            exo_wire_get_stats(b, &sb0);
            CHECK(exo_wire_route_allow(b, req, 9999) == 0);
            CHECK(exo_wire_send_tokens(a, 0, req, 0, prompt, 4, EXO_WIRE_TENSOR_ALL_LOGITS) == 0);
            for (int i = 0; i < 200; i++) {
                uv_run(&loop, UV_RUN_NOWAIT);
                exo_wire_get_stats(b, &sb1);
                if (sb1.tensors_dropped > sb0.tensors_dropped) break;
                usleep(1000);
            }
            CHECK(sb1.tensors_dropped == sb0.tensors_dropped + 1);
            CHECK(exo_wire_route_allow(b, req, conn_ba) == 0);
            /* a's shard already ran that pass; the next frame at position 0 rolls it back. */
            int before = count(&sa, EXO_WIRE_EV_OUTPUT);
            CHECK(exo_wire_send_tokens(a, 0, req, 0, prompt, 4, EXO_WIRE_TENSOR_ALL_LOGITS) == 0);
            CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_OUTPUT, before + 1));
            const exo_wire_event *ev = last_of(&sa, EXO_WIRE_EV_OUTPUT);
            CHECK(ev && ev->request_id == req + EXO_WIRE_REPLY_OFFSET && ev->value == 4);
            int rows = 0, at = -1;
            const float *back = NULL;
            CHECK(exo_wire_route_output(a, req + EXO_WIRE_REPLY_OFFSET, &back, &rows, &at) == 0 && rows == 4);
            float *want = malloc(sizeof(float) * nv * 4);
            CHECK(exo_seq_new(whole, 64, &qr) == 0);
            CHECK(exo_shard_forward(whole, qr, prompt, NULL, 4, 1, want) == 0);
            CHECK_MSG(back && memcmp(back, want, sizeof(float) * nv * 4) == 0, "returned logits differ");
            free(want);
            exo_seq_free(qr);
            exo_wire_route_close(a, req);
            exo_wire_route_close(b, req);
            exo_wire_route_close(a, req + EXO_WIRE_REPLY_OFFSET);
        }
        exo_wire_stats st;
        exo_wire_get_stats(a, &st);
        CHECK(st.tensor_bytes_sent > 0 && st.routes == 0 && st.connections == 1);
        /* Rows for a closed request are dropped quietly. */
        CHECK(exo_wire_send_tokens(a, 0, 100, 0, prompt, 1, 0) == 0);
        exo_wire_get_stats(a, &st);
        CHECK(st.tensors_dropped == 1);
        exo_seq_free(ref_seq);
        free(ref);
    }

    /* A stranger sending garbage is refused; a and b keep talking. */
    raw_client raw = {.garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"};
    uv_tcp_init(&loop, &raw.tcp);
    raw.tcp.data = &raw;
    raw.req.data = &raw;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_connect(&raw.req, &raw.tcp, (struct sockaddr *)&addr, raw_connected);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_CLOSED, 1));
    const exo_wire_event *closed = last_of(&sb, EXO_WIRE_EV_CLOSED);
    CHECK_MSG(closed && strstr(closed->data, "bad magic"), "reason: %s", closed ? closed->data : "none");
    for (int i = 0; i < 200 && !raw.closed; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    CHECK(raw.closed); /* b hung up on it */
    CHECK(exo_wire_send_control(a, conn_ab, 11, "{}", 2) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_CONTROL, 2));

    /* b closing with a reason: a hears it. */
    CHECK(exo_wire_close(b, conn_ba, "going away") == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_CLOSED, 1));
    closed = last_of(&sa, EXO_WIRE_EV_CLOSED);
    CHECK_MSG(closed && strstr(closed->data, "going away"), "reason: %s", closed ? closed->data : "none");

    /* A refused connection is reported, not hung on. */
    int dead = 0;
    CHECK(exo_wire_connect(a, "127.0.0.1", 1, &dead) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_CLOSED, 2));

    exo_wire_free(a);
    exo_wire_free(b);
    if (whole) exo_shard_free(whole);
    if (first) exo_shard_free(first);
    if (second) exo_shard_free(second);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0); /* every handle closed */
}

/* ---- keyed clusters ----------------------------------------------------------- */

/* A sealed frame of a control payload, as frame_send makes it. */
static size_t seal_control(exo_seal *s, uint8_t *frame, const char *text)
{
    size_t n = strlen(text);
    exo__wire_encode_header(frame, EXO_WIRE_CONTROL, 0, (uint32_t)(n + EXO_WIRE_SEAL_TAG));
    memcpy(frame + EXO_WIRE_HEADER_SIZE, text, n);
    exo__seal_frame(s, frame, n);
    return EXO_WIRE_HEADER_SIZE + n + EXO_WIRE_SEAL_TAG;
}

static void test_seal(void)
{
    exo_seal_key key, other;
    CHECK(exo__seal_key_derive("too short", 9, &key) == EXO_EINVAL);
    CHECK(strstr(exo_last_error(), "at least 16") != NULL);
    const char *k1 = "correct horse battery staple", *k2 = "correct horse battery stapler";
    CHECK(exo__seal_key_derive(k1, strlen(k1), &key) == 0);
    CHECK(exo__seal_key_derive(k2, strlen(k2), &other) == 0);
    CHECK(memcmp(key.id, other.id, EXO_SEAL_KEY_ID_SIZE) != 0);
    exo_seal_key again;
    CHECK(exo__seal_key_derive(k1, strlen(k1), &again) == 0 && memcmp(&again, &key, sizeof key) == 0);

    /* Both sides agree on the keys; frames open in order, once. */
    exo_seal dialer, acceptor;
    uint8_t auth_d[EXO_SEAL_AUTH_SIZE], auth_a[EXO_SEAL_AUTH_SIZE];
    CHECK(exo__seal_begin(&dialer, &key, 1, auth_d) == 0);
    CHECK(exo__seal_begin(&acceptor, &key, 0, auth_a) == 0);
    CHECK(exo__seal_accept(&dialer, &key, auth_a, 39) == EXO_EFORMAT);
    CHECK(exo__seal_accept(&dialer, &key, auth_a, sizeof auth_a) == 0);
    CHECK(exo__seal_accept(&acceptor, &key, auth_d, sizeof auth_d) == 0);
    CHECK(exo__seal_accept(&acceptor, &key, auth_d, sizeof auth_d) == EXO_EFORMAT); /* a second AUTH */
    uint8_t f1[128], f2[128], copy[128];
    size_t n1 = seal_control(&dialer, f1, "{\"t\":\"one\"}"), n2 = seal_control(&dialer, f2, "{\"t\":\"two\"}");
    CHECK(memmem(f1, n1, "one", 3) == NULL); /* encrypted */
    memcpy(copy, f2, n2);
    CHECK(exo__seal_open(&acceptor, copy, n2 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT); /* out of order */
    memcpy(copy, f1, n1);
    copy[EXO_WIRE_HEADER_SIZE + 2] ^= 1;
    CHECK(exo__seal_open(&acceptor, copy, n1 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT); /* tampered payload */
    memcpy(copy, f1, n1);
    copy[8] ^= 1;
    CHECK(exo__seal_open(&acceptor, copy, n1 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT); /* tampered header */
    memcpy(copy, f1, n1);
    CHECK(exo__seal_open(&acceptor, copy, n1 - EXO_WIRE_HEADER_SIZE) == 0);
    CHECK(memcmp(copy + EXO_WIRE_HEADER_SIZE, "{\"t\":\"one\"}", 11) == 0);
    memcpy(copy, f1, n1);
    CHECK(exo__seal_open(&acceptor, copy, n1 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT); /* replayed */
    memcpy(copy, f2, n2);
    CHECK(exo__seal_open(&acceptor, copy, n2 - EXO_WIRE_HEADER_SIZE) == 0);
    /* The other direction has its own key: a frame does not open going back. */
    memcpy(copy, f1, n1);
    CHECK(exo__seal_open(&dialer, copy, n1 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT);

    /* Another key's id is refused by name; a stranger who copies our key id
     * from the wire agrees on nothing: its sealed frames do not open. */
    exo_seal stranger, victim;
    uint8_t auth_s[EXO_SEAL_AUTH_SIZE], auth_v[EXO_SEAL_AUTH_SIZE];
    CHECK(exo__seal_begin(&stranger, &other, 1, auth_s) == 0);
    CHECK(exo__seal_begin(&victim, &key, 0, auth_v) == 0);
    CHECK(exo__seal_accept(&victim, &key, auth_s, sizeof auth_s) == EXO_ENOTSUP);
    CHECK(strstr(exo_last_error(), "another cluster key") != NULL);
    exo_seal_key forged = other;
    memcpy(forged.id, key.id, sizeof forged.id);
    CHECK(exo__seal_begin(&stranger, &forged, 1, auth_s) == 0);
    CHECK(exo__seal_begin(&victim, &key, 0, auth_v) == 0);
    CHECK(exo__seal_accept(&victim, &key, auth_s, sizeof auth_s) == 0);
    CHECK(exo__seal_accept(&stranger, &forged, auth_v, sizeof auth_v) == 0);
    n1 = seal_control(&stranger, f1, "{\"node_id\":\"mallory\"}");
    CHECK(exo__seal_open(&victim, f1, n1 - EXO_WIRE_HEADER_SIZE) == EXO_EFORMAT);
    /* A public key of a low-order point (all zeros) is refused. */
    CHECK(exo__seal_begin(&victim, &key, 0, auth_v) == 0);
    memset(auth_s, 0, 32);
    memcpy(auth_s + 32, key.id, EXO_SEAL_KEY_ID_SIZE);
    CHECK(exo__seal_accept(&victim, &key, auth_s, sizeof auth_s) == EXO_EFORMAT);

    /* Sealed headers: limits count the payload without its tag; AUTH is refused. */
    uint8_t h[EXO_WIRE_HEADER_SIZE];
    exo_wire_header dh;
    exo__wire_encode_header(h, EXO_WIRE_PING, 0, 8 + EXO_WIRE_SEAL_TAG);
    CHECK(exo__wire_decode_header(h, sizeof h, 1, &dh) == EXO_WIRE_HEADER_SIZE);
    CHECK(exo__wire_decode_header(h, sizeof h, 0, &dh) < 0); /* 24 bytes for a ping */
    exo__wire_encode_header(h, EXO_WIRE_HELLO, 0, 4);
    CHECK(exo__wire_decode_header(h, sizeof h, 1, &dh) == EXO_EFORMAT); /* shorter than a tag */
    exo__wire_encode_header(h, EXO_WIRE_AUTH, 0, EXO_WIRE_AUTH_SIZE);
    CHECK(exo__wire_decode_header(h, sizeof h, 0, &dh) == EXO_WIRE_HEADER_SIZE);
    CHECK(exo__wire_decode_header(h, sizeof h, 1, &dh) == EXO_EFORMAT);
    exo__wire_encode_header(h, EXO_WIRE_AUTH, 0, EXO_WIRE_AUTH_SIZE - 1);
    CHECK(exo__wire_decode_header(h, sizeof h, 0, &dh) == EXO_EFORMAT);
}

static void test_keyed_transport(void)
{
    const char *key = "exo-0123456789abcdef0123456789abcdef", *other_key = "exo-fedcba9876543210fedcba9876543210";
    uv_loop_t loop;
    uv_loop_init(&loop);
    exo_wire *a = NULL, *b = NULL, *open = NULL, *other = NULL;
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"a\"}", 15, &a) == 0);
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"b\"}", 15, &b) == 0);
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"o\"}", 15, &open) == 0);
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"x\"}", 15, &other) == 0);
    if (!a || !b || !open || !other) return;
    CHECK(exo_wire_set_key(a, "short", 5) == EXO_EINVAL);
    CHECK(exo_wire_set_key(a, key, strlen(key)) == 0);
    CHECK(exo_wire_set_key(b, key, strlen(key)) == 0);
    CHECK(exo_wire_set_key(other, other_key, strlen(other_key)) == 0);

    /* Same key: admitted, and control frames, pings and tokens go through sealed. */
    int conn = 0, port = 0;
    seen sa = {0}, sb = {0};
    CHECK(exo_wire_listen(a, "127.0.0.1", 0, &port) == 0);
    CHECK(exo_wire_connect(b, "127.0.0.1", port, &conn) == 0);
    CHECK(exo_wire_set_key(a, key, strlen(key)) == EXO_ESTATE); /* a listens already */
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PEER, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 1));
    const exo_wire_event *pa = last_of(&sa, EXO_WIRE_EV_PEER);
    CHECK(pa && strncmp(pa->data, "{\"node_id\":\"b\",", 15) == 0);
    CHECK(exo_wire_send_control(b, conn, 5, "{\"t\":\"secret\"}", 14) == 0);
    CHECK(exo_wire_ping(b, conn) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_CONTROL, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PONG, 1));
    const exo_wire_event *ca = last_of(&sa, EXO_WIRE_EV_CONTROL);
    CHECK(ca && ca->request_id == 5 && strcmp(ca->data, "{\"t\":\"secret\"}") == 0);
    exo_wire_stats st;
    exo_wire_get_stats(a, &st);
    CHECK(st.keyed == 1 && st.auth_refused == 0 && st.frames_rejected == 0);

    /* An open node and a node with another key are refused at the handshake,
     * both ways, and say why; a's admitted peer is untouched. Each side reads
     * the other's first frame (a HELLO or an AUTH) before any ERROR, so each
     * closes with its own reason. */
    exo_wire *strangers[2] = {open, other};
    const char *why_a[2] = {"this cluster needs its key", "another cluster key"};
    const char *why_stranger[2] = {"open cluster", "another cluster key"};
    for (int k = 0; k < 2; k++) {
        seen sx = {0};
        int stranger_port = 0, c2 = 0;
        exo_wire_stats before, after;
        exo_wire_get_stats(a, &before);
        CHECK(exo_wire_listen(strangers[k], "127.0.0.1", 0, &stranger_port) == 0);
        CHECK(exo_wire_connect(a, "127.0.0.1", stranger_port, &c2) == 0);
        int closed_before = count(&sa, EXO_WIRE_EV_CLOSED);
        CHECK(run_until(&loop, a, &sa, strangers[k], &sx, &sa, EXO_WIRE_EV_CLOSED, closed_before + 1));
        CHECK(run_until(&loop, a, &sa, strangers[k], &sx, &sx, EXO_WIRE_EV_CLOSED, 1));
        CHECK(count(&sx, EXO_WIRE_EV_PEER) == 0);
        const exo_wire_event *ea = last_of(&sa, EXO_WIRE_EV_CLOSED), *ex = last_of(&sx, EXO_WIRE_EV_CLOSED);
        CHECK_MSG(ea && strstr(ea->data, why_a[k]), "a: %s", ea ? ea->data : "none");
        CHECK_MSG(ex && strstr(ex->data, why_stranger[k]), "stranger: %s", ex ? ex->data : "none");
        exo_wire_get_stats(a, &after);
        CHECK(after.auth_refused == before.auth_refused + 1);
    }
    int peers_a = count(&sa, EXO_WIRE_EV_PEER);
    CHECK(peers_a == 1);
    CHECK(exo_wire_send_control(b, conn, 6, "{\"t\":\"still\"}", 13) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_CONTROL, 2));

    exo_wire_free(a);
    exo_wire_free(b);
    exo_wire_free(open);
    exo_wire_free(other);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

/* ---- the queued-write budget ------------------------------------------------------ */

/* A peer that says hello and then never reads. */
typedef struct stalled_peer {
    uv_tcp_t tcp;
    uv_connect_t req;
    uv_write_t write;
    uint8_t hello[128];
    size_t hello_len;
} stalled_peer;

static void stalled_connected(uv_connect_t *req, int status)
{
    stalled_peer *p = req->data;
    if (status < 0) return;
    uv_buf_t buf = uv_buf_init((char *)p->hello, (unsigned)p->hello_len);
    uv_write(&p->write, (uv_stream_t *)&p->tcp, &buf, 1, NULL);
}

static void stalled_start(uv_loop_t *loop, stalled_peer *p, const char *id, int port)
{
    char json[64];
    int n = snprintf(json, sizeof json, "{\"node_id\":\"%s\"}", id);
    exo__wire_encode_header(p->hello, EXO_WIRE_HELLO, 0, (uint32_t)n);
    memcpy(p->hello + EXO_WIRE_HEADER_SIZE, json, (size_t)n);
    p->hello_len = EXO_WIRE_HEADER_SIZE + (size_t)n;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &p->tcp);
    p->req.data = p;
    uv_tcp_connect(&p->req, &p->tcp, (const struct sockaddr *)&addr, stalled_connected);
}

/* Two peers stop reading while a third reads: once all queues together pass
 * their budget, the slowest reader is cut, not the connection whose frame
 * crossed the line (before, the healthy peer's frames failed). */
static void test_queue_budget(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    exo_wire *a = NULL, *b = NULL;
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"a\"}", 15, &a) == 0);
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"b\"}", 15, &b) == 0);
    if (!a || !b) return;
    int port = 0, conn_b = 0;
    CHECK(exo_wire_listen(a, "127.0.0.1", 0, &port) == 0);
    static stalled_peer p1, p2;
    seen sa = {0}, sb = {0};
    stalled_start(&loop, &p1, "stalled-1", port);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 1));
    stalled_start(&loop, &p2, "stalled-2", port);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 2));
    CHECK(exo_wire_connect(b, "127.0.0.1", port, &conn_b) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 3));
    int c1 = sa.ev[0].conn, c2 = 0, cb = 0;
    for (int i = 0; i < sa.n; i++) {
        if (sa.ev[i].type != EXO_WIRE_EV_PEER) continue;
        if (strstr(sa.ev[i].data, "stalled-2")) c2 = sa.ev[i].conn;
        if (strstr(sa.ev[i].data, "\"b\"")) cb = sa.ev[i].conn;
    }
    CHECK(strstr(sa.ev[0].data, "stalled-1") != NULL && c2 && cb);

    size_t len = EXO_WIRE_MAX_CONTROL - 64;
    char *payload = malloc(len);
    memset(payload, ' ', len);
    payload[0] = '{', payload[len - 1] = '}';
    int failed = 0;
    for (int i = 0; i < 150; i++) failed += exo_wire_send_control(a, c1, 0, payload, len) != 0;
    for (int i = 0; i < 140; i++) failed += exo_wire_send_control(a, c2, 0, payload, len) != 0;
    CHECK_MSG(failed == 0, "%d frames to the stalled peers failed before any budget was reached", failed);
    /* Without running the loop, 100 MiB for b queue too: the total passes 384 MiB. */
    for (int i = 0; i < 100; i++) failed += exo_wire_send_control(a, cb, 0, payload, len) != 0;
    CHECK_MSG(failed == 0, "%d of b's frames failed: the budget cut the reading peer", failed);
    drain(a, &sa);
    const exo_wire_event *closed = last_of(&sa, EXO_WIRE_EV_CLOSED);
    CHECK_MSG(closed && closed->conn == c1 && strstr(closed->data, "slowest"), "closed: %s",
              closed ? closed->data : "none");
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_CONTROL, MAX_SEEN - 1)); /* b reads them */
    free(payload);
    uv_close((uv_handle_t *)&p1.tcp, NULL);
    uv_close((uv_handle_t *)&p2.tcp, NULL);
    exo_wire_free(a);
    exo_wire_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

/* ---- batches between transports -------------------------------------------------- */

/* The gate: a pass whose completion holds the engine thread until released,
 * so the jobs queued meanwhile are found side by side (one merged pass). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int held, open;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void gate_wait(void *ctx, int status, const char *err, uint64_t compute_ns)
{
    (void)ctx, (void)status, (void)err, (void)compute_ns;
    pthread_mutex_lock(&gate.lock);
    gate.held = 1;
    pthread_cond_broadcast(&gate.cond);
    while (!gate.open) pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
}

static void gate_set(int open)
{
    pthread_mutex_lock(&gate.lock);
    gate.open = open;
    if (!open) gate.held = 0;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
}

/* Holds the engine thread with a one-token pass of q (on a shard no route uses). */
static void gate_close(exo_shard *s, exo_seq *q, float *scratch)
{
    static const int32_t token = 1;
    gate_set(0);
    exo_seq_truncate(q, 0);
    CHECK(exo__engine_submit_cb(s, q, &token, NULL, 1, 0, scratch, gate_wait, NULL) == 0);
    pthread_mutex_lock(&gate.lock);
    while (!gate.held) pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
}

/* A peer of an earlier release: its hello has no wire_features. It keeps
 * every byte it is sent. */
typedef struct old_peer {
    uv_tcp_t tcp;
    uv_connect_t req;
    uv_write_t write;
    uint8_t hello[64];
    size_t hello_len;
    uint8_t got[1 << 16];
    size_t got_len;
} old_peer;

static void old_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
    (void)n;
    old_peer *p = h->data;
    *buf = uv_buf_init((char *)p->got + p->got_len, (unsigned)(sizeof p->got - p->got_len));
}

static void old_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    old_peer *p = s->data;
    if (n > 0) p->got_len += (size_t)n;
}

static void old_connected(uv_connect_t *req, int status)
{
    old_peer *p = req->data;
    if (status < 0) return;
    uv_buf_t buf = uv_buf_init((char *)p->hello, (unsigned)p->hello_len);
    uv_write(&p->write, (uv_stream_t *)&p->tcp, &buf, 1, NULL);
    uv_read_start((uv_stream_t *)&p->tcp, old_alloc, old_read);
}

/* Frames of type in what p was sent (headers read in the clear). */
static int old_peer_frames(const old_peer *p, int type)
{
    int n = 0;
    exo_wire_header h;
    for (size_t off = 0; exo__wire_decode_header(p->got + off, p->got_len - off, 0, &h) > 0;) {
        if (p->got_len - off < EXO_WIRE_HEADER_SIZE + h.payload_len) break;
        n += h.type == type;
        off += EXO_WIRE_HEADER_SIZE + h.payload_len;
    }
    return n;
}

enum { N_BATCHED = 4 };

static void test_batch_transport(const char *tiny)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    exo_wire *a = NULL, *b = NULL;
    CHECK(exo_wire_new(&loop, "{\"node_id\":\"a\"}", 15, &a) == 0);
    CHECK(exo_wire_new(&loop, "{ }", 3, &b) == 0);
    exo_shard *whole = load(tiny, 0, -1), *first = load(tiny, 0, 2), *second = load(tiny, 2, -1),
              *held = load(tiny, 0, 2);
    if (!a || !b || !whole || !first || !second || !held) return;
    int port = 0, conn_ab = 0;
    seen sa = {0}, sb = {0};
    CHECK(exo_wire_listen(a, "127.0.0.1", 0, &port) == 0);
    CHECK(exo_wire_connect(b, "127.0.0.1", port, &conn_ab) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PEER, 1));
    const exo_wire_event *pa = last_of(&sa, EXO_WIRE_EV_PEER);
    CHECK(pa && strcmp(pa->data, "{ \"wire_features\":[\"tensor_batch\"]}") == 0); /* an empty object too */
    int conn_to_b = pa ? pa->conn : -1;

    exo_shard_info info;
    exo_shard_get_info(whole, &info);
    int nv = info.n_vocab;
    exo_seq *gate_seq = NULL;
    float *scratch = malloc(sizeof(float) * (size_t)info.n_embd * 4);
    CHECK(exo_seq_new(held, 16, &gate_seq) == 0);

    /* Four requests' prompts, queued while the engine is held: a runs them
     * in one pass and sends b one batch, whose parts b runs in one pass. */
    int32_t prompts[N_BATCHED][3];
    exo_seq *qa[N_BATCHED], *qb[N_BATCHED];
    for (int r = 0; r < N_BATCHED; r++) {
        for (int i = 0; i < 3; i++) prompts[r][i] = (r * 31 + i * 17 + 5) % nv;
        CHECK(exo_seq_new(first, 32, &qa[r]) == 0 && exo_seq_new(second, 32, &qb[r]) == 0);
        CHECK(exo_wire_route_open(a, 500 + r, first, qa[r], conn_to_b, EXO_DTYPE_F32) == 0);
        CHECK(exo_wire_route_open(b, 500 + r, second, qb[r], 0, EXO_DTYPE_F32) == 0);
    }
    exo_wire_stats a0, b0, a1, b1;
    exo_wire_get_stats(a, &a0);
    exo_wire_get_stats(b, &b0);
    gate_close(held, gate_seq, scratch);
    for (int r = 0; r < N_BATCHED; r++) CHECK(exo_wire_send_tokens(a, 0, 500 + r, 0, prompts[r], 3, 0) == 0);
    gate_set(1);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_OUTPUT, N_BATCHED));
    exo_wire_get_stats(a, &a1);
    exo_wire_get_stats(b, &b1);
    CHECK_MSG(a1.batch_frames_sent == a0.batch_frames_sent + 1 && a1.batch_parts_sent == a0.batch_parts_sent + N_BATCHED,
              "a sent %llu batches of %llu parts", (unsigned long long)(a1.batch_frames_sent - a0.batch_frames_sent),
              (unsigned long long)(a1.batch_parts_sent - a0.batch_parts_sent));
    CHECK(b1.batch_frames_received == b0.batch_frames_received + 1);
    CHECK(b1.passes == b0.passes + N_BATCHED && b1.frames_rejected == 0);
    float *want = malloc(sizeof(float) * nv);
    for (int r = 0; r < N_BATCHED; r++) {
        exo_seq *q = NULL;
        CHECK(exo_seq_new(whole, 32, &q) == 0);
        CHECK(exo_shard_forward(whole, q, prompts[r], NULL, 3, 0, want) == 0);
        const float *got = NULL;
        int rows = 0, at = -1;
        CHECK(exo_wire_route_output(b, 500 + r, &got, &rows, &at) == 0 && rows == 1 && at == 2);
        CHECK_MSG(got && memcmp(got, want, sizeof(float) * nv) == 0, "request %d's batched logits differ", r);
        exo_seq_free(q);
    }
    /* The next step of two of them: still batched, and only those two. */
    gate_close(held, gate_seq, scratch);
    for (int r = 0; r < 2; r++) CHECK(exo_wire_send_tokens(a, 0, 500 + r, 3, prompts[r], 1, 0) == 0);
    gate_set(1);
    int outputs = count(&sb, EXO_WIRE_EV_OUTPUT);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_OUTPUT, outputs + 2));
    exo_wire_get_stats(a, &a1);
    CHECK(a1.batch_frames_sent == a0.batch_frames_sent + 2 && a1.batch_parts_sent == a0.batch_parts_sent + 6);
    for (int r = 0; r < N_BATCHED; r++) {
        exo_wire_route_close(a, 500 + r);
        exo_wire_route_close(b, 500 + r);
    }

    /* A peer that did not list the feature gets a TENSOR frame a request,
     * from the same merged pass. */
    static old_peer old;
    const char *old_hello = "{\"node_id\":\"old\"}";
    exo__wire_encode_header(old.hello, EXO_WIRE_HELLO, 0, (uint32_t)strlen(old_hello));
    memcpy(old.hello + EXO_WIRE_HEADER_SIZE, old_hello, strlen(old_hello));
    old.hello_len = EXO_WIRE_HEADER_SIZE + strlen(old_hello);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(&loop, &old.tcp);
    old.tcp.data = &old;
    old.req.data = &old;
    uv_tcp_connect(&old.req, &old.tcp, (const struct sockaddr *)&addr, old_connected);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 2));
    const exo_wire_event *po = last_of(&sa, EXO_WIRE_EV_PEER);
    int conn_old = po ? po->conn : -1;
    for (int r = 0; r < 2; r++) { /* closing a route freed its sequence: new ones */
        exo_seq *q = NULL;
        CHECK(exo_seq_new(first, 32, &q) == 0);
        CHECK(exo_wire_route_open(a, 600 + r, first, q, conn_old, EXO_DTYPE_F32) == 0);
    }
    exo_wire_get_stats(a, &a0);
    gate_close(held, gate_seq, scratch);
    for (int r = 0; r < 2; r++) CHECK(exo_wire_send_tokens(a, 0, 600 + r, 0, prompts[r], 3, 0) == 0);
    gate_set(1);
    for (int i = 0; i < 2000 && old_peer_frames(&old, EXO_WIRE_TENSOR) < 2; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    exo_wire_get_stats(a, &a1);
    CHECK(old_peer_frames(&old, EXO_WIRE_HELLO) == 1 && old_peer_frames(&old, EXO_WIRE_TENSOR) == 2);
    CHECK(old_peer_frames(&old, EXO_WIRE_TENSOR_BATCH) == 0 && a1.batch_frames_sent == a0.batch_frames_sent);
    CHECK(a1.passes == a0.passes + 2);
    for (int r = 0; r < 2; r++) exo_wire_route_close(a, 600 + r);

    uv_close((uv_handle_t *)&old.tcp, NULL);
    exo_wire_free(a);
    exo_wire_free(b);
    exo_seq_free(gate_seq);
    free(want);
    free(scratch);
    exo_shard_free(whole);
    exo_shard_free(first);
    exo_shard_free(second);
    exo_shard_free(held);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

/* ---- model files between two transports --------------------------------------- */

static int read_file(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int n = (int)fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void write_file(const char *path, const uint8_t *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(buf, 1, n, f);
    fclose(f);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

static void test_share(void)
{
    enum { SIZE = 600 * 1024 + 5, CREDIT = 300 * 1024 };
    static uint8_t src[SIZE], got[SIZE + 16];
    for (int i = 0; i < SIZE; i++) src[i] = (uint8_t)(i * 131 + (i >> 9));
    char dir[] = "/tmp/exo-share-XXXXXX";
    if (!mkdtemp(dir)) return;
    char path[4][64], partial[300];
    for (int i = 0; i < 4; i++) snprintf(path[i], sizeof path[i], "%s/f%d", dir, i);
    write_file(path[0], src, SIZE);
    char hex[65], zeros[65];
    CHECK(exo_wire_file_sha256(path[0], hex) == 0);
    memset(zeros, '0', 64);
    zeros[64] = 0;

    uv_loop_t loop;
    uv_loop_init(&loop);
    exo_wire *a = NULL, *b = NULL;
    CHECK(exo_wire_new(&loop, "{}", 2, &a) == 0 && exo_wire_new(&loop, "{}", 2, &b) == 0);
    int port = 0, conn_ab = 0;
    CHECK(exo_wire_listen(b, "127.0.0.1", 0, &port) == 0);
    CHECK(exo_wire_connect(a, "127.0.0.1", port, &conn_ab) == 0);
    seen sa = {0}, sb = {0};
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PEER, 1));
    CHECK(run_until(&loop, a, &sa, b, &sb, &sa, EXO_WIRE_EV_PEER, 1));
    const exo_wire_event *pb = last_of(&sb, EXO_WIRE_EV_PEER);
    int conn_ba = pb ? pb->conn : -1;
    int64_t off = -1;

    /* Arguments a caller gets wrong are refused before anything opens. */
    CHECK(exo_wire_share_receive(b, conn_ba, 1, path[1], SIZE, "ABC", &off) == EXO_EINVAL);
    CHECK(exo_wire_share_receive(b, conn_ba, 1, path[1], 0, hex, &off) == EXO_EINVAL);
    CHECK(exo_wire_share_send(a, conn_ab, 1, path[0], 0, SIZE + 1, CREDIT) == EXO_ERANGE);

    /* The sender stops at its credit; more credit finishes the file. */
    CHECK(exo_wire_share_receive(b, conn_ba, 1, path[1], SIZE, hex, &off) == 0 && off == 0);
    CHECK(exo_wire_share_receive(b, conn_ba, 1, path[1], SIZE, hex, &off) == EXO_ESTATE);
    CHECK(exo_wire_share_send(a, conn_ab, 1, path[0], 0, SIZE, CREDIT) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE, 2));
    for (int i = 0; i < 50; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        drain(b, &sb);
        usleep(1000);
    }
    const exo_wire_event *e = last_of(&sb, EXO_WIRE_EV_SHARE);
    CHECK(count(&sb, EXO_WIRE_EV_SHARE) == 2 && e && e->value == CREDIT && e->request_id == 1);
    CHECK(exo_wire_share_credit(a, conn_ab, 1, 1 << 20) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 1));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == 0 && e->request_id == 1);
    CHECK(read_file(path[1], got, sizeof got) == SIZE && memcmp(got, src, SIZE) == 0);
    snprintf(partial, sizeof partial, "%s.partial", path[1]);
    CHECK(!exists(partial));

    /* Bytes that do not hash to what was promised: the file is rejected and deleted. */
    CHECK(exo_wire_share_receive(b, conn_ba, 2, path[2], SIZE, zeros, &off) == 0 && off == 0);
    CHECK(exo_wire_share_send(a, conn_ab, 2, path[0], 0, SIZE, 1 << 20) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 2));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == EXO_EFORMAT && strstr(e->data, "hash mismatch"));
    snprintf(partial, sizeof partial, "%s.partial", path[2]);
    CHECK(!exists(path[2]) && !exists(partial));

    /* A partial from before: the transfer continues where it ends. */
    snprintf(partial, sizeof partial, "%s.partial", path[3]);
    write_file(partial, src, 100000);
    CHECK(exo_wire_share_receive(b, conn_ba, 3, path[3], SIZE, hex, &off) == 0 && off == 100000);
    CHECK(exo_wire_share_send(a, conn_ab, 3, path[0], off, SIZE, 1 << 20) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 3));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == 0);
    CHECK(read_file(path[3], got, sizeof got) == SIZE && memcmp(got, src, SIZE) == 0);

    /* A partial whose bytes are not the file's: the check covers them too. */
    unlink(path[3]);
    uint8_t junk[1000];
    memset(junk, 0x5a, sizeof junk);
    write_file(partial, junk, sizeof junk);
    CHECK(exo_wire_share_receive(b, conn_ba, 6, path[3], SIZE, hex, &off) == 0 && off == (int64_t)sizeof junk);
    CHECK(exo_wire_share_send(a, conn_ab, 6, path[0], off, SIZE, 1 << 20) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 4));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == EXO_EFORMAT && e->request_id == 6 && !exists(path[3]) && !exists(partial));
    memset(&sb, 0, sizeof sb); /* the counts below start again */

    /* Bytes out of place end the transfer; chunks for no transfer are dropped
     * and the connection stays up. */
    unlink(path[3]);
    CHECK(exo_wire_share_receive(b, conn_ba, 4, path[3], SIZE, hex, &off) == 0 && off == 0);
    CHECK(exo_wire_share_send(a, conn_ab, 4, path[0], 4096, SIZE, 1 << 20) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 1));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == EXO_EFORMAT && strstr(e->data, "offset"));
    CHECK(exo_wire_share_send(a, conn_ab, 77, path[0], 0, SIZE, 1 << 20) == 0);
    CHECK(exo_wire_ping(b, conn_ba) == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_PONG, 1));
    CHECK(count(&sb, EXO_WIRE_EV_CLOSED) == 0 && count(&sb, EXO_WIRE_EV_SHARE_END) == 1);

    /* One peer may hold only so many of this node's transfers. */
    for (int i = 0; i < 8; i++) CHECK(exo_wire_share_send(a, conn_ab, 200 + i, path[0], 0, SIZE, 0) == 0);
    CHECK(exo_wire_share_send(a, conn_ab, 300, path[0], 0, SIZE, 0) == EXO_EAGAIN);
    CHECK(exo_wire_share_send(a, conn_ab, 200, path[0], 0, SIZE, 0) == EXO_ESTATE); /* its id is taken */
    for (int i = 0; i < 8; i++) CHECK(exo_wire_share_cancel(a, conn_ab, 200 + i) == 0);
    CHECK(exo_wire_share_send(a, conn_ab, 300, path[0], 0, SIZE, 0) == 0);
    CHECK(exo_wire_share_cancel(a, conn_ab, 300) == 0);

    /* A receiver whose peer goes away hears it, and keeps its partial. */
    unlink(path[3]);
    CHECK(exo_wire_share_receive(b, conn_ba, 5, path[3], SIZE, hex, &off) == 0);
    CHECK(exo_wire_close(a, conn_ab, "bye") == 0);
    CHECK(run_until(&loop, a, &sa, b, &sb, &sb, EXO_WIRE_EV_SHARE_END, 2));
    e = last_of(&sb, EXO_WIRE_EV_SHARE_END);
    CHECK(e && e->value == EXO_EIO && e->request_id == 5 && exists(partial));

    exo_wire_free(a);
    exo_wire_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    for (int i = 0; i < 4; i++) {
        unlink(path[i]);
        snprintf(partial, sizeof partial, "%s.partial", path[i]);
        unlink(partial);
    }
    rmdir(dir);
}

int main(void)
{
    const char *tiny = getenv("EXO_TINY_MODEL");
    if (!tiny) {
        fprintf(stderr, "EXO_TINY_MODEL is not set (ctest sets it)\n");
        return 1;
    }
    test_header();
    test_tensor_payload();
    test_chunk_payload();
    test_batch_payload();
    test_encodings();
    test_transport(tiny);
    test_seal();
    test_keyed_transport();
    test_queue_budget();
    test_batch_transport(tiny);
    test_share();
    if (check_failures) fprintf(stderr, "test_wire: %d failures\n", check_failures);
    else printf("test_wire: ok\n");
    return check_failures ? 1 : 0;
}
