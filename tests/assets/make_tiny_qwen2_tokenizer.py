"""Build tests/assets/tiny-qwen2-tokenizer: a Qwen2Tokenizer of ~450 ids, laid out as the published
Aero-1-Audio tokenizer is (Qwen2's pre-tokenizer regex, its chat specials, then `<image>`,
`<video>`, `<|AUDIO|>` added last).

Unlike tiny-tokenizer (GPT-2's regex), Qwen2's regex keeps a run of newlines as one pre-token, so
"\\n\\n" becomes one merged id as in the real vocabulary: the case the reference's ids depend on
when an audio window expands to no tokens. Run once; the result is committed.
"""

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

CORPUS = [
    "You are a helpful assistant.\n",
    "Please transcribe the audio\n\n",
    "Please recognize the speech and only output the recognized content:\n\n",
    "the quick brown fox jumps over the lazy dog\n",
    "hello world this is a test of the tiny tokenizer for aero\n\n\n",
    "What is said in this recording? "
    "Answer with the option's letter from the given choices directly.",
    "system user assistant 0123456789",
] * 20
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_BY_AERO = ["<image>", "<video>", "<|AUDIO|>"]  # the conversion adds these after Qwen's own


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=440, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    trained = json.loads(tok.to_str())["model"]
    vocab, merges = trained["vocab"], [tuple(pair) for pair in trained["merges"]]
    fast = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=CHAT_SPECIALS[1:],
    )
    fast.add_special_tokens(
        {"additional_special_tokens": ADDED_BY_AERO}, replace_extra_special_tokens=False
    )
    out = Path(__file__).parent / "tiny-qwen2-tokenizer"
    fast.save_pretrained(out)
    print(out, len(fast), fast.tokenize("a\n\nb"), fast.convert_tokens_to_ids(ADDED_BY_AERO))


if __name__ == "__main__":
    main()
