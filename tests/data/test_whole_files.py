"""Source code and other files whose lines are not documents: data.txt_documents=file (one document
per file), data.extensions (which files a directory or glob contributes), data.strip_whitespace=false
(documents kept exactly), and the cache key, which these settings change only when they are used."""
from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest

import mlm.data.documents
import mlm.data.readers
from mlm.config import DataConfig
from mlm.data.prepare import LATER_READER_SETTINGS, reader_settings
from mlm.errors import UserError
from mlm.tokenizer import train_tokenizer
from tests.data.data_helpers import check_stream, decoded_documents, make_cfg, run


def code_tree(root):
    """A small package: two real stdlib modules' source, a long file, a non-Python file and a cache."""
    src = root / "src" / "pkg"
    (src / "__pycache__").mkdir(parents=True)
    files = {
        "a_readers.py": inspect.getsource(mlm.data.readers),
        "b_documents.py": inspect.getsource(mlm.data.documents),
        "c_tabs.py": "def f(x):\n\tif x:\n\t\treturn  x\n\n\n# trailing blank lines\n\n",
    }
    for name, text in files.items():
        (src / name).write_text(text, encoding="utf-8")
    (src / "notes.md").write_text("# not code\n")
    (src / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00binary")
    (src / "z_last.py").write_text("x = 1\n" * 200)  # last: its tail block is dropped
    return src, list(files.values())


@pytest.fixture(scope="module")
def code_tok_path(tmp_path_factory):
    texts = [inspect.getsource(mlm.data.readers), inspect.getsource(mlm.data.documents)]
    path = tmp_path_factory.mktemp("code_tok") / "tokenizer.json"
    train_tokenizer(texts, 600, "byte_bpe").save(str(path))
    return path


def test_each_python_file_is_one_document_kept_exactly(tmp_path, code_tok_path):
    src, texts = code_tree(tmp_path)
    cfg = make_cfg(tmp_path, [src.parent], code_tok_path, txt_documents="file", extensions=[".py"],
                   strip_whitespace=False, seq_len=64)
    prepared, messages = run(cfg)
    check_stream(prepared, texts + ["x = 1\n" * 200])  # exactly the files' text, indentation and final newlines
    assert decoded_documents(prepared)[:3] == texts
    assert prepared.stats["skipped"] == {}  # notes.md is left out by choice, not counted
    assert messages == []


def test_a_file_longer_than_the_piece_limit_keeps_its_whitespace(tmp_path, code_tok_path):
    body = "".join(f"    def method_{i}(self):\n\t\treturn {i}  \n\n" for i in range(300))
    (tmp_path / "big.py").write_text(body)
    (tmp_path / "small.py").write_text("pass\n" * 100)
    cfg = make_cfg(tmp_path, [tmp_path / "big.py", tmp_path / "small.py"], code_tok_path, txt_documents="file",
                   strip_whitespace=False, max_chunk_chars=1000, seq_len=64)
    prepared, _ = run(cfg)
    assert decoded_documents(prepared)[0] == body
    assert prepared.stats["repaired"] == {"long_document": 1}


def test_whole_files_stripped_by_default(tmp_path, code_tok_path):
    texts = ["\n\n  first file\n  two lines\n\n", "\tsecond\n"]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(text)
    prepared, _ = run(make_cfg(tmp_path, files * 20, code_tok_path, txt_documents="file"))
    assert decoded_documents(prepared)[:2] == ["first file\n  two lines", "second"]


def test_a_directory_of_other_files_names_the_setting(tmp_path, code_tok_path):
    src, _ = code_tree(tmp_path)
    with pytest.raises(UserError, match=r"has no \.txt.*files.*data\.extensions=\[\.py\]"):
        run(make_cfg(tmp_path, [src], code_tok_path, txt_documents="file"))


def test_globs_take_any_extension_and_extensions_filter_them(tmp_path, code_tok_path):
    src, texts = code_tree(tmp_path)
    glob_py = make_cfg(tmp_path, [f"{tmp_path}/src/**/*.py"], code_tok_path, txt_documents="file",
                       strip_whitespace=False)
    assert run(glob_py)[0].stats["documents"] == 4
    glob_all = make_cfg(tmp_path, [f"{tmp_path}/src/**/*"], code_tok_path, txt_documents="file",
                        strip_whitespace=False, extensions=["py", ".MD"])  # no dot, any case
    prepared, _ = run(glob_all)
    assert prepared.stats["documents"] == 5 and prepared.stats["skipped"] == {}


def test_new_reader_settings_change_the_cache_key_only_when_used():
    assert reader_settings(DataConfig()) == reader_settings(SimpleNamespace(**{
        k: getattr(DataConfig(), k) for k in ("validation_fraction", "text_field", "txt_documents", "min_chars",
                                              "max_chunk_chars", "max_record_chars", "hf_split", "hf_config")}))
    for name, default in LATER_READER_SETTINGS.items():
        changed = DataConfig(**{name: "keep" if isinstance(default, str) else not default})
        assert reader_settings(changed)[name] != default
        assert json.dumps(reader_settings(changed)) != json.dumps(reader_settings(DataConfig()))
