"""test_safetensors_hf.py: exo's safetensors support against Hugging Face's own libraries.

tests/lua/test_safetensors.lua checks that a folder gives what its GGUF gives; this checks
that the folders are what the Hugging Face tools make and read, with those tools (the
safetensors and tokenizers packages from PyPI, in build/venv):
  * every file exo-gguf-to-safetensors writes deserializes with the reference reader to the
    names, dtypes and shapes the index and the GGUF say; the same tensors serialized by the
    reference writer (its own header order and padding) load in exo with logits identical to
    the GGUF's;
  * tokenizer.json as the tokenizers library runs it (Split regexes, Digits, ByteLevel, added
    tokens) gives the token ids exo gives when it reads that file, on the default model's
    vocabulary (SmolLM2) and on any GGUFs EXO_TOKENIZER_GGUFS names (Llama 3's, Qwen 2.5's);
  * `exo run FOLDER --quantize q8_0` (a real process) answers greedily with the text
    `exo run` gives on the GGUF quantized from the same values.
Skips by name (exit 77) when the packages are not installed."""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import safetensors
    from tokenizers import Tokenizer
except ImportError as e:
    print(f"SKIPPED: {e} (scripts/setup installs safetensors and tokenizers into build/venv)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exo_probe import BUILD, EXO, check, finish, probe, run  # noqa: E402

ST_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def weights(work):
    gguf = os.path.join(work, "w.gguf")
    run(os.path.join(BUILD, "exo-make-tiny-model"), gguf, "--type", "bf16", "--embd-type", "bf16", "--tied", "0",
        "--layers", "2", "--seed", "7")
    mine = os.path.join(work, "mine")
    run(os.path.join(BUILD, "exo-gguf-to-safetensors"), gguf, mine, "--dtype", "bf16", "--shards", "2")
    with open(os.path.join(mine, "model.safetensors.index.json")) as f:
        index = json.load(f)["weight_map"]
    tensors = {}
    for name in sorted(set(index.values())):
        with open(os.path.join(mine, name), "rb") as f:
            for tname, t in safetensors.deserialize(f.read()):
                check(index.get(tname) == name, f"{tname} is in {name}, the index says {index.get(tname)}")
                check(t["dtype"] == ("BF16" if len(t["shape"]) == 2 else "F32"), f"{tname} is {t['dtype']}")
                tensors[tname] = t
    check(set(tensors) == set(index), "the files hold the tensors the index lists")
    check("model.layers.1.self_attn.k_proj.weight" in tensors and "lm_head.weight" in tensors,
          "HF names: " + ", ".join(sorted(tensors)[:5]))
    # The reference writer's own layout, one file.
    ref = os.path.join(work, "ref")
    os.makedirs(ref)
    shutil.copy(os.path.join(mine, "config.json"), ref)
    keep, specs = [], {}
    for tname, t in tensors.items():
        buf = ctypes.create_string_buffer(bytes(t["data"]), len(t["data"]))
        keep.append(buf)
        specs[tname] = safetensors.TensorSpec(dtype=ST_TYPES[t["dtype"]], shape=t["shape"],
                                              data_ptr=ctypes.addressof(buf), data_len=len(t["data"]))
    with open(os.path.join(ref, "model.safetensors"), "wb") as f:
        f.write(safetensors.serialize(specs, {"format": "pt"}))
    got = probe("logits", gguf, ref)
    check(got["n"] > 0 and got["max_diff"] == 0, f"reference-written folder: logits differ by {got['max_diff']}")
    print(f"weights: {len(tensors)} tensors read by the reference; its file gives the GGUF's logits "
          f"(max diff {got['max_diff']})")


TEXTS = [
    "Hello, world!", "  leading spaces and trailing  ", "numbers 1234567 and 3.14159 and 2024-12-04",
    "can't won't I'm you'll WE'RE", "unicode: naïve café, 日本語のテキスト, emoji 🙂🚀", "tabs\tand\nnewlines\r\n\n  \n",
    "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "code: for (int i = 0; i < 10; i++) { x += i; }", "", " ", "ÀÉÎÕÜ ßẞ ǅ", "mixed123abc456 ___ ---",
    "a" * 300, "العربية مرحبا", "  \t  x", "!!!??? ...",
]


def tokenizer(work, src, k):
    gguf = os.path.join(work, f"tok{k}.gguf")
    run(os.path.join(BUILD, "exo-make-tiny-model"), gguf, "--tokenizer-from", src, "--tied", "1", "--layers", "1",
        "--type", "f16")
    folder = os.path.join(work, f"tok{k}")
    run(os.path.join(BUILD, "exo-gguf-to-safetensors"), gguf, folder)
    hf = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    texts_file = os.path.join(work, "texts.json")
    with open(texts_file, "w") as f:
        json.dump(TEXTS, f)
    ours = probe("encode", folder, texts_file)
    theirs = [hf.encode(t, add_special_tokens=False).ids for t in TEXTS]
    agree = 0
    for t, a, b in zip(TEXTS, ours, theirs):
        a = list(a) if isinstance(a, list) else []  # cjson writes an empty list as {}
        check(a == b, f"{os.path.basename(src)}: {t!r}: exo {a[:20]}, tokenizers {b[:20]}")
        agree += a == b
    print(f"tokenizer.json of {os.path.basename(src)}: exo and the tokenizers library agree on {agree}/{len(TEXTS)}")


def cli(work, src):
    """The folder through the command line: path resolution, tokenizer, template, --quantize."""
    f32, q8 = os.path.join(work, "cli-f32.gguf"), os.path.join(work, "cli-q8.gguf")
    common = ["--tokenizer-from", src, "--tied", "0", "--layers", "3"]
    run(os.path.join(BUILD, "exo-make-tiny-model"), f32, "--type", "f32", "--embd-type", "f32", *common)
    run(os.path.join(BUILD, "exo-make-tiny-model"), q8, "--type", "q8_0", "--embd-type", "q8_0", *common)
    folder = os.path.join(work, "cli-folder")
    run(os.path.join(BUILD, "exo-gguf-to-safetensors"), f32, folder)
    args = ["run", "--prompt", "Say something", "--max-tokens", "12", "--temperature", "0"]
    want = run(EXO, args[0], q8, *args[1:])
    got = run(EXO, args[0], folder, *args[1:], "--quantize", "q8_0")
    check(got == want and len(want.strip()) > 0, f"exo run FOLDER --quantize q8_0 said {got!r}, the Q8_0 GGUF {want!r}")
    bad = subprocess.run([EXO, args[0], folder, *args[1:], "--quantize", "q3"], capture_output=True, text=True,
                         timeout=60)
    check(bad.returncode == 2 and "q8_0, q4_0, q4_k" in bad.stderr, f"--quantize q3: {bad.returncode} {bad.stderr!r}")
    print(f"exo run FOLDER --quantize q8_0 == exo run on the Q8_0 GGUF ({len(want)} bytes of answer)")


def main():
    work = tempfile.mkdtemp(prefix="exo-st-hf-")
    try:
        weights(work)
        sources = [p for p in [os.environ.get("EXO_DEFAULT_MODEL")] if p and os.path.exists(p)]
        sources += [p for p in os.environ.get("EXO_TOKENIZER_GGUFS", "").split(":") if p]
        if not sources:
            print("SKIPPED (tokenizer part): default model not installed")
        for k, src in enumerate(sources):
            tokenizer(work, src, k)
        if sources:
            cli(work, sources[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish()


main()
