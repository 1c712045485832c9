"""Ray Data corpus preparation: text dirs, JSONL and Parquet; reuse; split by document."""

import json

import pytest

from distill.config.base import DistillError
from distill.data.config import CorpusConfig, DataConfig
from distill.data.pipeline import prepare_corpus


def _docs(n):
    from distill.models.tiny import default_tokenizer_texts

    return [t[:3000] for t in default_tokenizer_texts(limit=n)]


@pytest.mark.timeout(300)
def test_jsonl_and_parquet_and_text(tmp_path, tiny_gqa, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(12)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "txt" / f"{i}.txt").write_text(d)
    results = []
    for name, corpus in [
        ("jsonl", CorpusConfig(kind="files", paths=[tmp_path / "c.jsonl"])),
        ("parquet", CorpusConfig(kind="files", paths=[tmp_path / "c.parquet"], text_field="body")),
        ("text", CorpusConfig(kind="files", paths=[tmp_path / "txt"])),
    ]:
        cfg = DataConfig(corpus=corpus, seq_len=32, heldout_fraction=0.25)
        packed = prepare_corpus(cfg, tiny_gqa.path, tmp_path / f"out-{name}")
        assert packed.train().shape[1] == 32 and packed.heldout_rows > 0
        meta = json.loads((packed.root / "meta.json").read_text())
        # rows with the same content share an id (one document); files are documents
        n_docs = len(docs) if name == "text" else len(set(docs))
        assert meta["train_documents"] + meta["heldout_documents"] == n_docs
        results.append(packed)
    # same documents → same split for jsonl and parquet (doc id = content hash)
    assert results[0].train().tolist() == results[1].train().tolist()
    # a rerun reuses the packed corpus
    again = prepare_corpus(
        DataConfig(
            corpus=CorpusConfig(kind="files", paths=[tmp_path / "c.jsonl"]),
            seq_len=32,
            heldout_fraction=0.25,
        ),
        tiny_gqa.path,
        tmp_path / "out-jsonl",
    )
    assert again.fingerprint == results[0].fingerprint
    with pytest.raises(DistillError, match="text_field"):
        prepare_corpus(
            DataConfig(
                corpus=CorpusConfig(kind="files", paths=[tmp_path / "c.parquet"]), seq_len=32
            ),
            tiny_gqa.path,
            tmp_path / "bad",
        )


@pytest.mark.timeout(300)
def test_packages_join_a_text_corpus_and_extra_corpora_sample_many_documents(
    tmp_path, tiny_gqa, ray_local
):
    import pyarrow.parquet as pq

    from distill.eval.config import ExtraCorpus
    from distill.eval.extra import read_texts

    (tmp_path / "txt").mkdir()
    for i, d in enumerate(_docs(8)):
        (tmp_path / "txt" / f"{i}.txt").write_text(d)
    corpus = CorpusConfig(kind="files", paths=[tmp_path / "txt"], packages=["yaml"])
    packed = prepare_corpus(DataConfig(corpus=corpus, seq_len=32), tiny_gqa.path, tmp_path / "out")
    ids = set(pq.read_table(packed.root / "documents.parquet")["doc_id"].to_pylist())
    assert {f"{i}.txt" for i in range(8)} <= ids
    assert "site-packages/yaml/__init__.py" in ids  # the same id on any machine

    # an extra corpus: every document cut to max_doc_chars, in a seeded hash order, not by path
    ec = ExtraCorpus(name="yaml", package="yaml", max_doc_chars=300)
    texts = read_texts(0, ec, seq_len=32)
    full = read_texts(0, ec.model_copy(update={"max_doc_chars": 10**7}), seq_len=32)
    assert len(texts) == len(full) > 5
    assert all(len(t) <= 300 for t in texts) and max(map(len, full)) > 300
    assert [t[:300] for t in full] == texts
