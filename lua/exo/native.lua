-- native.lua: the one place that declares libexo's C API to LuaJIT and wraps it.
--
-- The cdef block below is generated from native/exo_defs.h and native/exo.h
-- (tools/gen_cdef.lua; a test fails when it is stale) and the ABI version is
-- checked at load. Every other module calls C through the wrappers here
-- (test_boundary checks that none reaches ffi.C): runtime, model files,
-- shards and sequences, the engine thread, sampling primitives, tokenizers,
-- HTTP parsing, the wire. Wrappers follow OpenResty's habits: C functions are
-- bound to locals once, arguments are checked before crossing (misuse
-- raises), runtime failures return nil, "ECODE: message", "ECODE", and
-- out-parameters and scratch buffers are allocated once per module. Numbers C
-- defines (error codes, dtypes, GGUF value types, wire events and flags) are
-- read from the cdef'd enums, never repeated.
local ffi = require "ffi"

-- BEGIN GENERATED CDEF (tools/gen_cdef.lua)
ffi.cdef [[
enum exo_error {
    EXO_OK = 0,
    EXO_EINVAL = -1,
    EXO_ENOMEM = -2,
    EXO_EIO = -3,
    EXO_EFORMAT = -4,
    EXO_ERANGE = -5,
    EXO_ENOTSUP = -6,
    EXO_ESTATE = -7,
    EXO_EAGAIN = -8,
    EXO_EBUSY = -9
};
enum exo_dtype {
    EXO_DTYPE_F32 = 0,
    EXO_DTYPE_F16 = 1,
    EXO_DTYPE_Q4_0 = 2,
    EXO_DTYPE_Q4_1 = 3,
    EXO_DTYPE_Q5_0 = 6,
    EXO_DTYPE_Q5_1 = 7,
    EXO_DTYPE_Q8_0 = 8,
    EXO_DTYPE_Q2_K = 10,
    EXO_DTYPE_Q3_K = 11,
    EXO_DTYPE_Q4_K = 12,
    EXO_DTYPE_Q5_K = 13,
    EXO_DTYPE_Q6_K = 14,
    EXO_DTYPE_Q8_K = 15,
    EXO_DTYPE_IQ4_NL = 20,
    EXO_DTYPE_IQ4_XS = 23,
    EXO_DTYPE_BF16 = 30,
    EXO_DTYPE_COUNT = 40
};
enum exo_gguf_type {
    EXO_GGUF_UINT8 = 0,
    EXO_GGUF_INT8 = 1,
    EXO_GGUF_UINT16 = 2,
    EXO_GGUF_INT16 = 3,
    EXO_GGUF_UINT32 = 4,
    EXO_GGUF_INT32 = 5,
    EXO_GGUF_FLOAT32 = 6,
    EXO_GGUF_BOOL = 7,
    EXO_GGUF_STRING = 8,
    EXO_GGUF_ARRAY = 9,
    EXO_GGUF_UINT64 = 10,
    EXO_GGUF_INT64 = 11,
    EXO_GGUF_FLOAT64 = 12
};
enum exo_wire_tensor_flag {
    EXO_WIRE_TENSOR_ALL_LOGITS = 1
};
enum { EXO_WIRE_REPLY_SHIFT = 52 };
int exo_abi_version(void);
const char *exo_version(void);
const char *exo_last_error(void);
const char *exo_error_name(int code);
int exo_runtime_set_threads(int n_threads);
int exo_runtime_threads(void);
const char *exo_runtime_cpu_features(void);
int exo_runtime_random(void *buf, size_t n);
int exo_runtime_catch_interrupt(int on);
int exo_runtime_interrupted(int clear);
typedef struct exo_file exo_file;
int exo_file_open(const char *path, exo_file **out);
void exo_file_close(exo_file *f);
int64_t exo_file_meta_count(const exo_file *f);
const char *exo_file_meta_key(const exo_file *f, int64_t i);
int exo_file_meta_type(const exo_file *f, int64_t i);
int exo_file_get_str(const exo_file *f, const char *key, const char **s, size_t *len);
int exo_file_get_int(const exo_file *f, const char *key, int64_t *out);
int exo_file_get_float(const exo_file *f, const char *key, double *out);
int exo_file_get_bool(const exo_file *f, const char *key, int *out);
int exo_file_get_arr_info(const exo_file *f, const char *key, int *elem_type, uint64_t *len);
int exo_file_get_arr_str(const exo_file *f, const char *key, uint64_t j, const char **s, size_t *len);
int exo_file_get_arr_num(const exo_file *f, const char *key, uint64_t j, double *out);
int64_t exo_file_tensor_count(const exo_file *f);
int exo_file_tensor_info(const exo_file *f, int64_t i, const char **name, int *dtype, int *n_dims, int64_t *ne,
                         uint64_t *nbytes);
const char *exo_dtype_name(int dtype);
typedef struct exo_shard exo_shard;
typedef struct exo_seq exo_seq;
typedef struct exo_shard_info {
    char arch[32];
    int n_layer;
    int layer_start;
    int layer_end;
    int is_first;
    int is_last;
    int n_embd;
    int n_vocab;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_ctx_train;
    int max_batch;
    int64_t weight_bytes;
    int64_t packed_bytes;
} exo_shard_info;
int exo_shard_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, exo_shard **out);
int exo_safetensors_set_quantize(const char *type);
void exo_shard_free(exo_shard *s);
int exo_shard_get_info(const exo_shard *s, exo_shard_info *out);
typedef struct exo_kv_info {
    int block_len;
    int budget;
    int blocks;
    int free;
    int reserved;
    int sequences;
    int64_t block_bytes;
    int shared;
} exo_kv_info;
int exo_shard_set_kv_tokens(exo_shard *s, int64_t n_tokens);
int exo_shard_kv_info(exo_shard *s, exo_kv_info *out);
int exo_seq_new(exo_shard *s, int n_ctx, exo_seq **out);
void exo_seq_free(exo_seq *q);
int exo_seq_pos(const exo_seq *q);
int exo_seq_n_ctx(const exo_seq *q);
int exo_seq_truncate(exo_seq *q, int pos);
int exo_seq_share_prefix(exo_seq *dst, exo_seq *src, int n);
int exo_seq_kv_need(const exo_seq *q, int keep, int n_pos, int *blocks);
int exo_shard_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out);
int exo_shard_forward_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out);
int exo_engine_fd(void);
int exo_engine_submit(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out, uint64_t job_id);
int exo_engine_submit_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out,
                            uint64_t job_id);
int exo_engine_next_completion(uint64_t *job_id, int *status, char *err, size_t err_cap);
int exo_engine_wait_idle(void);
int exo_sample_argmax(const float *logits, int n);
int exo_sample_penalties(float *logits, int n_vocab, const int32_t *recent, int n_recent, float repeat,
                         float presence, float frequency);
int exo_sample_candidates(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                          int32_t *ids_out, float *probs_out, int cap, int *n_out);
int exo_sample_log_softmax(const float *logits, int n, float *out);
int exo_sample_probs(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                     int32_t *ids_scratch, float *probs_scratch, float *probs_out);
int exo_sample_draw(const float *probs, int n, double u);
int exo_sample_residual(const float *p, const float *q, int n, double u);
typedef struct exo_tokenizer exo_tokenizer;
typedef struct exo_tokenizer_stream {
    int32_t started;
    int32_t n_pending;
    uint8_t pending[4];
} exo_tokenizer_stream;
int exo_tokenizer_load(const char *gguf_path, exo_tokenizer **out);
void exo_tokenizer_free(exo_tokenizer *tok);
int exo_tokenizer_encode(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                         int32_t *out, int cap, int *n_out);
int exo_tokenizer_encode_spans(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                               const size_t *plain, int n_plain, int32_t *out, int cap, int *n_out);
int exo_tokenizer_decode(const exo_tokenizer *tok, const int32_t *ids, int n_ids, int special, char *out,
                         size_t cap, size_t *out_len);
int exo_tokenizer_decode_stream(const exo_tokenizer *tok, exo_tokenizer_stream *st, int32_t id, int special,
                                char *out, size_t cap, size_t *out_len);
int exo_tokenizer_decode_stream_flush(const exo_tokenizer *tok, exo_tokenizer_stream *st, char *out, size_t cap,
                                      size_t *out_len);
int exo_tokenizer_token_piece(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len);
int exo_tokenizer_token_text(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len);
int32_t exo_tokenizer_find(const exo_tokenizer *tok, const char *text, size_t len);
int exo_tokenizer_n_vocab(const exo_tokenizer *tok);
int32_t exo_tokenizer_bos(const exo_tokenizer *tok);
int32_t exo_tokenizer_eos(const exo_tokenizer *tok);
int32_t exo_tokenizer_eot(const exo_tokenizer *tok);
int exo_tokenizer_add_bos(const exo_tokenizer *tok);
int exo_tokenizer_is_eog(const exo_tokenizer *tok, int32_t id);
enum exo_token_type {
    EXO_TOKEN_UNDEFINED = 0,
    EXO_TOKEN_NORMAL = 1,
    EXO_TOKEN_UNKNOWN = 2,
    EXO_TOKEN_CONTROL = 3,
    EXO_TOKEN_USER_DEFINED = 4,
    EXO_TOKEN_UNUSED = 5,
    EXO_TOKEN_BYTE = 6
};
int exo_tokenizer_token_type(const exo_tokenizer *tok, int32_t id);
const char *exo_tokenizer_model(const exo_tokenizer *tok);
const char *exo_tokenizer_pre(const exo_tokenizer *tok);
const char *exo_tokenizer_warning(const exo_tokenizer *tok);
typedef struct exo_json_grammar exo_json_grammar;
int exo_json_grammar_new(const exo_tokenizer *tok, exo_json_grammar **out);
void exo_json_grammar_free(exo_json_grammar *g);
void exo_json_grammar_reset(exo_json_grammar *g);
int exo_json_grammar_mask(exo_json_grammar *g, float *logits, int n_vocab);
int exo_json_grammar_accept(exo_json_grammar *g, int32_t id);
int exo_json_grammar_done(const exo_json_grammar *g);
int exo_json_grammar_check(const char *text, size_t len);
int exo_json_grammar_schema_node(exo_json_grammar *g, int types, int items);
int exo_json_grammar_schema_property(exo_json_grammar *g, int node, const char *name, size_t len, int value_node,
                                     int required);
int exo_json_grammar_schema_enum(exo_json_grammar *g, int node, const char *text, size_t len);
int exo_json_grammar_schema_root(exo_json_grammar *g, int node);
int exo_engine_submit_load(const char *path, int layer_start, int layer_end, int is_first, int is_last,
                           uint64_t job_id);
int exo_engine_submit_load_tokenizer(const char *gguf_path, uint64_t job_id);
int exo_engine_take_shard(uint64_t job_id, exo_shard **out);
int exo_engine_take_tokenizer(uint64_t job_id, exo_tokenizer **out);
enum { EXO_HTTP_MAX_HEADERS = 64 };
typedef struct exo_http_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} exo_http_header;
typedef struct exo_http_request {
    uint32_t method_off, method_len;
    uint32_t target_off, target_len;
    int32_t version_minor;
    int32_t n_headers;
    exo_http_header headers[EXO_HTTP_MAX_HEADERS];
    int64_t content_length;
    int32_t chunked;
    int32_t keep_alive;
    int32_t expect_continue;
    uint32_t head_len;
    int32_t status;
} exo_http_request;
int exo_http_parse_head(const char *buf, size_t len, size_t max_head_bytes, exo_http_request *req);
int exo_http_header_find(const char *buf, const exo_http_request *req, const char *name, int from);
typedef struct exo_http_chunked {
    int32_t state;
    uint32_t line_len;
    uint64_t remaining;
    uint64_t total;
    uint64_t framing;
} exo_http_chunked;
int exo_http_chunked_decode(exo_http_chunked *st, char *buf, size_t len, size_t max_body, size_t *consumed,
                            size_t *produced, int *done);
typedef struct exo_wire exo_wire;
enum exo_wire_event_type {
    EXO_WIRE_EV_PEER = 1,
    EXO_WIRE_EV_CLOSED = 2,
    EXO_WIRE_EV_CONTROL = 3,
    EXO_WIRE_EV_OUTPUT = 4,
    EXO_WIRE_EV_FAILED = 5,
    EXO_WIRE_EV_PONG = 6,
    EXO_WIRE_EV_SHARE = 7,
    EXO_WIRE_EV_SHARE_END = 8,
    EXO_WIRE_EV_HASHED = 9
};
typedef struct exo_wire_event {
    int32_t type;
    int32_t conn;
    uint64_t request_id;
    int64_t value;
    const char *data;
    uint32_t len;
    char address[64];
} exo_wire_event;
typedef struct exo_wire_stats {
    uint64_t frames_sent, frames_received, bytes_sent, bytes_received;
    uint64_t tensor_bytes_sent;
    uint64_t frames_rejected;
    uint64_t tensors_dropped;
    int32_t connections, routes;
    int32_t in_flight;
    uint64_t passes, pass_total_ns, pass_compute_ns;
    uint64_t auth_refused;
    int32_t keyed;
    uint64_t batch_frames_sent, batch_parts_sent, batch_frames_received;
} exo_wire_stats;
int exo_runtime_set_loop(void *uv_loop);
int exo_wire_new(void *uv_loop, const char *hello, size_t hello_len, exo_wire **out);
void exo_wire_free(exo_wire *w);
int exo_wire_fd(const exo_wire *w);
int exo_wire_set_hello(exo_wire *w, const char *hello, size_t hello_len);
int exo_wire_set_key(exo_wire *w, const char *key, size_t len);
int exo_wire_announce_seal(const exo_wire *w, const char *json, size_t len, uint8_t *out, size_t cap,
                           size_t *out_len);
int exo_wire_announce_open(const exo_wire *w, const uint8_t *dgram, size_t len, char *json, size_t cap,
                           size_t *json_len);
int exo_wire_listen(exo_wire *w, const char *host, int port, int *bound_port);
int exo_wire_connect(exo_wire *w, const char *host, int port, int *conn);
int exo_wire_close(exo_wire *w, int conn, const char *reason);
int exo_wire_send_control(exo_wire *w, int conn, uint64_t request_id, const char *json, size_t len);
int exo_wire_send_tokens(exo_wire *w, int conn, uint64_t request_id, int position, const int32_t *ids, int n,
                         int flags);
int exo_wire_ping(exo_wire *w, int conn);
int exo_wire_next_event(exo_wire *w, exo_wire_event *ev);
int exo_wire_route_open(exo_wire *w, uint64_t request_id, exo_shard *s, exo_seq *q, int next_conn, int wire_dtype);
int exo_wire_route_allow(exo_wire *w, uint64_t request_id, int conn);
int exo_wire_collect_open(exo_wire *w, uint64_t request_id, int n_vocab);
int exo_wire_route_close(exo_wire *w, uint64_t request_id);
int exo_wire_route_output(exo_wire *w, uint64_t request_id, const float **logits, int *n_rows, int *position);
int exo_wire_get_stats(const exo_wire *w, exo_wire_stats *out);
int exo_wire_share_receive(exo_wire *w, int conn, uint64_t transfer_id, const char *dest, int64_t size,
                           const char *sha256_hex, int64_t *offset);
int exo_wire_share_send(exo_wire *w, int conn, uint64_t transfer_id, const char *path, int64_t offset, int64_t size,
                        int64_t credit);
int exo_wire_share_credit(exo_wire *w, int conn, uint64_t transfer_id, int64_t bytes);
int exo_wire_share_cancel(exo_wire *w, int conn, uint64_t transfer_id);
int exo_wire_file_sha256(const char *path, char *hex65);
int exo_wire_hash_file(exo_wire *w, uint64_t id, const char *path);
int exo_download_fd(void);
int exo_download_configure(int max_attempts, double backoff_s, double max_wait_s, double stall_s);
int exo_download_file(const char *url, const char *dest, const char *headers, int64_t size, const char *sha256_hex,
                      uint64_t job_id);
int exo_download_request(const char *method, const char *url, const char *headers, const char *body,
                         size_t body_len, size_t max_bytes, double timeout_s, uint64_t job_id);
int exo_download_progress(uint64_t job_id, int64_t *done, int64_t *total, double *bytes_per_s, int *attempt);
int exo_download_cancel(uint64_t job_id);
int exo_download_next(uint64_t *job_id, int *status, int *http_status, char *err, size_t err_cap);
int exo_download_result(uint64_t job_id, const char **body, size_t *body_len, const char **headers,
                        size_t *headers_len);
int exo_download_release(uint64_t job_id);
double exo_measure_mem_bandwidth(size_t bytes, int reps);
double exo_measure_flops_fp32(int reps);
int64_t exo_peak_rss_bytes(void);
double exo_now(void);
]]
-- END GENERATED CDEF

local C = ffi.C
local M = {}

M.ABI_VERSION = 4
-- The raw namespace, for tests and the REPL: modules under lua/exo call the
-- wrappers below (test_boundary checks that none but this one reaches it).
M.C = C

do
  local ok, v = pcall(function() return C.exo_abi_version() end)
  if not ok then
    error("libexo is not linked into this executable (run exo through build/exo): " .. tostring(v))
  end
  if v ~= M.ABI_VERSION then
    error(("libexo ABI version %d does not match native.lua's %d: rebuild"):format(v, M.ABI_VERSION))
  end
end

local exo_error_name, exo_last_error = C.exo_error_name, C.exo_last_error

-- A runtime failure as Lua sees it: nil, "ECODE: message", "ECODE".
local function fail(rc)
  local name = ffi.string(exo_error_name(rc))
  return nil, name .. ": " .. ffi.string(exo_last_error()), name
end

-- Out-parameters shared by every wrapper: only the loop thread runs Lua, and
-- each is read before the next call.
local int1 = ffi.new("int[1]")
local int1b = ffi.new("int[1]")
local i64_1 = ffi.new("int64_t[1]")
local i64_1b = ffi.new("int64_t[1]")
local u64_1 = ffi.new("uint64_t[1]")
local dbl1 = ffi.new("double[1]")
local str1 = ffi.new("const char*[1]")
local size1 = ffi.new("size_t[1]")
local size1b = ffi.new("size_t[1]")

local function check_type(v, t, what)
  if type(v) ~= t then error(("%s: expected %s, got %s"):format(what, t, type(v)), 3) end
end

-- ---- runtime -----------------------------------------------------------------

local exo_version, exo_runtime_cpu_features = C.exo_version, C.exo_runtime_cpu_features
local exo_runtime_threads, exo_runtime_set_threads = C.exo_runtime_threads, C.exo_runtime_set_threads
local exo_now, exo_peak_rss_bytes, exo_dtype_name = C.exo_now, C.exo_peak_rss_bytes, C.exo_dtype_name
local exo_measure_mem_bandwidth, exo_measure_flops_fp32 = C.exo_measure_mem_bandwidth, C.exo_measure_flops_fp32
local exo_runtime_random = C.exo_runtime_random

function M.version() return ffi.string(exo_version()) end
function M.cpu_features() return ffi.string(exo_runtime_cpu_features()) end
function M.threads() return exo_runtime_threads() end
function M.set_threads(n)
  check_type(n, "number", "set_threads")
  local rc = exo_runtime_set_threads(n)
  if rc ~= 0 then return fail(rc) end
  return true
end
function M.now() return exo_now() end
-- n random bytes from the operating system, as a string.
function M.random_bytes(n)
  local buf = ffi.new("uint8_t[?]", n)
  local rc = exo_runtime_random(buf, n)
  if rc ~= 0 then error(select(2, fail(rc))) end
  return ffi.string(buf, n)
end
-- A uint64_t cdata from the operating system's random generator.
function M.random_u64()
  local rc = exo_runtime_random(u64_1, 8)
  if rc ~= 0 then error(select(2, fail(rc))) end
  return u64_1[0]
end
function M.peak_rss_bytes() return tonumber(exo_peak_rss_bytes()) end
function M.mem_bandwidth_gbs(bytes, reps) return exo_measure_mem_bandwidth(bytes or 256 * 2 ^ 20, reps or 5) end
-- fp32 GFLOPS of the compute threads, best of reps short sgemm runs.
function M.flops_fp32_gflops(reps) return exo_measure_flops_fp32(reps or 5) end
function M.dtype_name(d) return ffi.string(exo_dtype_name(d)) end

-- ---- model files ---------------------------------------------------------------

local exo_file_open, exo_file_close = C.exo_file_open, C.exo_file_close
local exo_file_meta_count, exo_file_meta_key, exo_file_meta_type =
  C.exo_file_meta_count, C.exo_file_meta_key, C.exo_file_meta_type
local exo_file_get_str, exo_file_get_int, exo_file_get_float, exo_file_get_bool =
  C.exo_file_get_str, C.exo_file_get_int, C.exo_file_get_float, C.exo_file_get_bool
local exo_file_get_arr_info, exo_file_get_arr_str, exo_file_get_arr_num =
  C.exo_file_get_arr_info, C.exo_file_get_arr_str, C.exo_file_get_arr_num
local exo_file_tensor_count, exo_file_tensor_info = C.exo_file_tensor_count, C.exo_file_tensor_info

local File = {}
File.__index = File
local file_out = ffi.new("exo_file*[1]")
local tensor_ne = ffi.new("int64_t[4]")

-- Opens a GGUF file for its metadata. Returns a File or nil, err.
function M.open_file(path)
  check_type(path, "string", "open_file")
  local rc = exo_file_open(path, file_out)
  if rc ~= 0 then return fail(rc) end
  return setmetatable({ handle = ffi.gc(file_out[0], exo_file_close), path = path }, File)
end

function File:close()
  if self.handle then
    exo_file_close(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

local GGUF_STRING, GGUF_BOOL = C.EXO_GGUF_STRING, C.EXO_GGUF_BOOL
local GGUF_FLOATS = { [C.EXO_GGUF_FLOAT32] = true, [C.EXO_GGUF_FLOAT64] = true }

-- One metadata value: string, number, boolean, or for arrays a table (strings
-- or numbers). Large arrays are read element by element; callers that only
-- need a count use File:array_len.
function File:get(key)
  check_type(key, "string", "File:get")
  local h = self.handle
  if exo_file_get_str(h, key, str1, size1) == 0 then return ffi.string(str1[0], size1[0]) end
  if exo_file_get_arr_info(h, key, int1, u64_1) == 0 then
    local n, t, out = tonumber(u64_1[0]), int1[0], {}
    for j = 0, n - 1 do
      if t == GGUF_STRING then
        exo_file_get_arr_str(h, key, j, str1, size1)
        out[j + 1] = ffi.string(str1[0], size1[0])
      else
        exo_file_get_arr_num(h, key, j, dbl1)
        out[j + 1] = dbl1[0]
      end
    end
    return out
  end
  for i = 0, tonumber(exo_file_meta_count(h)) - 1 do
    if ffi.string(exo_file_meta_key(h, i)) == key then
      local t = exo_file_meta_type(h, i)
      if t == GGUF_BOOL then
        exo_file_get_bool(h, key, int1)
        return int1[0] ~= 0
      elseif GGUF_FLOATS[t] then
        exo_file_get_float(h, key, dbl1)
        return dbl1[0]
      elseif exo_file_get_int(h, key, i64_1) == 0 then
        return tonumber(i64_1[0])
      end
      return fail(exo_file_get_int(h, key, i64_1))
    end
  end
  return nil
end

function File:array_len(key)
  check_type(key, "string", "File:array_len")
  if exo_file_get_arr_info(self.handle, key, int1, u64_1) ~= 0 then return nil end
  return tonumber(u64_1[0])
end

-- Every key with its GGUF value type (enum exo_gguf_type).
function File:keys()
  local out = {}
  for i = 0, tonumber(exo_file_meta_count(self.handle)) - 1 do
    out[#out + 1] = { key = ffi.string(exo_file_meta_key(self.handle, i)), type = exo_file_meta_type(self.handle, i) }
  end
  return out
end

function File:tensors()
  local out = {}
  for i = 0, tonumber(exo_file_tensor_count(self.handle)) - 1 do
    local rc = exo_file_tensor_info(self.handle, i, str1, int1, int1b, tensor_ne, u64_1)
    if rc ~= 0 then return fail(rc) end
    local shape = {}
    for d = 0, int1b[0] - 1 do shape[d + 1] = tonumber(tensor_ne[d]) end
    out[#out + 1] = { name = ffi.string(str1[0]), dtype = M.dtype_name(int1[0]), shape = shape, bytes = tonumber(u64_1[0]) }
  end
  return out
end

-- ---- shards and sequences ---------------------------------------------------------

local exo_shard_load, exo_shard_free, exo_shard_get_info = C.exo_shard_load, C.exo_shard_free, C.exo_shard_get_info
local exo_seq_new, exo_seq_free, exo_seq_pos, exo_seq_n_ctx, exo_seq_truncate =
  C.exo_seq_new, C.exo_seq_free, C.exo_seq_pos, C.exo_seq_n_ctx, C.exo_seq_truncate
local exo_seq_share_prefix, exo_seq_kv_need = C.exo_seq_share_prefix, C.exo_seq_kv_need
local exo_shard_forward = C.exo_shard_forward

local Shard = {}
Shard.__index = Shard
local Seq = {}
Seq.__index = Seq
local shard_out = ffi.new("exo_shard*[1]")
local seq_out = ffi.new("exo_seq*[1]")
local shard_info = ffi.new("exo_shard_info")
local SHARD_INT_FIELDS = { "n_layer", "layer_start", "layer_end", "n_embd", "n_vocab", "n_head", "n_head_kv",
  "head_dim", "n_ff", "n_ctx_train", "max_batch" }

-- The Lua object for a loaded shard handle (freed with it when collected).
local function shard_object(handle, path)
  exo_shard_get_info(handle, shard_info)
  local self = setmetatable({ handle = ffi.gc(handle, exo_shard_free), path = path }, Shard)
  self.arch = ffi.string(shard_info.arch)
  for _, k in ipairs(SHARD_INT_FIELDS) do self[k] = shard_info[k] end
  self.is_first, self.is_last = shard_info.is_first ~= 0, shard_info.is_last ~= 0
  self.weight_bytes = tonumber(shard_info.weight_bytes)
  self.packed_bytes = tonumber(shard_info.packed_bytes)
  return self
end

-- exo_shard_load's range arguments from load_shard's opts.
local function shard_range(what, path, opts)
  check_type(path, "string", what)
  if opts == nil then return 0, -1, -1, -1 end
  check_type(opts, "table", what .. " options")
  local first = opts.first == nil and -1 or (opts.first and 1 or 0)
  local last = opts.last == nil and -1 or (opts.last and 1 or 0)
  return opts.start or 0, opts.stop or -1, first, last
end

-- Loads layers [start, stop) of the model at path on the calling thread
-- (exo run, bench, tests; a server's loop thread uses M.submit_load_shard).
-- opts: start (0), stop (all), first / last (booleans; derived from the range
-- when nil).
-- The type safetensors models' matrices are quantized to when a shard loads
-- ("q8_0", "q4_0", "q4_k"; nil or "" keeps them), for the whole process.
local exo_safetensors_set_quantize = C.exo_safetensors_set_quantize
function M.set_safetensors_quantize(type_name)
  if type_name ~= nil then check_type(type_name, "string", "set_safetensors_quantize") end
  local rc = exo_safetensors_set_quantize(type_name)
  if rc ~= 0 then return fail(rc) end
  return true
end

function M.load_shard(path, opts)
  local start, stop, first, last = shard_range("load_shard", path, opts)
  local rc = exo_shard_load(path, start, stop, first, last, shard_out)
  if rc ~= 0 then return fail(rc) end
  return shard_object(shard_out[0], path)
end

function Shard:free()
  if self.handle then
    exo_shard_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

-- The KV pool (exo.h): set_kv_tokens(n) sizes it to n positions shared by
-- the shard's sequences (once, before the first sequence); kv_info() says
-- how it stands: { block_len, budget, blocks, free, reserved, sequences,
-- block_bytes, shared } (budget 0: no budget, each sequence reserves its
-- context; shared: blocks several sequences hold, each counted once).
local exo_shard_set_kv_tokens, exo_shard_kv_info = C.exo_shard_set_kv_tokens, C.exo_shard_kv_info
local kv_info = ffi.new("exo_kv_info")
function Shard:set_kv_tokens(n_tokens)
  check_type(n_tokens, "number", "Shard:set_kv_tokens")
  local rc = exo_shard_set_kv_tokens(self.handle, n_tokens)
  if rc ~= 0 then return fail(rc) end
  return true
end
function Shard:kv_info()
  exo_shard_kv_info(self.handle, kv_info)
  return { block_len = kv_info.block_len, budget = kv_info.budget, blocks = kv_info.blocks, free = kv_info.free,
    reserved = kv_info.reserved, sequences = kv_info.sequences, block_bytes = tonumber(kv_info.block_bytes),
    shared = kv_info.shared }
end

-- A new KV-cache sequence of n_ctx positions (default: the model's context).
function Shard:new_seq(n_ctx)
  if n_ctx ~= nil then check_type(n_ctx, "number", "Shard:new_seq") end
  local rc = exo_seq_new(self.handle, n_ctx or 0, seq_out)
  if rc ~= 0 then return fail(rc) end
  -- The sequence keeps its shard alive: C frees the seq before the shard.
  return setmetatable({ handle = ffi.gc(seq_out[0], exo_seq_free), shard = self }, Seq)
end

function Seq:pos() return exo_seq_pos(self.handle) end
function Seq:n_ctx() return exo_seq_n_ctx(self.handle) end
function Seq:truncate(pos)
  check_type(pos, "number", "Seq:truncate")
  local rc = exo_seq_truncate(self.handle, pos)
  if rc ~= 0 then return fail(rc) end
  return true
end
-- This (empty) sequence starts as src's first n positions, holding src's
-- full blocks too (exo_seq_share_prefix).
function Seq:share_prefix(src, n)
  if getmetatable(src) ~= Seq then error("Seq:share_prefix: src must be a sequence", 2) end
  check_type(n, "number", "Seq:share_prefix")
  local rc = exo_seq_share_prefix(self.handle, src.handle, n)
  if rc ~= 0 then return fail(rc) end
  return true
end
-- Free blocks of the pool this sequence would use (negative: give back) to
-- hold n_pos positions after a truncation to keep (exo_seq_kv_need).
function Seq:kv_need(keep, n_pos)
  check_type(keep, "number", "Seq:kv_need")
  check_type(n_pos, "number", "Seq:kv_need")
  local rc = exo_seq_kv_need(self.handle, keep, n_pos, int1)
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end
function Seq:free()
  if self.handle then
    exo_seq_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

-- Output buffer for a forward of n tokens: logits or hidden states.
function Shard:output_buffer(n_tokens, all_logits)
  local width = self.is_last and self.n_vocab or self.n_embd
  local rows = (self.is_last and not all_logits) and 1 or n_tokens
  return ffi.new("float[?]", rows * width), rows, width
end

-- Runs input (a Lua array of token ids, or an int32_t*/float* cdata with n)
-- through the shard, blocking the caller. Returns the output buffer (float*)
-- or nil, err. For the asynchronous path see Shard:submit.
function Shard:forward(seq, input, n, all_logits, out)
  local tokens, hidden
  if type(input) == "table" then
    n = #input
    tokens = ffi.new("int32_t[?]", n, input)
  elseif self.is_first then
    tokens = input
  else
    hidden = input
  end
  if type(n) ~= "number" or n < 1 then error("Shard:forward: token count required", 2) end
  out = out or self:output_buffer(n, all_logits)
  local rc = exo_shard_forward(self.handle, seq.handle, tokens, hidden, n, all_logits and 1 or 0, out)
  if rc ~= 0 then return fail(rc) end
  return out
end

-- Several sequences in one pass (exo_shard_forward_batch): a Batch holds the
-- per-sequence arrays C reads, allocated once for up to cap sequences and
-- refilled each step, so a step allocates nothing.
local exo_shard_forward_batch = C.exo_shard_forward_batch
local Batch = {}
Batch.__index = Batch

function M.new_batch(cap)
  check_type(cap, "number", "new_batch")
  return setmetatable({ cap = cap, n = 0, seqs = ffi.new("exo_seq*[?]", cap),
    tokens = ffi.new("const int32_t*[?]", cap), hidden = ffi.new("const float*[?]", cap),
    n_tokens = ffi.new("int[?]", cap), n_logits = ffi.new("int[?]", cap), out = ffi.new("float*[?]", cap) }, Batch)
end

function Batch:clear() self.n = 0 end

-- Adds a sequence's rows: input (int32_t* token ids or float* hidden
-- states, n rows), the logits of its last n_logits rows (or hidden states)
-- to out. The caller keeps input and out alive until the pass completes.
function Batch:add(seq, input, n, n_logits, out)
  local i = self.n
  if i >= self.cap then error("Batch:add: more than " .. self.cap .. " sequences", 2) end
  if type(n) ~= "number" or n < 1 then error("Batch:add: row count required", 2) end
  self.seqs[i], self.n_tokens[i], self.n_logits[i], self.out[i] = seq.handle, n, n_logits or 0, out
  if seq.shard.is_first then self.tokens[i], self.hidden[i] = input, nil else self.tokens[i], self.hidden[i] = nil, input end
  self.n = i + 1
  return i
end

-- Runs a Batch through the shard, blocking the caller. Returns true or nil, err.
function Shard:forward_batch(b)
  local rc = exo_shard_forward_batch(self.handle, b.n, b.seqs, b.tokens, b.hidden, b.n_tokens, b.n_logits, b.out)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- ---- the engine thread ------------------------------------------------------------

local exo_engine_fd, exo_engine_submit, exo_engine_next_completion =
  C.exo_engine_fd, C.exo_engine_submit, C.exo_engine_next_completion
local exo_engine_submit_load, exo_engine_submit_load_tokenizer =
  C.exo_engine_submit_load, C.exo_engine_submit_load_tokenizer
local exo_engine_take_shard, exo_engine_take_tokenizer = C.exo_engine_take_shard, C.exo_engine_take_tokenizer

-- Submits a forward pass to the engine thread. The caller keeps input and out
-- alive until the completion for job_id arrives (M.engine_drain).
function Shard:submit(seq, tokens, hidden, n, all_logits, out, job_id)
  local rc = exo_engine_submit(self.handle, seq.handle, tokens, hidden, n, all_logits and 1 or 0, out, job_id)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- Submits a Batch to the engine thread (exo_engine_submit_batch); the
-- caller keeps it and its buffers alive until job_id's completion.
local exo_engine_submit_batch = C.exo_engine_submit_batch
function Shard:submit_batch(b, job_id)
  local rc = exo_engine_submit_batch(self.handle, b.n, b.seqs, b.tokens, b.hidden, b.n_tokens, b.n_logits, b.out,
    job_id)
  if rc ~= 0 then return fail(rc) end
  return true
end

function M.engine_fd() return exo_engine_fd() end

-- Loads queued and not completed yet: job id -> { take = fn(id, path), path }.
local pending_loads = {}

local function take_shard(id, path)
  local rc = exo_engine_take_shard(id, shard_out)
  if rc ~= 0 then return fail(rc) end
  return shard_object(shard_out[0], path)
end

-- Queues a shard load on the engine thread: load_shard's arguments, and the
-- job id its completion will carry (M.engine_drain hands the Shard over).
-- Returns true, or nil, err when it could not be queued.
function M.submit_load_shard(path, opts, job_id)
  local start, stop, first, last = shard_range("submit_load_shard", path, opts)
  check_type(job_id, "number", "submit_load_shard job id")
  local rc = exo_engine_submit_load(path, start, stop, first, last, job_id)
  if rc ~= 0 then return fail(rc) end
  pending_loads[job_id] = { take = take_shard, path = path }
  return true
end

local ERR_CAP = 256 -- engine.c keeps this much of a failed job's message
local err_buf = ffi.new("char[?]", ERR_CAP)
local status1 = ffi.new("int[1]")
-- Calls fn(job_id, ok, err, loaded) for every completion waiting: loaded is
-- the Shard or tokenizer a load job produced (nil for a forward pass), err
-- "ECODE: message" when the job failed. The forward path allocates nothing.
function M.engine_drain(fn)
  while exo_engine_next_completion(u64_1, status1, err_buf, ERR_CAP) == 1 do
    local id, ok = tonumber(u64_1[0]), status1[0] == 0
    local err = not ok and ffi.string(exo_error_name(status1[0])) .. ": " .. ffi.string(err_buf) or nil
    local loaded
    local load = pending_loads[id]
    if load then
      pending_loads[id] = nil
      if ok then
        loaded, err = load.take(id, load.path)
        ok = loaded ~= nil
      end
    end
    fn(id, ok, err, loaded)
  end
end

-- ---- sampling primitives ------------------------------------------------------------
--
-- These run on the per-token path, which the JIT compiles: no tables or
-- closures here. Wrong argument types raise in the FFI's own conversions;
-- values are C's to check, and its failures come back as nil, err.

local exo_sample_argmax, exo_sample_penalties, exo_sample_candidates =
  C.exo_sample_argmax, C.exo_sample_penalties, C.exo_sample_candidates
local exo_sample_log_softmax, exo_sample_probs, exo_sample_draw, exo_sample_residual =
  C.exo_sample_log_softmax, C.exo_sample_probs, C.exo_sample_draw, C.exo_sample_residual

-- Index of the largest of n floats (ties: the lowest index). Its only failure
-- is misuse (no values), which raises.
function M.argmax(p, n)
  local id = exo_sample_argmax(p, n)
  if id < 0 then error(select(2, fail(id)), 2) end
  return id
end

-- Repetition, presence and frequency penalties over the n_recent ids of
-- recent, applied to logits in place.
function M.sample_penalties(logits, n_vocab, recent, n_recent, repeat_penalty, presence, frequency)
  local rc = exo_sample_penalties(logits, n_vocab, recent, n_recent, repeat_penalty, presence, frequency)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- The truncated distribution into ids_out / probs_out (cap entries at most);
-- returns its size.
function M.sample_candidates(logits, n_vocab, temperature, top_k, top_p, min_p, ids_out, probs_out, cap)
  local rc = exo_sample_candidates(logits, n_vocab, temperature, top_k, top_p, min_p, ids_out, probs_out, cap, int1)
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end

-- The same distribution dense in probs_out[n_vocab] (ids and probs scratch:
-- n_vocab each, nil without truncation).
function M.sample_probs(logits, n_vocab, temperature, top_k, top_p, min_p, ids_scratch, probs_scratch, probs_out)
  local rc = exo_sample_probs(logits, n_vocab, temperature, top_k, top_p, min_p, ids_scratch, probs_scratch, probs_out)
  if rc ~= 0 then return fail(rc) end
  return probs_out
end

function M.sample_log_softmax(logits, n, out)
  local rc = exo_sample_log_softmax(logits, n, out)
  if rc ~= 0 then return fail(rc) end
  return out
end

-- A draw with u in [0, 1) from a dense distribution; nil, err when it is all zero.
function M.sample_draw(probs, n, u)
  local id = exo_sample_draw(probs, n, u)
  if id < 0 then return fail(id) end
  return id
end

-- A draw from norm(max(0, p - q)); nil, err when p <= q everywhere.
function M.sample_residual(p, q, n, u)
  local id = exo_sample_residual(p, q, n, u)
  if id < 0 then return fail(id) end
  return id
end

-- ---- tokenizers ---------------------------------------------------------------------

local exo_tokenizer_load, exo_tokenizer_free = C.exo_tokenizer_load, C.exo_tokenizer_free
local exo_tokenizer_decode = C.exo_tokenizer_decode
local exo_tokenizer_encode_spans = C.exo_tokenizer_encode_spans
local exo_tokenizer_decode_stream, exo_tokenizer_decode_stream_flush =
  C.exo_tokenizer_decode_stream, C.exo_tokenizer_decode_stream_flush
local exo_tokenizer_token_piece, exo_tokenizer_token_text, exo_tokenizer_find =
  C.exo_tokenizer_token_piece, C.exo_tokenizer_token_text, C.exo_tokenizer_find
local exo_tokenizer_n_vocab, exo_tokenizer_bos, exo_tokenizer_eos, exo_tokenizer_eot, exo_tokenizer_add_bos =
  C.exo_tokenizer_n_vocab, C.exo_tokenizer_bos, C.exo_tokenizer_eos, C.exo_tokenizer_eot, C.exo_tokenizer_add_bos
local exo_tokenizer_is_eog, exo_tokenizer_token_type = C.exo_tokenizer_is_eog, C.exo_tokenizer_token_type
local exo_tokenizer_model, exo_tokenizer_pre, exo_tokenizer_warning =
  C.exo_tokenizer_model, C.exo_tokenizer_pre, C.exo_tokenizer_warning
local ERANGE = C.EXO_ERANGE

local Tokenizer = {}
Tokenizer.__index = Tokenizer
local Stream = {}
Stream.__index = Stream

-- Scratch buffers shared by every tokenizer (the loop thread is the only
-- caller); they grow when a call needs more.
local ids_cap = 4096
local ids_buf = ffi.new("int32_t[?]", ids_cap)
local text_cap = 16384
local text_buf = ffi.new("char[?]", text_cap)
local tokenizer_out = ffi.new("exo_tokenizer*[1]")

local function opt_id(id) return id >= 0 and id or nil end

-- The Lua object for a loaded tokenizer handle (freed with it when collected).
local function tokenizer_object(h, path)
  h = ffi.gc(h, exo_tokenizer_free)
  local warning = ffi.string(exo_tokenizer_warning(h))
  return setmetatable({
    handle = h,
    path = path,
    n_vocab = exo_tokenizer_n_vocab(h),
    bos = opt_id(exo_tokenizer_bos(h)),
    eos = opt_id(exo_tokenizer_eos(h)),
    eot = opt_id(exo_tokenizer_eot(h)),
    add_bos = exo_tokenizer_add_bos(h) ~= 0,
    model = ffi.string(exo_tokenizer_model(h)),
    pre = ffi.string(exo_tokenizer_pre(h)),
    warning = warning ~= "" and warning or nil,
  }, Tokenizer)
end

-- Loads the tokenizer of the GGUF file at path on the calling thread. Returns
-- a Tokenizer or nil, err (exo.tokenizer documents its methods).
function M.load_tokenizer(path)
  check_type(path, "string", "tokenizer.load")
  local rc = exo_tokenizer_load(path, tokenizer_out)
  if rc ~= 0 then return fail(rc) end
  return tokenizer_object(tokenizer_out[0], path)
end

local function take_tokenizer(id, path)
  local rc = exo_engine_take_tokenizer(id, tokenizer_out)
  if rc ~= 0 then return fail(rc) end
  return tokenizer_object(tokenizer_out[0], path)
end

-- Queues a tokenizer load on the engine thread (as M.submit_load_shard).
function M.submit_load_tokenizer(path, job_id)
  check_type(path, "string", "submit_load_tokenizer")
  check_type(job_id, "number", "submit_load_tokenizer job id")
  local rc = exo_engine_submit_load_tokenizer(path, job_id)
  if rc ~= 0 then return fail(rc) end
  pending_loads[job_id] = { take = take_tokenizer, path = path }
  return true
end

function Tokenizer:free()
  if self.handle then
    exo_tokenizer_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

-- Encodes into the scratch buffer; returns the count (the ids are in
-- ids_buf[0..n-1] until the next call) or nil, err. opts.plain: a list of
-- {first, last} byte spans (1-based, inclusive) where control tokens are not
-- recognised even with opts.special (a chat prompt's message content).
local function encode_raw(self, text, opts)
  check_type(text, "string", "Tokenizer:encode")
  local add_bos, special, plain, n_plain = -1, 0, nil, 0
  if opts ~= nil then
    check_type(opts, "table", "Tokenizer:encode options")
    if opts.add_bos ~= nil then add_bos = opts.add_bos and 1 or 0 end
    special = opts.special and 1 or 0
    if opts.plain and #opts.plain > 0 then
      n_plain = #opts.plain
      plain = ffi.new("size_t[?]", 2 * n_plain)
      for i, span in ipairs(opts.plain) do
        plain[2 * i - 2], plain[2 * i - 1] = span[1] - 1, span[2]
      end
    end
  end
  local rc = exo_tokenizer_encode_spans(self.handle, text, #text, add_bos, special, plain, n_plain, ids_buf, ids_cap,
    int1)
  if rc == ERANGE and int1[0] > ids_cap then
    ids_cap = int1[0]
    ids_buf = ffi.new("int32_t[?]", ids_cap)
    rc = exo_tokenizer_encode_spans(self.handle, text, #text, add_bos, special, plain, n_plain, ids_buf, ids_cap, int1)
  end
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end

function Tokenizer:encode(text, opts)
  local n, err, code = encode_raw(self, text, opts)
  if not n then return nil, err, code end
  local out = {}
  for i = 0, n - 1 do out[i + 1] = ids_buf[i] end
  return out
end

function Tokenizer:encode_buffer(text, opts)
  local n, err, code = encode_raw(self, text, opts)
  if not n then return nil, err, code end
  local buf = ffi.new("int32_t[?]", math.max(n, 1))
  ffi.copy(buf, ids_buf, n * 4)
  return buf, n
end

-- Runs a decode call into text_buf, growing it once when C says it needs more.
local function into_text(fn, a, b, c, d)
  local rc = fn(a, b, c, d, text_buf, text_cap, size1)
  if rc == ERANGE and size1[0] > text_cap then
    text_cap = tonumber(size1[0])
    text_buf = ffi.new("char[?]", text_cap)
    rc = fn(a, b, c, d, text_buf, text_cap, size1)
  end
  if rc ~= 0 then return fail(rc) end
  return ffi.string(text_buf, size1[0])
end

function Tokenizer:decode(ids, opts, n)
  local arr
  if type(ids) == "table" then
    n = #ids
    arr = ffi.new("int32_t[?]", math.max(n, 1), ids)
  else
    if type(n) ~= "number" then error("Tokenizer:decode: count required with a cdata array", 2) end
    arr = ids
  end
  return into_text(exo_tokenizer_decode, self.handle, arr, n, opts and opts.special and 1 or 0)
end

function Tokenizer:piece(id)
  check_type(id, "number", "Tokenizer:piece")
  local rc = exo_tokenizer_token_piece(self.handle, id, str1, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(str1[0], size1[0])
end

function Tokenizer:text(id)
  check_type(id, "number", "Tokenizer:text")
  local rc = exo_tokenizer_token_text(self.handle, id, str1, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(str1[0], size1[0])
end

function Tokenizer:find(text)
  check_type(text, "string", "Tokenizer:find")
  return opt_id(exo_tokenizer_find(self.handle, text, #text))
end

function Tokenizer:is_eog(id) return exo_tokenizer_is_eog(self.handle, id) ~= 0 end

function Tokenizer:token_type(id)
  local t = exo_tokenizer_token_type(self.handle, id)
  return t >= 0 and t or nil
end

function Tokenizer:stream(opts)
  return setmetatable({ tok = self, state = ffi.new("exo_tokenizer_stream"), special = opts and opts.special and 1 or 0 },
    Stream)
end

function Stream:push(id)
  check_type(id, "number", "Stream:push")
  return into_text(exo_tokenizer_decode_stream, self.tok.handle, self.state, id, self.special)
end

function Stream:flush()
  local rc = exo_tokenizer_decode_stream_flush(self.tok.handle, self.state, text_buf, text_cap, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(text_buf, size1[0])
end

-- ---- constrained sampling --------------------------------------------------------

local exo_json_grammar_new, exo_json_grammar_free = C.exo_json_grammar_new, C.exo_json_grammar_free
local exo_json_grammar_reset, exo_json_grammar_mask = C.exo_json_grammar_reset, C.exo_json_grammar_mask
local exo_json_grammar_accept, exo_json_grammar_done = C.exo_json_grammar_accept, C.exo_json_grammar_done
local exo_json_grammar_check = C.exo_json_grammar_check
local exo_json_grammar_schema_node, exo_json_grammar_schema_property = C.exo_json_grammar_schema_node,
  C.exo_json_grammar_schema_property
local exo_json_grammar_schema_enum, exo_json_grammar_schema_root = C.exo_json_grammar_schema_enum,
  C.exo_json_grammar_schema_root

local JsonGrammar = {}
JsonGrammar.__index = JsonGrammar
local json_grammar_out = ffi.new("exo_json_grammar*[1]")

local TYPE_BITS = { object = 1, array = 2, string = 4, number = 8, integer = 16, boolean = 32, null = 64 }
local SCHEMA_KEYWORDS = { type = true, properties = true, required = true, items = true, enum = true,
  additionalProperties = true, title = true, description = true, default = true, examples = true,
  ["$schema"] = true, ["$id"] = true, strict = true, format = true }

-- A JSON string's inner text, as the grammar compares it (JSON's escapes).
local function json_inner(s)
  local encoded = require("cjson").encode(s)
  return encoded:sub(2, -2)
end

-- Builds schema (a decoded JSON schema) into the grammar; returns its node or nil, err.
local function build_schema(handle, schema, path)
  if type(schema) ~= "table" then return nil, path .. " must be an object" end
  for k in pairs(schema) do
    if not SCHEMA_KEYWORDS[k] then return nil, ("%s: '%s' is not supported (type, properties, required, items and "
      .. "string enums are)"):format(path, tostring(k)) end
  end
  local types = 0
  local t = schema.type
  for _, name in ipairs(type(t) == "table" and t or { t }) do
    if not TYPE_BITS[name] then return nil, ("%s.type: '%s' is not a JSON schema type"):format(path, tostring(name)) end
    types = types + TYPE_BITS[name]
  end
  if schema.additionalProperties ~= nil and schema.additionalProperties ~= false and type(schema.properties) == "table"
    and next(schema.properties) then
    return nil, path .. ": an object with properties takes no others here (additionalProperties false)"
  end
  local items = -1
  if schema.items ~= nil then
    local err
    items, err = build_schema(handle, schema.items, path .. ".items")
    if not items then return nil, err end
  end
  local props = {}
  if type(schema.properties) == "table" then
    local names = {}
    for name in pairs(schema.properties) do names[#names + 1] = name end
    table.sort(names)
    local required = {}
    for _, r in ipairs(type(schema.required) == "table" and schema.required or {}) do required[r] = true end
    for _, name in ipairs(names) do
      local child, err = build_schema(handle, schema.properties[name], path .. ".properties." .. name)
      if not child then return nil, err end
      props[#props + 1] = { name = json_inner(name), node = child, required = required[name] and 1 or 0 }
    end
  end
  local node = exo_json_grammar_schema_node(handle, types, items)
  if node < 0 then return fail(node) end
  for _, p in ipairs(props) do
    local rc = exo_json_grammar_schema_property(handle, node, p.name, #p.name, p.node, p.required)
    if rc ~= 0 then return fail(rc) end
  end
  if schema.enum ~= nil then
    if type(schema.enum) ~= "table" or #schema.enum == 0 then return nil, path .. ".enum must be a non-empty list" end
    for _, v in ipairs(schema.enum) do
      if type(v) ~= "string" then return nil, path .. ".enum: only strings are supported" end
      local text = json_inner(v)
      local rc = exo_json_grammar_schema_enum(handle, node, text, #text)
      if rc ~= 0 then return fail(rc) end
    end
  end
  return node
end

-- A JSON-object grammar over tok's vocabulary (sampling.lua applies it:
-- mask before each draw, accept after); with schema (a decoded JSON schema:
-- type, properties, required, items, string enums) the object follows it.
-- Returns the grammar or nil, err (a schema it cannot follow is named).
function M.json_grammar(tok, schema)
  local rc = exo_json_grammar_new(tok.handle, json_grammar_out)
  if rc ~= 0 then return fail(rc) end
  -- The grammar keeps pointers into the tokenizer: hold it.
  local g = setmetatable({ handle = ffi.gc(json_grammar_out[0], exo_json_grammar_free), tok = tok }, JsonGrammar)
  if schema ~= nil then
    local root, err = build_schema(g.handle, schema, "schema")
    if not root then return nil, err end
    rc = exo_json_grammar_schema_root(g.handle, root)
    if rc ~= 0 then return fail(rc) end
  end
  return g
end

function JsonGrammar:reset() exo_json_grammar_reset(self.handle) end
function JsonGrammar:done() return exo_json_grammar_done(self.handle) ~= 0 end

-- Sets -inf on the logits (float*, n) of tokens that cannot come next.
function JsonGrammar:mask(logits, n)
  local rc = exo_json_grammar_mask(self.handle, logits, n)
  if rc ~= 0 then return fail(rc) end
  return true
end

function JsonGrammar:accept(id)
  local rc = exo_json_grammar_accept(self.handle, id)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- Whether text is exactly one JSON object.
function M.json_object_check(text)
  check_type(text, "string", "json_object_check")
  return exo_json_grammar_check(text, #text) ~= 0
end

-- ---- HTTP parsing ----------------------------------------------------------------

local exo_http_parse_head, exo_http_chunked_decode = C.exo_http_parse_head, C.exo_http_chunked_decode
local ENOMEM = C.EXO_ENOMEM

local http_request = ffi.new("exo_http_request")

-- Parses the request head at the start of buf. Returns its length and the
-- parsed request (an exo_http_request the next call overwrites), 0 when more
-- bytes are needed, or nil, message, status (the status to answer with).
function M.http_parse_head(buf, max_head)
  check_type(buf, "string", "http_parse_head")
  local n = exo_http_parse_head(buf, #buf, max_head, http_request)
  if n < 0 then
    return nil, ffi.string(exo_last_error()), http_request.status > 0 and http_request.status or 400
  end
  return n, http_request
end

local Chunked = {}
Chunked.__index = Chunked
-- Decoded bytes land here; it grows to the largest input seen.
local chunk_cap = 65536
local chunk_buf = ffi.new("char[?]", chunk_cap)

-- A decoder for one chunked request body.
function M.http_chunked()
  return setmetatable({ state = ffi.new("exo_http_chunked") }, Chunked)
end

-- Decodes what buf holds: returns the body bytes it gave, the input bytes
-- used and whether the body is complete; or nil, message, status.
function Chunked:decode(buf, max_body)
  check_type(buf, "string", "Chunked:decode")
  local n = #buf
  if n > chunk_cap then
    chunk_cap = n
    chunk_buf = ffi.new("char[?]", chunk_cap)
  end
  ffi.copy(chunk_buf, buf, n)
  local rc = exo_http_chunked_decode(self.state, chunk_buf, n, max_body, size1, size1b, int1)
  if rc ~= 0 then return nil, ffi.string(exo_last_error()), rc == ENOMEM and 413 or 400 end
  return ffi.string(chunk_buf, size1b[0]), tonumber(size1[0]), int1[0] ~= 0
end

-- ---- the wire ---------------------------------------------------------------------

local exo_wire_new, exo_wire_free, exo_wire_fd, exo_wire_set_hello = C.exo_wire_new, C.exo_wire_free, C.exo_wire_fd,
  C.exo_wire_set_hello
local exo_wire_set_key = C.exo_wire_set_key
local exo_wire_announce_seal, exo_wire_announce_open = C.exo_wire_announce_seal, C.exo_wire_announce_open
local announce_buf = ffi.new("uint8_t[?]", 8192)
local exo_wire_listen, exo_wire_connect, exo_wire_close = C.exo_wire_listen, C.exo_wire_connect, C.exo_wire_close
local exo_wire_send_control, exo_wire_send_tokens, exo_wire_ping = C.exo_wire_send_control, C.exo_wire_send_tokens,
  C.exo_wire_ping
local exo_wire_next_event, exo_wire_get_stats = C.exo_wire_next_event, C.exo_wire_get_stats
local exo_wire_route_open, exo_wire_route_allow, exo_wire_route_close, exo_wire_route_output =
  C.exo_wire_route_open, C.exo_wire_route_allow, C.exo_wire_route_close, C.exo_wire_route_output
local exo_wire_collect_open = C.exo_wire_collect_open
local ALL_LOGITS = C.EXO_WIRE_TENSOR_ALL_LOGITS

local Wire = {}
Wire.__index = Wire
M.WIRE_EVENTS = { [C.EXO_WIRE_EV_PEER] = "peer", [C.EXO_WIRE_EV_CLOSED] = "closed",
  [C.EXO_WIRE_EV_CONTROL] = "control", [C.EXO_WIRE_EV_OUTPUT] = "output", [C.EXO_WIRE_EV_FAILED] = "failed",
  [C.EXO_WIRE_EV_PONG] = "pong", [C.EXO_WIRE_EV_SHARE] = "share", [C.EXO_WIRE_EV_SHARE_END] = "share_end",
  [C.EXO_WIRE_EV_HASHED] = "hashed" }
-- A "share_end" event's value when the bytes were not the promised file's.
M.WIRE_SHARE_REJECTED = C.EXO_EFORMAT
M.WIRE_DTYPES = { f32 = C.EXO_DTYPE_F32, f16 = C.EXO_DTYPE_F16, q8_0 = C.EXO_DTYPE_Q8_0 }
-- A request's logits come back to its asker as this request id plus this.
M.WIRE_REPLY_OFFSET = 2 ^ C.EXO_WIRE_REPLY_SHIFT
local wire_out = ffi.new("exo_wire*[1]")

-- A transport on the host's loop, saying hello (a string) on every connection.
function M.wire_new(hello)
  check_type(hello, "string", "wire_new")
  local rc = exo_wire_new(nil, hello, #hello, wire_out)
  if rc ~= 0 then return fail(rc) end
  return setmetatable({ handle = wire_out[0], ev = ffi.new("exo_wire_event"), stats_buf = ffi.new("exo_wire_stats"),
    out_ptr = ffi.new("const float*[1]"), out_rows = ffi.new("int[1]"), out_pos = ffi.new("int[1]"),
    tok_buf = ffi.new("int32_t[1]") }, Wire)
end

function Wire:fd() return exo_wire_fd(self.handle) end

function Wire:set_hello(hello)
  check_type(hello, "string", "Wire:set_hello")
  local rc = exo_wire_set_hello(self.handle, hello, #hello)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- A cluster key (a string of 16 bytes or more): from now on a connection is
-- admitted only after both sides prove they hold it, and its frames are
-- sealed (docs/wire.md, "Keyed clusters"). Deriving the key takes a fraction
-- of a second (Argon2id): call it once, before listen and connect.
function Wire:set_key(key)
  check_type(key, "string", "Wire:set_key")
  local rc = exo_wire_set_key(self.handle, key, #key)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- UDP discovery's datagrams: the announcement JSON sealed with the cluster key
-- (in the clear for an open cluster), and back. open's errors carry the code
-- that says why: EFORMAT malformed, ERANGE too long, ENOTSUP another
-- cluster's, ESTATE not authentic.
function Wire:announce_seal(json_text)
  check_type(json_text, "string", "Wire:announce_seal")
  local rc = exo_wire_announce_seal(self.handle, json_text, #json_text, announce_buf, 8192, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(announce_buf, size1[0])
end

function Wire:announce_open(datagram)
  check_type(datagram, "string", "Wire:announce_open")
  local rc = exo_wire_announce_open(self.handle, datagram, #datagram, announce_buf, 8192, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(announce_buf, size1[0])
end

function Wire:listen(host, port)
  check_type(host, "string", "Wire:listen")
  local rc = exo_wire_listen(self.handle, host, port, int1)
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end

-- Returns the connection id; a "peer" or "closed" event follows.
function Wire:connect(host, port)
  check_type(host, "string", "Wire:connect")
  local rc = exo_wire_connect(self.handle, host, port, int1)
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end

function Wire:close_conn(conn, reason) exo_wire_close(self.handle, conn, reason) end

function Wire:send_control(conn, request_id, text)
  check_type(text, "string", "Wire:send_control")
  local rc = exo_wire_send_control(self.handle, conn, request_id, text, #text)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- ids: a Lua array, or an int32_t* with n.
function Wire:send_tokens(conn, request_id, position, ids, n, all_logits)
  local buf = ids
  if type(ids) == "table" then
    n = #ids
    buf = n == 1 and self.tok_buf or ffi.new("int32_t[?]", n)
    for i = 1, n do buf[i - 1] = ids[i] end
  end
  local rc = exo_wire_send_tokens(self.handle, conn, request_id, position, buf, n, all_logits and ALL_LOGITS or 0)
  if rc ~= 0 then return fail(rc) end
  return true
end

function Wire:ping(conn) return exo_wire_ping(self.handle, conn) == 0 end

-- Calls fn(kind, conn, request_id, data, value, address) for every event waiting.
function Wire:drain(fn)
  local ev = self.ev
  while exo_wire_next_event(self.handle, ev) == 1 do
    fn(M.WIRE_EVENTS[ev.type], ev.conn, tonumber(ev.request_id), ffi.string(ev.data, ev.len), tonumber(ev.value),
      ffi.string(ev.address))
  end
end

-- The route takes the sequence over (C frees it when the route closes).
function Wire:route_open(request_id, shard, seq, next_conn, wire_dtype)
  local rc = exo_wire_route_open(self.handle, request_id, shard.handle, seq.handle, next_conn,
    wire_dtype or M.WIRE_DTYPES.f32)
  if rc ~= 0 then return fail(rc) end
  ffi.gc(seq.handle, nil)
  seq.handle = nil
  return true
end

function Wire:route_close(request_id) exo_wire_route_close(self.handle, request_id) end

-- Rows for request_id are taken only from the allowed connections (0: this node).
function Wire:route_allow(request_id, conn)
  local rc = exo_wire_route_allow(self.handle, request_id, conn)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- A collector route: logits rows sent here for request_id raise "output" events.
function Wire:collect_open(request_id, n_vocab)
  local rc = exo_wire_collect_open(self.handle, request_id, n_vocab)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- The logits of a last-shard route: float*, rows, position of the first row.
function Wire:route_output(request_id)
  local rc = exo_wire_route_output(self.handle, request_id, self.out_ptr, self.out_rows, self.out_pos)
  if rc ~= 0 then return fail(rc) end
  return self.out_ptr[0], self.out_rows[0], self.out_pos[0]
end

-- Model files between peers (docs/wire.md, "Sharing model files"; exo.share
-- decides who serves what). Receiving: returns the offset the transfer
-- continues from (a partial kept from before); "share" events report bytes on
-- disk, one "share_end" event says how it ended.
local share_offset = ffi.new("int64_t[1]")
function Wire:share_receive(conn, transfer_id, dest, size, sha256)
  check_type(dest, "string", "Wire:share_receive")
  check_type(sha256, "string", "Wire:share_receive")
  local rc = C.exo_wire_share_receive(self.handle, conn, transfer_id, dest, size, sha256, share_offset)
  if rc ~= 0 then return fail(rc) end
  return tonumber(share_offset[0])
end

function Wire:share_send(conn, transfer_id, path, offset, size, credit)
  check_type(path, "string", "Wire:share_send")
  local rc = C.exo_wire_share_send(self.handle, conn, transfer_id, path, offset, size, credit)
  if rc ~= 0 then return fail(rc) end
  return true
end

function Wire:share_credit(conn, transfer_id, bytes) C.exo_wire_share_credit(self.handle, conn, transfer_id, bytes) end
function Wire:share_cancel(conn, transfer_id) C.exo_wire_share_cancel(self.handle, conn, transfer_id) end

-- Hashes a file on libuv's thread pool; a "hashed" event for id carries the
-- hex digest (value 0) or why not (value < 0).
function Wire:hash_file(id, path)
  check_type(path, "string", "Wire:hash_file")
  local rc = C.exo_wire_hash_file(self.handle, id, path)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- The SHA-256 of a file as 64 lowercase hex digits, or nil, err.
local sha_buf = ffi.new("char[65]")
function M.file_sha256(path)
  check_type(path, "string", "file_sha256")
  local rc = C.exo_wire_file_sha256(path, sha_buf)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(sha_buf, 64)
end

function Wire:stats()
  local s = self.stats_buf
  exo_wire_get_stats(self.handle, s)
  return {
    frames_sent = tonumber(s.frames_sent), frames_received = tonumber(s.frames_received),
    bytes_sent = tonumber(s.bytes_sent), bytes_received = tonumber(s.bytes_received),
    tensor_bytes_sent = tonumber(s.tensor_bytes_sent), frames_rejected = tonumber(s.frames_rejected),
    tensors_dropped = tonumber(s.tensors_dropped), connections = s.connections, routes = s.routes,
    in_flight = s.in_flight, passes = tonumber(s.passes), pass_total_ns = tonumber(s.pass_total_ns),
    pass_compute_ns = tonumber(s.pass_compute_ns), auth_refused = tonumber(s.auth_refused), keyed = s.keyed ~= 0,
    batch_frames_sent = tonumber(s.batch_frames_sent), batch_parts_sent = tonumber(s.batch_parts_sent),
    batch_frames_received = tonumber(s.batch_frames_received),
  }
end

function Wire:free()
  if self.handle then
    exo_wire_free(self.handle)
    self.handle = nil
  end
end

-- ---- downloads and HTTP requests (download.c) ---------------------------------------
--
-- Jobs run on threads of their own; lua/exo/download.lua polls download_fd()
-- and calls download_drain. Ids are the caller's (unique among live jobs).

local exo_download_fd, exo_download_configure = C.exo_download_fd, C.exo_download_configure
local exo_download_file, exo_download_request = C.exo_download_file, C.exo_download_request
local exo_download_progress, exo_download_cancel = C.exo_download_progress, C.exo_download_cancel
local exo_download_next, exo_download_result, exo_download_release =
  C.exo_download_next, C.exo_download_result, C.exo_download_release

function M.download_fd() return exo_download_fd() end

-- attempts per file, first backoff (s), longest wait (s), stall before a cut (s).
function M.download_configure(attempts, backoff_s, max_wait_s, stall_s)
  local rc = exo_download_configure(attempts, backoff_s, max_wait_s, stall_s)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- { name = value } as "Name: value" lines; CR or LF in either is misuse
-- (it would inject headers).
local function header_text(headers, what)
  if headers == nil then return nil end
  check_type(headers, "table", what .. " headers")
  local lines = {}
  for k, v in pairs(headers) do
    k, v = tostring(k), tostring(v)
    if k:find("[\r\n:]") or v:find("[\r\n]") then error(what .. ": bad header " .. k, 3) end
    lines[#lines + 1] = k .. ": " .. v
  end
  table.sort(lines)
  return table.concat(lines, "\n")
end

-- Starts downloading url into dest (via dest.partial). opts: headers, size,
-- sha256 (hex). Returns true or nil, err; the outcome comes through drain.
function M.download_file(url, dest, opts, job_id)
  check_type(url, "string", "download_file url")
  check_type(dest, "string", "download_file dest")
  check_type(job_id, "number", "download_file job id")
  opts = opts or {}
  local rc = exo_download_file(url, dest, header_text(opts.headers, "download_file"), opts.size or -1,
    opts.sha256, job_id)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- Starts one bounded HTTP request. opts: url, method ("GET"), headers, body
-- (a string), max_bytes (1 MiB), timeout (30 s). Returns true or nil, err.
function M.http_request(opts, job_id)
  check_type(opts, "table", "http_request opts")
  check_type(opts.url, "string", "http_request url")
  check_type(job_id, "number", "http_request job id")
  local body = opts.body
  if body ~= nil then check_type(body, "string", "http_request body") end
  local rc = exo_download_request(opts.method or (body and "POST" or "GET"), opts.url,
    header_text(opts.headers, "http_request"), body, body and #body or 0, opts.max_bytes or 1048576,
    opts.timeout or 30, job_id)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- done, total (-1: unknown), bytes/s, attempt of a live job; nil, err when none.
function M.download_progress(job_id)
  local rc = exo_download_progress(job_id, i64_1, i64_1b, dbl1, int1)
  if rc ~= 0 then return fail(rc) end
  return tonumber(i64_1[0]), tonumber(i64_1b[0]), dbl1[0], int1[0]
end

function M.download_cancel(job_id)
  local rc = exo_download_cancel(job_id)
  if rc ~= 0 then return fail(rc) end
  return true
end

-- Raw response headers as { lowercase name = value } (the last one wins).
local function parse_headers(text)
  local h = {}
  for line in text:gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:%s]+):%s*(.-)%s*$")
    if k then h[k:lower()] = v end
  end
  return h
end

local DL_ERR_CAP = 512 -- download.c keeps this much of a failed job's message
local dl_err = ffi.new("char[?]", DL_ERR_CAP)
local dl_http = ffi.new("int[1]")
local dl_body, dl_hdrs = ffi.new("const char*[1]"), ffi.new("const char*[1]")
-- Calls fn(job_id, ok, err, result) for every finished job, then frees it:
-- result = { status = HTTP status (0 when none came), body, headers }, err
-- "ECODE: message" when the job failed (a request's HTTP error is ok: read
-- result.status).
function M.download_drain(fn)
  while exo_download_next(u64_1, status1, dl_http, dl_err, DL_ERR_CAP) == 1 do
    local id, ok = u64_1[0], status1[0] == 0
    local err = not ok and ffi.string(exo_error_name(status1[0])) .. ": " .. ffi.string(dl_err) or nil
    local result = { status = dl_http[0], body = "", headers = {} }
    if exo_download_result(id, dl_body, size1, dl_hdrs, size1b) == 0 then
      result.body = ffi.string(dl_body[0], size1[0])
      result.headers = parse_headers(ffi.string(dl_hdrs[0], size1b[0]))
    end
    exo_download_release(id)
    fn(tonumber(id), ok, err, result)
  end
end

-- ---- line editing ---------------------------------------------------------------

-- libreadline (Debian's libreadline8), for the REPL and interactive chat:
-- line editing and history. Without it, plain reads from stdin.
ffi.cdef [[
char *readline(const char *prompt);
void add_history(const char *line);
int read_history(const char *filename);
int write_history(const char *filename);
void free(void *ptr);
int isatty(int fd);
]]
ffi.cdef [[
extern int rl_catch_signals;
typedef int rl_getc_func_t(void *stream);
extern rl_getc_func_t *rl_getc_function;
void rl_replace_line(const char *text, int clear_undo);
long read(int fd, void *buf, size_t n);
]]
local readline_lib
do
  local ok, lib = pcall(ffi.load, "libreadline.so.8")
  if ok then readline_lib = lib end
end

local exo_runtime_catch_interrupt, exo_runtime_interrupted = C.exo_runtime_catch_interrupt, C.exo_runtime_interrupted
local readline_default_getc = readline_lib and readline_lib.rl_getc_function

-- readline's reads, one byte at a time: after Ctrl-C (a read interrupted
-- with the flag set) the line being typed is dropped and a newline ends it, so
-- readline returns "" at once (see M.readline). Its own reader would retry the
-- read and eat the next keys.
local EINTR = 4
local getc_byte = ffi.new("uint8_t[1]")
local readline_getc = ffi.cast("rl_getc_func_t *", function()
  while true do
    local n = C.read(0, getc_byte, 1)
    if n == 1 then return getc_byte[0] end
    if n == 0 or ffi.errno() ~= EINTR then return -1 end
    if exo_runtime_interrupted(0) ~= 0 then
      readline_lib.rl_replace_line("", 0)
      return 10
    end
  end
end)

-- Ctrl-C as a request, not an exit (a chat, the REPL): M.interrupted() says
-- whether it came, M.interrupted(true) also clears it; a line being typed is
-- given up.
function M.catch_interrupt(on)
  local rc = exo_runtime_catch_interrupt(on and 1 or 0)
  if rc ~= 0 then return fail(rc) end
  if readline_lib then
    readline_lib.rl_catch_signals = on and 0 or 1
    readline_lib.rl_getc_function = on and readline_getc or readline_default_getc
  end
  return true
end

function M.interrupted(clear) return exo_runtime_interrupted(clear and 1 or 0) ~= 0 end

-- Reads a line (without its newline) or returns nil at end of input. With
-- interrupts caught, Ctrl-C returns "" and leaves M.interrupted() set.
function M.readline(prompt)
  if readline_lib and C.isatty(0) == 1 then
    local p = readline_lib.readline(prompt)
    if p == nil then return nil end
    local line = ffi.string(p)
    C.free(p)
    if line:match("%S") then readline_lib.add_history(line) end
    return line
  end
  io.write(prompt)
  io.flush()
  return io.read("*l")
end
-- readline calls back into Lua (readline_getc): never from a compiled trace.
jit.off(M.readline)

-- The canonical absolute path of an existing file (symlinks, '.' and '..'
-- followed; libc's realpath), or nil: how exo.models checks that a name
-- stays inside the model store.
ffi.cdef "char *realpath(const char *path, char *resolved_path);"
function M.realpath(path)
  local p = C.realpath(path, nil)
  if p == nil then return nil end
  local out = ffi.string(p)
  C.free(p)
  return out
end

function M.load_history(path) if readline_lib then readline_lib.read_history(path) end end
function M.save_history(path) if readline_lib then readline_lib.write_history(path) end end
function M.isatty(fd) return C.isatty(fd) == 1 end

-- stderr into a file (appending) while a full-screen view owns the terminal:
-- returns a handle for M.restore_stderr, or nil, err.
ffi.cdef [[
int open(const char *path, int flags, int mode);
int dup(int fd);
int dup2(int oldfd, int newfd);
int close(int fd);
]]
local O_WRONLY, O_CREAT, O_APPEND = 1, 64, 1024
function M.redirect_stderr(path)
  local fd = C.open(path, O_WRONLY + O_CREAT + O_APPEND, 420) -- 0644
  if fd < 0 then return nil, "cannot open " .. path end
  io.stderr:flush()
  local saved = C.dup(2)
  C.dup2(fd, 2)
  C.close(fd)
  return saved
end

function M.restore_stderr(saved)
  io.stderr:flush()
  C.dup2(saved, 2)
  C.close(saved)
end

return M
