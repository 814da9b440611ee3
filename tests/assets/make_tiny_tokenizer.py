"""Build tests/assets/tiny-tokenizer: a byte-level BPE of 512 ids with Qwen-style chat tokens.

Run once; the result is committed so tests never need the network.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>"]
CORPUS = [
    "You are a helpful assistant.",
    "Please transcribe the audio",
    "Please recognize the speech and only output the recognized content:",
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a test of the tiny tokenizer for aero",
    "What is said in this recording? "
    "Answer with the option's letter from the given choices directly.",
    "system user assistant",
] * 20


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512 - len(SPECIAL),
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIAL)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|AUDIO|>"],
    )
    out = Path(__file__).parent / "tiny-tokenizer"
    fast.save_pretrained(out)
    print(out, len(fast))


if __name__ == "__main__":
    main()
