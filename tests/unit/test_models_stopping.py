"""The one stop rule: the model's declared eos ids, the tokenizer's, and <|im_end|> if known."""

from types import SimpleNamespace

from distill.models.loader import load_tokenizer
from distill.models.stopping import stop_token_ids


def test_declared_ids_the_tokenizers_eos_and_end_of_turn(tiny_gqa):
    tok = load_tokenizer(tiny_gqa.path)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok) == sorted({tok.eos_token_id, im_end})
    assert stop_token_ids(tok, 7, [9, 7], None) == sorted({7, 9, tok.eos_token_id, im_end})


def test_a_tokenizer_without_end_of_turn_stops_at_eos_only():
    tok = SimpleNamespace(eos_token_id=2, unk_token_id=0, convert_tokens_to_ids=lambda _: 0)
    assert stop_token_ids(tok, None) == [2]
    no_eos = SimpleNamespace(
        eos_token_id=None, unk_token_id=None, convert_tokens_to_ids=lambda _: None
    )
    assert stop_token_ids(no_eos, [5]) == [5]
