/* exo.h: libexo's public API, the one surface LuaJIT sees through the FFI.
 *
 * Every function takes flat types (scalars, pointers, lengths), never touches
 * the Lua API, and returns 0 or a negative EXO_E* code with a message left for
 * exo_last_error(). lua/exo/native.lua declares exactly these lines (a test
 * compares them), so this file holds declarations only. */
#ifndef EXO_H
#define EXO_H

#include "exo_defs.h"

/* The library is built with hidden visibility: only what this header
 * declares is exported (from the exo executable, for the FFI). */
#pragma GCC visibility push(default)

/* ---- runtime -------------------------------------------------------------- */

int exo_abi_version(void);
const char *exo_version(void);
const char *exo_last_error(void);
const char *exo_error_name(int code);
/* Sets the compute thread count (0 = all cores); call before loading models. */
int exo_runtime_set_threads(int n_threads);
int exo_runtime_threads(void);
/* "avx2 fma f16c" or "scalar": which kernels run. */
const char *exo_runtime_cpu_features(void);
/* n bytes from the operating system's random generator (libsodium's
 * randombytes): seeds for unseeded sampling, ids, keys. */
int exo_runtime_random(void *buf, size_t n);
/* Ctrl-C as a request, not an exit (interactive use): on 1 catches SIGINT into
 * a flag, 0 restores the default. exo_runtime_interrupted says whether Ctrl-C
 * came since the flag was last cleared (clear 1 clears it). */
int exo_runtime_catch_interrupt(int on);
int exo_runtime_interrupted(int clear);

/* ---- model files (metadata) ---------------------------------------------- */

typedef struct exo_file exo_file;

int exo_file_open(const char *path, exo_file **out);
void exo_file_close(exo_file *f);
int64_t exo_file_meta_count(const exo_file *f);
const char *exo_file_meta_key(const exo_file *f, int64_t i);
/* The GGUF value type of key i (enum exo_gguf_type), or -1. */
int exo_file_meta_type(const exo_file *f, int64_t i);
int exo_file_get_str(const exo_file *f, const char *key, const char **s, size_t *len);
int exo_file_get_int(const exo_file *f, const char *key, int64_t *out);
int exo_file_get_float(const exo_file *f, const char *key, double *out);
int exo_file_get_bool(const exo_file *f, const char *key, int *out);
/* Arrays: length and element type; elements as strings or numbers. */
int exo_file_get_arr_info(const exo_file *f, const char *key, int *elem_type, uint64_t *len);
int exo_file_get_arr_str(const exo_file *f, const char *key, uint64_t j, const char **s, size_t *len);
int exo_file_get_arr_num(const exo_file *f, const char *key, uint64_t j, double *out);
int64_t exo_file_tensor_count(const exo_file *f);
/* Name, dtype, dims (ne[0] innermost) and bytes of tensor i. */
int exo_file_tensor_info(const exo_file *f, int64_t i, const char **name, int *dtype, int *n_dims, int64_t *ne,
                         uint64_t *nbytes);
const char *exo_dtype_name(int dtype);

/* ---- shards: a layer range of a model ------------------------------------ */

typedef struct exo_shard exo_shard;
typedef struct exo_seq exo_seq;

typedef struct exo_shard_info {
    char arch[32];
    int n_layer;        /* layers in the whole model */
    int layer_start;    /* this shard runs [layer_start, layer_end) */
    int layer_end;
    int is_first;       /* takes token ids (holds the embedding) */
    int is_last;        /* gives logits (holds the final norm and head) */
    int n_embd;
    int n_vocab;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_ctx_train;
    int max_batch;      /* tokens per internal batch */
    int64_t weight_bytes; /* bytes of weights this shard reads per token */
    int64_t packed_bytes; /* of them, bytes the backend reads from its own packed copy (0: none) */
} exo_shard_info;

/* Loads layers [layer_start, layer_end) of the model at path (layer_end -1
 * means the last layer). is_first / is_last: -1 derives them from the range
 * (first when it starts at 0, last when it ends at the model's end); 0 or 1
 * forces them (a self-speculative draft is [0, K) with is_last = 1). */
int exo_shard_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, exo_shard **out);
/* The type the matrices of safetensors models (Hugging Face folders, loaded
 * by path like a GGUF) are quantized to when a shard loads: "q8_0", "q4_0",
 * "q4_k", or NULL / "" to keep their F32/F16/BF16. For the whole process, as
 * the thread count; set it before loading. */
int exo_safetensors_set_quantize(const char *type);
void exo_shard_free(exo_shard *s);
int exo_shard_get_info(const exo_shard *s, exo_shard_info *out);

/* The shard's KV pool: every sequence's keys and values live in blocks of
 * block_len positions (all the shard's layers) taken as a sequence grows and
 * given back when it is truncated or freed. */
typedef struct exo_kv_info {
    int block_len;        /* positions per block */
    int budget;           /* blocks the pool was sized to (exo_shard_set_kv_tokens), or 0: none */
    int blocks;           /* blocks made */
    int free;             /* of them, free */
    int reserved;         /* without a budget: blocks the live sequences reserved */
    int sequences;        /* live sequences */
    int64_t block_bytes;  /* memory of one block */
    int shared;           /* blocks held by more than one sequence (each counted once above) */
} exo_kv_info;

/* Sizes the pool to n_tokens positions (rounded up to blocks), allocated at
 * once (address space: pages become resident as they are written), shared by
 * the shard's sequences; a pass needing a block when none is free then fails
 * with EXO_EBUSY ("KV pool exhausted: ..."), moving no sequence. Only before
 * the shard's first sequence (else EXO_ESTATE). Without it each sequence
 * reserves its whole n_ctx when created and never runs short. */
int exo_shard_set_kv_tokens(exo_shard *s, int64_t n_tokens);
int exo_shard_kv_info(exo_shard *s, exo_kv_info *out);

/* A sequence is one request's KV cache on one shard: up to n_ctx positions,
 * in blocks of the shard's pool. */
int exo_seq_new(exo_shard *s, int n_ctx, exo_seq **out);
void exo_seq_free(exo_seq *q);
int exo_seq_pos(const exo_seq *q);
int exo_seq_n_ctx(const exo_seq *q);
/* Forgets positions >= pos (speculative rollback, edited history) and gives
 * the blocks past it back to the pool. A block that other sequences share
 * and that pos falls inside is first replaced by a private copy of the
 * positions kept (copy on write: EXO_EBUSY, "KV pool exhausted", changing
 * nothing, when no block is free for it). */
int exo_seq_truncate(exo_seq *q, int pos);
/* dst (empty, of the same shard) starts as src's first n positions without
 * computing them: it holds src's full blocks below n too (a block goes back
 * to the pool when its last holder lets go), and the positions of a partial
 * last block are copied into a block of its own. dst's results from then on
 * are exactly those of computing the n tokens itself. May run while a pass
 * is in flight on src (on the engine thread). EXO_EBUSY ("KV pool
 * exhausted"), changing nothing, when the partial block finds none free. */
int exo_seq_share_prefix(exo_seq *dst, exo_seq *src, int n);
/* Into *blocks: how many of the pool's free blocks q would use (negative:
 * give back) to hold n_pos positions after a truncation to keep (0 <= keep
 * <= its position, keep <= n_pos <= its context): the blocks past keep that
 * q alone holds come back, shared ones free nothing, a shared block that
 * keep falls inside is copied, and the blocks up to n_pos are taken. */
int exo_seq_kv_need(const exo_seq *q, int keep, int n_pos, int *blocks);

/* Runs n_tokens new positions through the shard, appending them to the
 * sequence. Input: token ids when the shard is first, else hidden states
 * [n_tokens][n_embd]. Output: when the shard is last, logits [n_out][n_vocab]
 * where n_out is n_tokens with all_logits set and 1 (the last position)
 * otherwise; when not last, hidden states [n_tokens][n_embd]. The caller
 * thread waits; the work runs on the compute pool. */
int exo_shard_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out);
/* Several sequences at once (continuous batching): sequence i (each at most
 * once, all of this shard, n_seqs from 1 to max_batch) takes n_tokens[i] new
 * positions from tokens[i] (first shard) or hidden[i] ([n_tokens[i]][n_embd]).
 * A last shard writes the logits of sequence i's last n_logits[i] rows to
 * out[i] ([n_logits[i]][n_vocab]; out[i] may be NULL when that is 0); other
 * shards write every row's hidden state. The rows of all sequences share
 * forward passes (max_batch rows each; a long input takes several), and each
 * sequence's results are exactly those of exo_shard_forward on it alone. All
 * or nothing: on failure no sequence has moved. */
int exo_shard_forward_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out);

/* ---- asynchronous forward passes ----------------------------------------- */

/* The same work, run on the engine thread; the caller's buffers must stay
 * alive until the completion arrives. Completions are queued and the fd from
 * exo_engine_fd() becomes readable (an eventfd); the loop thread then drains
 * them with exo_engine_next_completion. */
int exo_engine_fd(void);
int exo_engine_submit(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out, uint64_t job_id);
/* exo_shard_forward_batch on the engine thread; every array passed (and
 * what it points at) must stay alive until the completion arrives. */
int exo_engine_submit_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out,
                            uint64_t job_id);
/* Returns 1 and fills (job_id, status) when a completion was waiting, 0 when
 * none; status is the job's return code (a forward's, or a load's: below; its
 * message in err, up to err_cap bytes). Clears the fd's readiness when the
 * queue empties. */
int exo_engine_next_completion(uint64_t *job_id, int *status, char *err, size_t err_cap);
/* Blocks until no job is queued or running (before freeing what jobs use,
 * at exit). */
int exo_engine_wait_idle(void);

/* ---- sampling primitives --------------------------------------------------- */

/* Index of the largest logit (ties: the lowest index), or a negative code. */
int exo_sample_argmax(const float *logits, int n);
/* In place over the tokens of recent (each distinct id once): the repetition
 * penalty (divide positive logits by repeat, multiply negative ones), then
 * subtract presence + frequency * count. repeat 1, presence 0, frequency 0
 * leave logits untouched. */
int exo_sample_penalties(float *logits, int n_vocab, const int32_t *recent, int n_recent, float repeat,
                         float presence, float frequency);
/* The distribution to draw from after temperature (> 0), top-k (0 = off),
 * top-p (1 = off) and min-p (0 = off): up to cap candidates, most likely
 * first, probabilities summing to 1. */
int exo_sample_candidates(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                          int32_t *ids_out, float *probs_out, int cap, int *n_out);
/* out[i] = log softmax(logits)[i] (for logprobs). */
int exo_sample_log_softmax(const float *logits, int n, float *out);
/* The same distribution as exo_sample_candidates, dense: probs_out[n_vocab]
 * holds every token's probability (0 outside the kept candidates). Without
 * top-k, top-p or min-p it is a plain softmax at the temperature (O(n));
 * otherwise ids_scratch and probs_scratch (n_vocab each) hold the candidates
 * on the way. For speculative decoding, where q(x) and p(x) are looked up. */
int exo_sample_probs(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                     int32_t *ids_scratch, float *probs_scratch, float *probs_out);
/* The index i where the running sum of probs[0..i] first passes u * sum
 * (u in [0, 1)): a draw from a dense distribution. Negative when it is all
 * zero. */
int exo_sample_draw(const float *probs, int n, double u);
/* A draw (with u) from norm(max(0, p - q)): what speculative decoding emits
 * at the first rejected draft. Negative when p <= q everywhere. */
int exo_sample_residual(const float *p, const float *q, int n, double u);

/* ---- tokenizer ------------------------------------------------------------ */

/* Text <-> token ids from a GGUF file's tokenizer.* metadata: byte-level BPE
 * ("gpt2", pre-tokenizer regex chosen by tokenizer.ggml.pre) and
 * SentencePiece-style ("llama", scores and <0xNN> byte fallback). A loaded
 * tokenizer is immutable: encode/decode may run on any thread. */
typedef struct exo_tokenizer exo_tokenizer;

/* State of a streaming decode: zero it before the first token. It holds up to
 * 3 bytes of an unfinished UTF-8 character, and whether the first text token
 * was seen (SentencePiece models drop the space they prefixed to the text). */
typedef struct exo_tokenizer_stream {
    int32_t started;
    int32_t n_pending;
    uint8_t pending[4];
} exo_tokenizer_stream;

int exo_tokenizer_load(const char *gguf_path, exo_tokenizer **out);
void exo_tokenizer_free(exo_tokenizer *tok);
/* Encodes len bytes of text into at most cap ids. add_bos: 1 prepend BOS, 0
 * not, -1 as the model asks (tokenizer.ggml.add_bos_token). parse_special: 1
 * recognises control tokens written in the text (<|im_start|>, <s>; for text
 * a chat template produced), 0 encodes such text as ordinary text (for user
 * content). Invalid UTF-8 is kept byte for byte. When cap is too small returns
 * EXO_ERANGE with *n_out set to the count needed; otherwise *n_out ids. */
int exo_tokenizer_encode(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                         int32_t *out, int cap, int *n_out);
/* As exo_tokenizer_encode, with n_plain byte ranges of the text (plain[2i],
 * plain[2i+1]: start and end) in which control tokens are not recognised
 * even with parse_special 1. A chat prompt is encoded in one pass this way:
 * the template's markup becomes control tokens, the messages' content never
 * does, and text around a message's edges tokenizes as the whole string. */
int exo_tokenizer_encode_spans(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                               const size_t *plain, int n_plain, int32_t *out, int cap, int *n_out);
/* Decodes ids into at most cap bytes (no NUL added): the concatenated pieces,
 * with control tokens rendered only when special is 1 and, for SentencePiece
 * models, the space prefixed to the first text token removed, so that
 * decode(encode(s)) == s. Returns EXO_ERANGE with *out_len set to the bytes
 * needed when cap is too small, EXO_EINVAL for an id outside the vocabulary. */
int exo_tokenizer_decode(const exo_tokenizer *tok, const int32_t *ids, int n_ids, int special, char *out,
                         size_t cap, size_t *out_len);
/* Streaming decode of one more token: writes only complete, valid UTF-8 (an
 * unfinished character waits in st for the next token; bytes that can never
 * form a character become U+FFFD). out needs 3 * (piece length + 3) bytes;
 * with less returns EXO_ERANGE, *out_len the size needed, st unchanged. */
int exo_tokenizer_decode_stream(const exo_tokenizer *tok, exo_tokenizer_stream *st, int32_t id, int special,
                                char *out, size_t cap, size_t *out_len);
/* Ends a stream: an unfinished character left in st comes out as U+FFFD (out
 * needs 3 bytes); st is ready for a new stream's tokens. */
int exo_tokenizer_decode_stream_flush(const exo_tokenizer *tok, exo_tokenizer_stream *st, char *out, size_t cap,
                                      size_t *out_len);
/* The bytes token id decodes to (control tokens: their text), valid while tok
 * lives; may be part of a UTF-8 character. */
int exo_tokenizer_token_piece(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len);
/* The token's text as the vocabulary spells it ("<|im_end|>"; GPT-2 style BPE writes " the" as
 * U+0120 followed by "the"). */
int exo_tokenizer_token_text(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len);
/* The id of the token whose vocabulary text is exactly text, or -1. */
int32_t exo_tokenizer_find(const exo_tokenizer *tok, const char *text, size_t len);
int exo_tokenizer_n_vocab(const exo_tokenizer *tok);
/* Special ids, -1 when the model has none. EOT ends a turn (<|eot_id|>,
 * <|im_end|>, <end_of_turn>, ...). */
int32_t exo_tokenizer_bos(const exo_tokenizer *tok);
int32_t exo_tokenizer_eos(const exo_tokenizer *tok);
int32_t exo_tokenizer_eot(const exo_tokenizer *tok);
/* 1 when the model asks for BOS at the start of a prompt. */
int exo_tokenizer_add_bos(const exo_tokenizer *tok);
/* 1 when id ends generation (EOS, EOT, EOM and the like). */
int exo_tokenizer_is_eog(const exo_tokenizer *tok, int32_t id);
/* Token types as GGUF stores them (llama.cpp's llama_token_type). */
enum exo_token_type {
    EXO_TOKEN_UNDEFINED = 0,
    EXO_TOKEN_NORMAL = 1,
    EXO_TOKEN_UNKNOWN = 2,
    EXO_TOKEN_CONTROL = 3,
    EXO_TOKEN_USER_DEFINED = 4,
    EXO_TOKEN_UNUSED = 5,
    EXO_TOKEN_BYTE = 6
};
/* The type of id (enum exo_token_type), or -1 when id is out of range. */
int exo_tokenizer_token_type(const exo_tokenizer *tok, int32_t id);
/* "gpt2" or "llama"; the pre-tokenizer name ("" for llama). */
const char *exo_tokenizer_model(const exo_tokenizer *tok);
const char *exo_tokenizer_pre(const exo_tokenizer *tok);
/* What loading worked around ("" when nothing): an unknown pre-tokenizer
 * (the GPT-2 regex is used), skipped merges, ignored special ids. */
const char *exo_tokenizer_warning(const exo_tokenizer *tok);

/* ---- constrained sampling ------------------------------------------------- */

/* A JSON grammar over a tokenizer's vocabulary: the tokens that keep the text
 * generated so far a prefix of one JSON object (json_grammar.c). */
typedef struct exo_json_grammar exo_json_grammar;
int exo_json_grammar_new(const exo_tokenizer *tok, exo_json_grammar **out);
void exo_json_grammar_free(exo_json_grammar *g);
/* Back to the start (nothing generated). */
void exo_json_grammar_reset(exo_json_grammar *g);
/* Sets -inf on every logit whose token cannot come next; EXO_ESTATE when none can. */
int exo_json_grammar_mask(exo_json_grammar *g, float *logits, int n_vocab);
/* The token that was drawn: advances the grammar (EXO_EFORMAT when it cannot
 * come next; an end-of-generation token is accepted once the object is complete). */
int exo_json_grammar_accept(exo_json_grammar *g, int32_t id);
/* 1 once the object is complete. */
int exo_json_grammar_done(const exo_json_grammar *g);
/* 1 when text is exactly one JSON object (whitespace around it allowed). */
int exo_json_grammar_check(const char *text, size_t len);
/* A JSON schema for the grammar, built bottom up: a part (node) with its types
 * (bits: 1 object, 2 array, 4 string, 8 number, 16 integer, 32 boolean,
 * 64 null; 0 any) and an array's item part (-1 any) returns its index; an
 * object's properties (their value parts, -1 any; required or not) and a
 * string's enum members (as written between quotes) are added to their part
 * together; an object with properties takes no others. Then the root (an
 * object) is set, which also resets the grammar. */
int exo_json_grammar_schema_node(exo_json_grammar *g, int types, int items);
int exo_json_grammar_schema_property(exo_json_grammar *g, int node, const char *name, size_t len, int value_node,
                                     int required);
int exo_json_grammar_schema_enum(exo_json_grammar *g, int node, const char *text, size_t len);
int exo_json_grammar_schema_root(exo_json_grammar *g, int node);

/* ---- loading on the engine thread ------------------------------------------ */

/* A large model takes seconds to map, bind and pack: a node's loop thread
 * queues the load instead, with exo_shard_load's (or exo_tokenizer_load's)
 * arguments, and keeps serving. The job runs on the engine thread in turn
 * with forward passes and completes as job_id through
 * exo_engine_next_completion (a failure's status and message as the
 * synchronous call would give); after a successful completion the loop
 * thread takes the object, which is its own from then on. */
int exo_engine_submit_load(const char *path, int layer_start, int layer_end, int is_first, int is_last,
                           uint64_t job_id);
int exo_engine_submit_load_tokenizer(const char *gguf_path, uint64_t job_id);
/* The shard (tokenizer) job_id loaded; EXO_ESTATE when it left none (it
 * failed, is not done, or was taken). */
int exo_engine_take_shard(uint64_t job_id, exo_shard **out);
int exo_engine_take_tokenizer(uint64_t job_id, exo_tokenizer **out);

/* ---- HTTP request parsing ------------------------------------------------ */

/* A strict HTTP/1.1 (RFC 9112) request-head parser and chunked body decoder
 * for the API server. Both are pure functions of their input (the decoder of
 * its input and a small state struct): no allocation, no callbacks, never a
 * read past len. Spans are byte offsets into the caller's buffer. */
enum { EXO_HTTP_MAX_HEADERS = 64 };

typedef struct exo_http_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;   /* value with surrounding SP/HTAB removed */
} exo_http_header;

typedef struct exo_http_request {
    uint32_t method_off, method_len;
    uint32_t target_off, target_len;
    int32_t version_minor;           /* 0 or 1 (HTTP/1.x) */
    int32_t n_headers;
    exo_http_header headers[EXO_HTTP_MAX_HEADERS];
    int64_t content_length;          /* -1 when absent */
    int32_t chunked;                 /* Transfer-Encoding: chunked (the body is chunk-coded) */
    int32_t keep_alive;              /* 1.1: unless Connection: close; 1.0: only with keep-alive */
    int32_t expect_continue;         /* Expect: 100-continue on an HTTP/1.1 request */
    uint32_t head_len;               /* bytes of the head, final blank line included */
    int32_t status;                  /* on failure: the status to answer with, else 0 */
} exo_http_request;

/* Parses the head at the start of buf. Returns its length (> 0) when complete
 * (the body or the next pipelined request starts there); 0 when more bytes are
 * needed (len < max_head_bytes); otherwise a code, with req->status and a
 * message fit for the response body: EXO_EFORMAT malformed (400), EXO_ENOMEM
 * head over max_head_bytes or more than EXO_HTTP_MAX_HEADERS fields (431),
 * EXO_ENOTSUP a version other than 1.0/1.1 (505), a transfer coding other than
 * chunked (501) or an expectation other than 100-continue (417). Errors are
 * reported as soon as the offending byte arrives. Lines end in CR LF only;
 * empty lines before the request line are skipped. Cost is linear in len: a
 * caller reading in small pieces need only call again once the new bytes hold
 * a LF. max_head_bytes is capped at 2^31 - 1. */
int exo_http_parse_head(const char *buf, size_t len, size_t max_head_bytes, exo_http_request *req);
/* Index of the first header at or after from whose name equals name (ASCII
 * case-insensitive), or -1. buf is the buffer req was parsed from. */
int exo_http_header_find(const char *buf, const exo_http_request *req, const char *name, int from);

/* State of a chunked body decode: zero it before the body's first bytes. */
typedef struct exo_http_chunked {
    int32_t state;
    uint32_t line_len;     /* bytes of the current size or trailer line */
    uint64_t remaining;    /* data bytes left in the current chunk */
    uint64_t total;        /* body bytes decoded so far */
    uint64_t framing;      /* sizes, extensions, CR LFs and trailers so far */
} exo_http_chunked;

/* Decodes as much of buf as it holds, in place: the body bytes go to the
 * start of buf (*produced of them), *consumed input bytes were used, and *done
 * is 1 once the last chunk and trailers are through (input after *consumed
 * belongs to the next request; until done, *consumed == len). Chunk extensions
 * are checked and ignored, trailer fields checked and dropped. Returns 0, or
 * EXO_EFORMAT when malformed (400), EXO_ENOMEM when the body would pass
 * max_body bytes, a size or trailer line passes 4 KiB or the framing passes
 * max_body + 64 KiB (413); after a failure, EXO_ESTATE. Once done, further
 * calls consume nothing. */
int exo_http_chunked_decode(exo_http_chunked *st, char *buf, size_t len, size_t max_body, size_t *consumed,
                            size_t *produced, int *done);

/* ---- the wire: frames between peers -------------------------------------- */

/* One TCP connection per pair of peers, on the host's libuv loop (the loop
 * thread runs every call here). docs/wire.md specifies the frames. Control
 * frames (JSON) and connection news reach Lua as events on an eventfd; tensor
 * frames go straight to the shard executor through routes: a route says, for
 * one request, which shard and sequence run its rows and which connection the
 * result goes on to. Connection 0 is this node itself: sending to it delivers
 * locally, so a ring that passes through this node needs no special case. */
typedef struct exo_wire exo_wire;

enum exo_wire_event_type {
    EXO_WIRE_EV_PEER = 1,    /* a connection finished its hello: data is the peer's hello JSON */
    EXO_WIRE_EV_CLOSED = 2,  /* a connection closed or failed: data is the reason */
    EXO_WIRE_EV_CONTROL = 3, /* a control frame: data is its JSON */
    EXO_WIRE_EV_OUTPUT = 4,  /* a last-shard route has logits (exo_wire_route_output) */
    EXO_WIRE_EV_FAILED = 5,  /* a route failed (bad rows, a forward error, next peer gone): data says why */
    EXO_WIRE_EV_PONG = 6,    /* a ping came back: value is the round trip in microseconds */
    EXO_WIRE_EV_SHARE = 7,   /* a file transfer to this node moved: request_id is its id, value the bytes on disk */
    EXO_WIRE_EV_SHARE_END = 8, /* a transfer to this node ended: value 0 verified and renamed into place, else a
                                  negative EXO_E* code with data saying why (EXO_EFORMAT: the bytes were wrong) */
    EXO_WIRE_EV_HASHED = 9   /* exo_wire_hash_file finished: request_id is its id; value 0 and data the 64 hex
                                digits, or a negative EXO_E* code and data saying why */
};

typedef struct exo_wire_event {
    int32_t type;
    int32_t conn;
    uint64_t request_id;
    int64_t value;
    const char *data;        /* valid until the next exo_wire_next_event call */
    uint32_t len;
    char address[64];        /* the peer's address, on PEER events */
} exo_wire_event;

typedef struct exo_wire_stats {
    uint64_t frames_sent, frames_received, bytes_sent, bytes_received;
    uint64_t tensor_bytes_sent;   /* payload bytes of tensor frames this node sent */
    uint64_t frames_rejected;     /* malformed frames that closed a connection */
    uint64_t tensors_dropped;     /* tensor frames for no open route (a request already closed) */
    int32_t connections, routes;
    int32_t in_flight;            /* forward passes running for routes (closed ones too) */
    /* Passes run for routes, and their time from the rows' arrival to the
     * result's departure (sent on, or handed to Lua), of which computing. */
    uint64_t passes, pass_total_ns, pass_compute_ns;
    uint64_t auth_refused;        /* connections refused at the handshake: no key, another key, a failed proof */
    int32_t keyed;                /* 1 once a cluster key is set */
    /* TENSOR_BATCH frames (several requests' rows, docs/wire.md) sent and
     * their parts, and those received. */
    uint64_t batch_frames_sent, batch_parts_sent, batch_frames_received;
} exo_wire_stats;

/* The host's loop; the wire uses it when exo_wire_new is given NULL. */
int exo_runtime_set_loop(void *uv_loop);
/* A transport on uv_loop (NULL: the host's). hello is this node's hello JSON,
 * sent first on every connection. */
int exo_wire_new(void *uv_loop, const char *hello, size_t hello_len, exo_wire **out);
/* Closes every connection and handle; the loop must run once more for the
 * close callbacks. */
void exo_wire_free(exo_wire *w);
int exo_wire_fd(const exo_wire *w);
/* Replaces the hello sent on connections opened from now on (a node names
 * its port in it, known once it listens). */
int exo_wire_set_hello(exo_wire *w, const char *hello, size_t hello_len);
/* Makes this a keyed cluster's node (docs/wire.md, "Keyed clusters"): from
 * now on a connection is admitted only once the peer proves it holds the same
 * key (a string of 16 bytes or more), and every frame is sealed. Derives the
 * key with Argon2id (a fraction of a second, 64 MiB briefly); call it before
 * listening or dialing. */
int exo_wire_set_key(exo_wire *w, const char *key, size_t len);
/* UDP discovery's datagrams (docs/discovery.md): an announcement's JSON in the
 * clear for an open cluster, sealed with the cluster key for a keyed one.
 * Seal: EXO_EFORMAT when json is not an object, EXO_ERANGE past 4 KiB or when
 * out (4,152 bytes always suffice) is too small. Open: EXO_EFORMAT malformed,
 * EXO_ERANGE too long, EXO_ENOTSUP another cluster's, EXO_ESTATE not authentic
 * (forged, damaged, or in the clear to a keyed node). */
int exo_wire_announce_seal(const exo_wire *w, const char *json, size_t len, uint8_t *out, size_t cap,
                           size_t *out_len);
int exo_wire_announce_open(const exo_wire *w, const uint8_t *dgram, size_t len, char *json, size_t cap,
                           size_t *json_len);
/* Listens on host:port (port 0: a free port, returned in *bound_port). */
int exo_wire_listen(exo_wire *w, const char *host, int port, int *bound_port);
/* Starts connecting; *conn names the connection from now on. A PEER event
 * follows once both hellos are through, or a CLOSED event saying why not. */
int exo_wire_connect(exo_wire *w, const char *host, int port, int *conn);
/* Closes a connection after sending an ERROR frame with reason (if any). */
int exo_wire_close(exo_wire *w, int conn, const char *reason);
int exo_wire_send_control(exo_wire *w, int conn, uint64_t request_id, const char *json, size_t len);
/* Sends n token ids at position as a tensor frame (flags: enum
 * exo_wire_tensor_flag). */
int exo_wire_send_tokens(exo_wire *w, int conn, uint64_t request_id, int position, const int32_t *ids, int n,
                         int flags);
int exo_wire_ping(exo_wire *w, int conn);
/* Returns 1 and fills ev when an event was waiting, 0 when none. */
int exo_wire_next_event(exo_wire *w, exo_wire_event *ev);
/* Routes request_id's tensor frames through shard s on sequence q. A route of
 * a shard that is not last sends its hidden states on to next_conn, encoded
 * as wire_dtype (F32, F16 or Q8_0); a last shard's route raises an OUTPUT
 * event instead (next_conn 0), or sends its logits rows as f32 to next_conn
 * (a collector there, open for request_id + 2^EXO_WIRE_REPLY_SHIFT). The route owns q from now on (it frees it when closed, once
 * no pass runs on it); s must stay loaded while stats.in_flight > 0. */
int exo_wire_route_open(exo_wire *w, uint64_t request_id, exo_shard *s, exo_seq *q, int next_conn, int wire_dtype);
/* Takes request_id's rows only from conn (0: this node) and the others so
 * allowed; a route nobody was allowed for takes rows from anyone. */
int exo_wire_route_allow(exo_wire *w, uint64_t request_id, int conn);
/* A route with no shard, on the node that asked: logits rows [n][n_vocab]
 * sent to it for request_id (a last shard's route whose next_conn names this
 * node) raise an OUTPUT event and are read with exo_wire_route_output. */
int exo_wire_collect_open(exo_wire *w, uint64_t request_id, int n_vocab);
/* Forgets a route (a pass in flight finishes first, and its result is dropped). */
int exo_wire_route_close(exo_wire *w, uint64_t request_id);
/* The logits of a last-shard route's latest pass: n_rows rows of n_vocab, and
 * the sequence position the first of them scores. */
int exo_wire_route_output(exo_wire *w, uint64_t request_id, const float **logits, int *n_rows, int *position);
int exo_wire_get_stats(const exo_wire *w, exo_wire_stats *out);

/* Model files between peers (docs/wire.md, "Sharing model files"): bytes go
 * from file to CHUNK frames to file in C, never through Lua. The receiver
 * opens dest + ".partial" (kept from an earlier try: *offset says where the
 * transfer continues), takes conn's CHUNK frames for transfer_id in order,
 * hashes them as they come, and once size bytes are there checks the SHA-256
 * (64 lowercase hex digits) before renaming into dest; a wrong hash deletes
 * the partial. A closed connection ends the transfer with the partial kept. */
int exo_wire_share_receive(exo_wire *w, int conn, uint64_t transfer_id, const char *dest, int64_t size,
                           const char *sha256_hex, int64_t *offset);
/* Serves path (the caller has checked it lies in the model store) from
 * offset to its end, size (what was announced) long, to conn as CHUNK frames
 * for transfer_id, never more than credit bytes ahead of the receiver's
 * grants (exo_wire_share_credit adds to it). */
int exo_wire_share_send(exo_wire *w, int conn, uint64_t transfer_id, const char *path, int64_t offset, int64_t size,
                        int64_t credit);
int exo_wire_share_credit(exo_wire *w, int conn, uint64_t transfer_id, int64_t bytes);
/* Ends a transfer either way (a receiver's partial is kept); no event follows. */
int exo_wire_share_cancel(exo_wire *w, int conn, uint64_t transfer_id);
/* The SHA-256 of the file at path as 64 lowercase hex digits (what a node
 * tells peers its files hold). exo_wire_hash_file does it on libuv's thread
 * pool (a model of gigabytes takes seconds) and raises a HASHED event. */
int exo_wire_file_sha256(const char *path, char *hex65);
int exo_wire_hash_file(exo_wire *w, uint64_t id, const char *path);

/* ---- downloads and small HTTP requests (download.c) ------------------------ */

/* Each job runs on a thread of its own (libcurl); a finished one is queued
 * and exo_download_fd() (an eventfd) becomes readable; the loop thread
 * drains with exo_download_next, reads a request's response with
 * exo_download_result, then frees the job with exo_download_release.
 * Retries and timeouts for every later job: attempts per file, the first
 * backoff (doubling), the longest wait (also caps Retry-After), and how long
 * a transfer may stall before it counts as cut. */
int exo_download_fd(void);
int exo_download_configure(int max_attempts, double backoff_s, double max_wait_s, double stall_s);
/* Downloads url into dest via dest.partial (resumed with Range when present),
 * checks size (-1: unknown) and sha256_hex (NULL or "": unknown) and only
 * then renames it onto dest. headers: "Name: value" lines separated by \n. */
int exo_download_file(const char *url, const char *dest, const char *headers, int64_t size, const char *sha256_hex,
                      uint64_t job_id);
/* One HTTP request (a HEAD does not follow redirects); a response over
 * max_bytes fails with EXO_ERANGE; any HTTP status completes with status 0
 * (read http_status). */
int exo_download_request(const char *method, const char *url, const char *headers, const char *body,
                         size_t body_len, size_t max_bytes, double timeout_s, uint64_t job_id);
/* Bytes done, total (-1: unknown), recent speed and the attempt number of a
 * job not yet released. */
int exo_download_progress(uint64_t job_id, int64_t *done, int64_t *total, double *bytes_per_s, int *attempt);
int exo_download_cancel(uint64_t job_id);
/* 1 and the next finished job's outcome, or 0 when none is waiting. */
int exo_download_next(uint64_t *job_id, int *status, int *http_status, char *err, size_t err_cap);
/* A finished request's body and raw response headers, valid until released. */
int exo_download_result(uint64_t job_id, const char **body, size_t *body_len, const char **headers,
                        size_t *headers_len);
int exo_download_release(uint64_t job_id);

/* ---- measurement ---------------------------------------------------------- */

/* Memory bandwidth in GB/s from a STREAM-like copy over bytes of memory, best
 * of reps, using the compute pool. */
double exo_measure_mem_bandwidth(size_t bytes, int reps);
/* fp32 GFLOPS of this machine's compute threads (sgemm of small matrices on
 * every pool thread; best of reps). */
double exo_measure_flops_fp32(int reps);
/* Peak resident set size of this process in bytes. */
int64_t exo_peak_rss_bytes(void);
/* Monotonic clock in seconds. */
double exo_now(void);

#pragma GCC visibility pop

#endif
