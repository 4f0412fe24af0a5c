"""make_tokenizer_json_seeds.py: writes the seed inputs of fuzz_tokenizer_json.

Small tokenizer.json files of each kind a model folder may carry, made by
Hugging Face's `tokenizers` library (build/venv has it): byte-level BPE with
SmolLM's pre-tokenizer (digits, then GPT-2's split), with Llama 3's Split
regex, plain GPT-2; byte-fallback BPE (SentencePiece style, Metaspace) and
Unigram. Each is trained on a few lines so that the files stay a few KiB.

    build/venv/bin/python tests/make_tokenizer_json_seeds.py tests/fuzz/tokenizer_json/seeds
"""
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

TEXT = [
    "Hello, world! The quick brown fox jumps over the lazy dog 12345 times.",
    "caf\u00e9 \u4e2d\u6587 \U0001F600 tabs\tand\nnewlines   spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(pre):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def sentencepiece_bpe():
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = ["<0x%02X>" % b for b in range(256)]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"] + bytes_))
    return tok


def unigram():
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXT * 4, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"],
                                                              unk_token="<unk>"))
    return tok


def main(out):
    os.makedirs(out, exist_ok=True)
    made = {
        "smollm.json": byte_level(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           pre_tokenizers.ByteLevel(add_prefix_space=False)])),
        "llama3.json": byte_level(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
        "gpt2.json": byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False)),
        "spm_bpe.json": sentencepiece_bpe(),
        "unigram.json": unigram(),
    }
    for name, tok in made.items():
        tok.save(os.path.join(out, name))
        print(name, os.path.getsize(os.path.join(out, name)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/tokenizer_json/seeds")
