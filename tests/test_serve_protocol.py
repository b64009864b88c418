"""`pie serve`'s request parsing, text handling and the engine's `min_tokens`, without a server."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from runners.serve.protocol import ApiError, parse_request
from runners.serve.text import ChoiceText, ServeText
from tiny_hf_model import tiny_model_dir


def refused(body, chat=False):
    with pytest.raises(ApiError) as err:
        parse_request(body, chat)
    assert err.value.status == 400
    return err.value


def test_completion_fields_parse_with_vllm_extras():
    request = parse_request({"model": "m", "prompt": [[1, 2], "text"], "max_tokens": 9, "min_tokens": 3, "ignore_eos": True,
                             "temperature": 0.5, "top_p": 0.9, "seed": 4, "stop": "x", "stop_token_ids": [2],
                             "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                             "return_token_ids": True, "n": 1, "echo": False, "logprobs": None,
                             "repetition_penalty": 1.0}, chat=False)
    assert request.prompts == ((1, 2), "text") and request.max_tokens == 9 and request.min_tokens == 3
    assert request.stop == ("x",) and request.stop_token_ids == (2,) and request.seed == 4
    assert request.include_usage and request.continuous_usage_stats and request.return_token_ids
    assert parse_request({"prompt": "hi"}, chat=False).max_tokens == 16  # OpenAI's default
    assert parse_request({"messages": [{"role": "user", "content": "hi"}]}, chat=True).max_tokens is None


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "logprobs": 1}, "logprobs"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "frequency_penalty": 0.2}, "frequency_penalty"),
    ({"prompt": "x", "best_of": True}, "best_of"),  # True is not the neutral 1
    ({"prompt": "x", "banana": 1}, "banana"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "seed": 2**63}, "seed"),
    ({"prompt": "x", "seed": -2**63 - 1}, "seed"),
    ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"max_tokens": 2}, "prompt"),
])
def test_unsupported_or_wrong_fields_are_400_naming_the_field(body, param):
    assert refused(body).param == param


def test_chat_messages_are_checked():
    assert parse_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
                         chat=True).messages == (("user", "ab"),)
    assert refused({"messages": [{"role": "tool", "content": "x"}]}, chat=True).param == "messages[0].role"
    assert refused({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, chat=True).param == "messages[0].content"
    assert refused({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, chat=True).param == "tools"
    assert refused([1, 2]).param is None


class _Words:
    """A decoder that returns one word per token id."""

    @staticmethod
    def push(ids):
        return "".join(f"w{token} " for token in ids)


def test_stop_strings_cut_the_text_and_are_never_sent():
    text = ChoiceText(_Words(), stop=("w3 w4",))
    sent = [text.push([1], False), text.push([2], False), text.push([3], False), text.push([4], False)]
    assert "".join(sent) == "w1 w2 " and text.stopped
    assert all("w3" not in part for part in sent)
    plain = ChoiceText(_Words(), stop=())
    assert plain.push([7], False) + plain.push([8], True) == "w7 w8 "


def test_text_of_a_model_tokenizer_and_of_the_approximation(tmp_path):
    exact = ServeText.load(str(tiny_model_dir(tmp_path / "tok", weights=False, tokenizer=True)))
    ids = exact.encode("the quick brown fox")
    choice = exact.choice()
    assert exact.exact and "".join(choice.push([token], False) for token in ids) == "the quick brown fox"
    assert exact.chat_prompt([("user", "the fox")]) == exact.encode("user: the fox\nassistant:")
    approximate = ServeText.load(str(tiny_model_dir(tmp_path / "bare", weights=False)))
    assert not approximate.exact and "approximate" in approximate.description
    assert approximate.choice().push([5, 17], False) == "[5][17]"


def test_min_tokens_keeps_a_request_past_its_stop_token(tmp_path):
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir(tmp_path / "m")), dtype="float32", num_device_blocks=32))
    prompt = [3, 14, 15, 9, 26]
    (reference,) = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))
    tokens = reference.output_token_ids
    stop = tokens[1]
    (early,) = engine.generate([prompt], SamplingParams(max_tokens=12, stop_token_ids=(stop,)))
    assert early.finish_reason == "stop" and early.output_token_ids == tokens[:tokens.index(stop) + 1]
    (held,) = engine.generate([prompt], SamplingParams(max_tokens=12, stop_token_ids=(stop,), min_tokens=4))
    later = [i for i, token in enumerate(tokens) if token == stop and i >= 4]
    end = later[0] + 1 if later else 12
    assert held.output_token_ids == tokens[:end] and held.finish_reason == ("stop" if later else "length")
    with pytest.raises(Exception, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


@pytest.mark.parametrize("args, message", [
    (["--adaptive"], "--adaptive needs a pool"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--max-queue", "0"], "--max-queue must be at least 1"),
    (["--shutdown-grace", "-1"], "--shutdown-grace must be >= 0"),
    (["-O", "bogus=1"], "bogus"),
    (["-O", "max_num_seqs=many"], "max_num_seqs"),
])
def test_bad_serve_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_pie

    model = tiny_model_dir(tmp_path / "m", weights=False)
    code, _, err = run_pie(["serve", "--model", model, "--device", "cpu", *args], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_a_port_in_use_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import socket

    from cli_helpers import run_pie

    model = tiny_model_dir(tmp_path / "m", weights=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_pie(["serve", "--model", model, "--device", "cpu", "--dtype", "float32",
                                "--port", taken.getsockname()[1]], monkeypatch, capsys)
    assert code == 2 and "cannot listen on 127.0.0.1" in err and "Traceback" not in err, err


def test_stream_decoder_gives_the_text_of_decoding_everything_at_once():
    """The Rust DecodeStream path: byte-level BPE with multi-byte characters split over tokens, a special token
    and an id past the tokenizer's vocabulary (a model's padded one); the same text as the windowed decoder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from runners.serve.text import ChoiceText, _decoder, _HFDecoder, _StreamDecoder

    corpus = ["the quick brown fox jumps over the lazy dog", "naïve café déjà vu", "snow ☃ and fire 🔥 together"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        clean_up_tokenization_spaces=False)
    text = "a naïve fox 🔥 sees ☃ déjà"
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids, tokenizer.vocab_size + 7]
    decoder = _decoder(tokenizer)
    assert isinstance(decoder, _StreamDecoder)
    pieces = [decoder.push([token]) for token in ids]
    assert "".join(pieces) == tokenizer.decode(ids[:-1], skip_special_tokens=True) == text
    assert not any("\ufffd" in piece for piece in pieces)  # a character split over tokens waits for its last byte
    windowed, streamed = ChoiceText(_HFDecoder(tokenizer), ()), ChoiceText(_decoder(tokenizer), ())
    assert [windowed.push([t], False) for t in ids[:-1]] == [streamed.push([t], False) for t in ids[:-1]]
    # decoding that cleans up spaces afterwards keeps the windowed decoder, whose decode() applies it
    tokenizer.clean_up_tokenization_spaces = True
    assert isinstance(_decoder(tokenizer), _HFDecoder)
