"""Bad extra corpora fail before the pipeline starts, naming evaluate.extra_corpora[i]."""

import pytest

from distill.config.base import DistillError
from distill.eval.config import ExtraCorpus, GenerationEvalConfig
from distill.eval.extra import check_extra_corpora


def test_missing_and_empty_extra_corpora_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.jsonl").write_text("")
    (tmp_path / "ok.txt").write_text("def f():\n    return 1\n")
    ok = ExtraCorpus(name="ok", paths=[tmp_path / "ok.txt"])
    cases = {
        "missing": ("nowhere", "paths: .*nowhere does not exist"),
        "emptydir": ("empty", "the corpus is empty: no files found"),
        "blank": ("blank.jsonl", "the corpus is empty: all 1 files have no content"),
    }
    for name, (path, needle) in cases.items():
        bad = ExtraCorpus(name=name, paths=[tmp_path / path])
        with pytest.raises(
            DistillError, match=rf"evaluate\.extra_corpora\[1\] \({name}\): {needle}"
        ):
            check_extra_corpora([ok, bad])
    check_extra_corpora([ok])


def test_generation_settings_validate():
    assert GenerationEvalConfig().code_prompts == 8
    with pytest.raises(ValueError):
        GenerationEvalConfig(max_new_tokens=0)


def test_an_installed_package_is_an_extra_corpus_and_its_version_is_reported():
    from distill.eval.extra import describe, extra_files

    ec = ExtraCorpus(name="rich", package="rich")
    files = extra_files(0, ec)
    assert files and all(f.suffix == ".py" for f in files)
    info = describe(ec)
    assert info["package"] == "rich" and info["version"] and "rich" in info["paths"][0]
    with pytest.raises(DistillError, match=r"extra_corpora\[0\] \(x\): package 'no_such_pkg_zz'"):
        extra_files(0, ExtraCorpus(name="x", package="no_such_pkg_zz"))
    with pytest.raises(ValueError, match="either paths"):
        ExtraCorpus(name="x")
    with pytest.raises(ValueError, match="either paths"):
        ExtraCorpus(name="x", package="rich", paths=["/tmp"])
