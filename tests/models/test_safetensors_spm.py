"""test_safetensors_spm.py: SentencePiece-style tokenizer.json in safetensors folders, against references.

The reference vocabulary is Gemma 3 270M's (the GGUF scripts/setup installs). Its pieces, scores and types
become a tokenizer.json built with Hugging Face's tokenizers library the way Hugging Face's converter builds
one from a SentencePiece BPE model: byte-fallback BPE whose merges are every pair of pieces that joins into a
piece, ranked by the joined piece's score; spaces replaced by U+2581; control and user-defined pieces as
added tokens; BOS put first by the post-processor. A folder holding that file (weights: a tiny llama with the
same vocabulary, from the project's tools) must tokenize every text to exactly the ids exo gives on the GGUF
and the ids the tokenizers library gives on the file, decode them back to the text, and keep the GGUF's token
types, BOS/EOS and add-BOS. The same for Llama 2 style files (Prepend + Replace normalizer; Metaspace) on the
tiny models' SentencePiece vocabulary, which puts a marker before the text. A Unigram file must give the
GGUF's ids (exo merges by its scores, as llama.cpp does with SentencePiece models; the library's best-split
search is reported, not asserted); a normalizer exo does not do (NFKC) is refused by name.
Skips by name (exit 77) without the tokenizers package or the Gemma file."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

try:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
except ImportError as e:
    print(f"SKIPPED: {e} (scripts/setup installs tokenizers into build/venv)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exo_probe import BUILD, EXO, PROBE, check, finish, probe, run  # noqa: E402

HOME = os.environ.get("EXO_HOME") or os.path.expanduser("~/.cache/exo")
GEMMA = os.path.join(HOME, "downloads", "gemma3-270m", "gemma-3-270m-q4_k_m.gguf")
TINY = os.path.join(BUILD, "tiny-chat.gguf")
MARK = "\u2581"

TEXTS = [
    "Hello, world!", "  two spaces before, two after  ", " one space each side ", "line one\nline two\n\n\nend\n",
    "tabs\tand\r\nwindows\tlines", "emoji 🙂🚀👩‍👩‍👧 and flags 🇯🇵", "日本語のテキストと中文文本", "한국어 텍스트",
    "bytes that need fallback: 𓀀𓀁 ꙮ \U000f0000 \U0010fffd", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos<eos>", "<unused5> and <unused6241>", "<b>bold</b> <table><tr><td>x</td></tr></table>",
    "    indented code():\n        return x  # comment", "numbers 1234567890 3.14159 -42 1e10",
    "can't won't I'm y'all", "naïve café résumé Ærøskøbing", "العربية مرحبا بالعالم", "Ελληνικά κείμενα",
    "mixed日本English한국어123", "a" * 200, "the" * 50, "", " ", "   ", "\n", "\u00a0non-breaking\u2009thin",
    "▁literal marker▁ in text", "<s>after a special</s> and after", "<0x41> is not a byte token in text", "[multimodal]<start_of_image>",
]


def gguf_tokenizer(path):
    """The tokenizer.* metadata of a GGUF file (a reader of the format's header, for the reference side)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def value(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return f.read(rd("Q")).decode("utf-8")
            if t == 9:
                et, n = rd("I"), rd("Q")
                if et in scalar:
                    return list(struct.unpack(f"<{n}{scalar[et]}", f.read(n * struct.calcsize(scalar[et]))))
                return [value(et) for _ in range(n)]
            raise ValueError(f"{path}: GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        rd("I"), rd("Q")
        meta = {}
        for _ in range(rd("Q")):
            key = f.read(rd("Q")).decode("utf-8")
            meta[key] = value(rd("I"))
    return {k[len("tokenizer.ggml."):]: v for k, v in meta.items() if k.startswith("tokenizer.ggml.")}


def spm_bpe(meta):
    """Byte-fallback BPE from SentencePiece pieces and scores, as Hugging Face's converter makes it."""
    toks, scores, types = meta["tokens"], meta["scores"], meta["token_type"]
    normal = {s: i for i, s in enumerate(toks) if types[i] == 1}
    merges = sorted((-scores[i], normal[s[:k]], normal[s[k:]], s[:k], s[k:])
                    for s, i in normal.items() for k in range(1, len(s)) if s[:k] in normal and s[k:] in normal)
    vocab = {}
    for i, s in enumerate(toks):
        vocab.setdefault(s, i)
    return models.BPE(vocab=vocab, merges=[(a, b) for _, _, _, a, b in merges], unk_token=toks[meta["unknown_token_id"]],
                      byte_fallback=True, fuse_unk=True)


def write_tokenizer(meta, folder, model, normalizer, pre=None, strip=False):
    """tokenizer.json and tokenizer_config.json for a GGUF vocabulary; returns the library's Tokenizer.
    strip: the decoder drops the space the normalizer put before the text (as Llama 2's file does)."""
    toks, types = meta["tokens"], meta["token_type"]
    tk = Tokenizer(model)
    tk.normalizer = normalizer
    if pre is not None:
        tk.pre_tokenizer = pre
    if isinstance(pre, pre_tokenizers.Metaspace):
        tk.decoder = decoders.Sequence([decoders.Metaspace(replacement=MARK, prepend_scheme=pre.prepend_scheme),
                                        decoders.ByteFallback(), decoders.Fuse()])
    else:
        steps = [decoders.Replace(MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
        tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if strip else []))
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for i, s in enumerate(toks) if types[i] == 3])
    tk.add_tokens([AddedToken(s, special=False, normalized=False) for i, s in enumerate(toks) if types[i] == 4])
    bos = toks[meta["bos_token_id"]]
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, meta["bos_token_id"])])
    tk.save(os.path.join(folder, "tokenizer.json"))
    config = {"bos_token": bos, "eos_token": toks[meta["eos_token_id"]], "unk_token": toks[meta["unknown_token_id"]]}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)  # no add_bos_token: the post-processor's BOS must be read
    return Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


def folder_for(work, gguf, name):
    """A safetensors folder of a tiny llama with the vocabulary of gguf (no tokenizer files yet)."""
    tiny = os.path.join(work, name + ".gguf")
    run(os.path.join(BUILD, "exo-make-tiny-model"), tiny, "--tokenizer-from", gguf, "--tied", "1", "--layers", "1",
        "--type", "f16")
    folder = os.path.join(work, name)
    run(os.path.join(BUILD, "exo-gguf-to-safetensors"), tiny, folder, "--dtype", "f16")
    os.remove(tiny)
    return folder


def compare(label, work, gguf, folder, hf, assert_hf=True, assert_gguf=True):
    """The folder's ids against the GGUF's (assert_gguf) and the library's (assert_hf); its decoding and
    tokenizer facts against the library's and the GGUF's."""
    texts_file = os.path.join(work, "texts.json")
    with open(texts_file, "w") as f:
        json.dump(TEXTS, f)
    ref = probe("encode", gguf, texts_file)
    ours = probe("encode", folder, texts_file)
    agree_gguf = agree_hf = 0
    for t, a, g in zip(TEXTS, ours, ref):
        a, g = (list(x) if isinstance(x, list) else [] for x in (a, g))  # cjson writes an empty list as {}
        h = hf.encode(t, add_special_tokens=False).ids
        if assert_gguf:
            check(a == g, f"{label}: {t!r}: folder {a[:16]}, GGUF {g[:16]}")
        if assert_hf:
            check(a == h, f"{label}: {t!r}: folder {a[:16]}, tokenizers {h[:16]}")
        agree_gguf += a == g
        agree_hf += a == h
    info, ginfo = probe("info", folder, texts_file), probe("info", gguf, texts_file)
    # Decoding as the library decodes, except where exo decodes the GGUF's ids the same way: then it is
    # the engine's own rule (llama.cpp's: a token named </s> ends generation, so it is a control token).
    engine_rule = []
    for t, ids, g, got, gguf_got in zip(TEXTS, ours, ref, info["decoded"], ginfo["decoded"]):
        want = hf.decode(list(ids) if isinstance(ids, list) else [], skip_special_tokens=True)
        if got != want and ids == g and got == gguf_got:
            engine_rule.append(t)
            continue
        check(got == want, f"{label}: {t!r} decodes to {got!r}, tokenizers says {want!r}")
    if engine_rule:
        print(f"{label}: decoded as exo decodes the GGUF, not as tokenizers does: {engine_rule}")
    for key in ("model", "n_vocab", "bos", "eos", "add_bos", "types"):
        check(info[key] == ginfo[key], f"{label}: {key} is {info[key]} from the folder, {ginfo[key]} from the GGUF")
    with_bos = hf.encode("hi").ids
    check(info["add_bos"] and with_bos[0] == info["bos"], f"{label}: BOS {info['bos']}, tokenizers adds {with_bos[:2]}")
    print(f"{label}: folder == GGUF on {agree_gguf}/{len(TEXTS)} texts, == tokenizers on {agree_hf}/{len(TEXTS)}; "
          f"model {info['model']}, {info['n_vocab']} tokens, types {info['types']}")


def main():
    if not os.path.exists(GEMMA):
        print(f"SKIPPED: {GEMMA} is not installed (scripts/setup installs Gemma 3 270M)")
        sys.exit(77)
    work = tempfile.mkdtemp(prefix="exo-st-spm-")
    try:
        # Gemma 3: no marker before the text, a Replace normalizer only.
        meta = gguf_tokenizer(GEMMA)
        folder = folder_for(work, GEMMA, "gemma")
        hf = write_tokenizer(meta, folder, spm_bpe(meta), normalizers.Replace(" ", MARK))
        compare("gemma3 BPE", work, GEMMA, folder, hf)
        shutil.rmtree(folder)

        # Llama 2 style on the tiny SentencePiece vocabulary: a marker before the text.
        tiny = gguf_tokenizer(TINY)
        folder = folder_for(work, TINY, "llama2")
        prepend = normalizers.Sequence([normalizers.Prepend(MARK), normalizers.Replace(" ", MARK)])
        compare("llama2 Prepend+Replace", work, TINY, folder,
                write_tokenizer(tiny, folder, spm_bpe(tiny), prepend, strip=True))
        # A split at spaces after the normalizer replaced them splits nothing, in the library as in exo.
        split = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        compare("llama2 Prepend+Replace, Split", work, TINY, folder,
                write_tokenizer(tiny, folder, spm_bpe(tiny), prepend, split, strip=True))
        # Metaspace (Mistral's files): no marker before text that starts with a space; with "first", none
        # after a special token either. The GGUF's llama.cpp rule differs there, so the library is the reference.
        for scheme in ("always", "first"):
            pre = pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme=scheme, split=False)
            compare(f"llama2 Metaspace {scheme}", work, TINY, folder,
                    write_tokenizer(tiny, folder, spm_bpe(tiny), None, pre), assert_gguf=False)

        # Unigram with the GGUF's scores: exo's ids are the GGUF's; the library's split is reported.
        uni = models.Unigram([(s, float(sc)) for s, sc in zip(tiny["tokens"], tiny["scores"])],
                             unk_id=tiny["unknown_token_id"], byte_fallback=True)
        compare("llama2 Unigram", work, TINY, folder, write_tokenizer(tiny, folder, uni, prepend, strip=True),
                assert_hf=False)

        # A normalizer the engine does not do is refused by name, not tokenized differently.
        write_tokenizer(tiny, folder, spm_bpe(tiny), normalizers.Sequence([normalizers.NFKC(), prepend]))
        r = subprocess.run([EXO, "lua", PROBE, "encode", folder, os.path.join(work, "texts.json")], capture_output=True,
                           text=True, timeout=120)
        check(r.returncode != 0 and "normalizer or pre-tokenizer is not one exo knows" in r.stderr,
              f"NFKC normalizer: exit {r.returncode}, {r.stderr.strip()[-200:]!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish()


main()
