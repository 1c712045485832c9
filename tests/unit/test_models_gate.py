import shutil

import pytest

from distill.config.base import DistillError
from distill.models.compat import check_tokenizer_compat
from distill.models.config import TinySource
from distill.models.license import check_license, classify
from distill.models.loader import resolve_source


@pytest.mark.parametrize(
    "text,kind",
    [
        ("Apache-2.0", "permissive"),
        ("MIT", "permissive"),
        ("llama3.1", "restricted"),
        ("Llama 2 Community License Agreement", "restricted"),
        ("cc-by-nc-4.0", "restricted"),
        ("CC-BY-NC-ND-4.0", "restricted"),
        (None, "unknown"),
        ("proprietary", "unknown"),
    ],
)
def test_license_classes(text, kind):
    assert classify(text)[0] == kind


def test_license_gate_refuses_and_override_allows():
    with pytest.raises(DistillError, match="license refused"):
        check_license("llama3", override=False, model_name="meta")
    d = check_license("llama3", override=True, model_name="meta")
    assert d.allowed and "override" in d.reason
    assert check_license("Apache-2.0", override=False, model_name="x").allowed


def test_tokenizer_mismatch_is_refused(tiny_gqa, cache_dir, tmp_path):
    other = resolve_source(TinySource(vocab_size=600), cache_dir)
    with pytest.raises(DistillError, match="tokenizer mismatch: teacher vocab_size"):
        check_tokenizer_compat(tiny_gqa.path, other.path)
    # same vocab size, different merges
    copy = tmp_path / "student"
    shutil.copytree(tiny_gqa.path, copy)
    tj = copy / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"Ġ', '"Q', 1))
    with pytest.raises(DistillError, match="tokenizer sha256"):
        check_tokenizer_compat(tiny_gqa.path, copy)
    check_tokenizer_compat(tiny_gqa.path, tiny_gqa.path)


def test_weights_hash_is_recorded(tiny_gqa, tiny_mha):
    assert len(tiny_gqa.weights_sha256) == 64
    assert tiny_gqa.weights_sha256 != tiny_mha.weights_sha256
    assert tiny_gqa.tokenizer_sha256 == tiny_mha.tokenizer_sha256
