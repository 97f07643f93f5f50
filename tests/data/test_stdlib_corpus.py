"""mlm.data.stdlib_corpus: the default corpus, parsed from the standard library without importing it."""
from __future__ import annotations

import json
import os
import textwrap

from mlm.config import Config
from mlm.data import stdlib_documents
from tests.data.data_helpers import run


def test_stdlib_documents_parse_without_importing(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "site-packages").mkdir()
    (lib / "pkg" / "mod.py").write_text(textwrap.dedent('''
        """Module docstring about the pkg module, long enough to keep."""
        import a_module_that_does_not_exist
        raise SystemExit("importing this would stop the process")

        class Thing:
            """Class docstring: a thing that does things in the world."""
            def method(self):
                """Method docstring explaining what the method returns."""
        if True:
            def helper():
                """Helper docstring inside an if block, also kept."""
        def short():
            """Tiny."""
        def dup():
            """Module docstring about the pkg module, long enough to keep."""
        '''))
    (lib / "pkg" / "broken.py").write_text("def (:\n")
    (lib / "test" / "test_x.py").write_text('"""A test module docstring that must be skipped."""\n')
    (lib / "site-packages" / "m.py").write_text('"""A third-party docstring that must be skipped."""\n')
    paragraphs = [f"Paragraph {i} " + "word " * 60 for i in range(20)]
    (lib / "long.py").write_text('"""' + "\n\n".join(paragraphs) + '"""\n')
    docs = list(stdlib_documents(lib, max_chars=1000))
    assert docs[0].startswith("Paragraph 0") and all(len(d) <= 1000 for d in docs)
    assert "\n\n".join(d for d in docs if d.startswith("Paragraph")) == "\n\n".join(p.strip() for p in paragraphs)
    rest = [d for d in docs if not d.startswith("Paragraph")]
    assert rest == ["Module docstring about the pkg module, long enough to keep.",
                    "Class docstring: a thing that does things in the world.",
                    "Method docstring explaining what the method returns.",
                    "Helper docstring inside an if block, also kept."]


def test_default_corpus_end_to_end(tmp_path):
    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.log.progress = False
    cfg.data.vocab_size = 1000
    prepared, messages = run(cfg)
    corpus = next((tmp_path / "run" / "data" / "corpus").glob("stdlib-docs-*.jsonl"))
    assert corpus.stat().st_size > 1_500_000
    lines = corpus.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) > 5000 and max(map(len, texts)) <= 2000 and len(set(texts)) == len(texts)
    st = prepared.stats
    assert st["documents"] == len(texts) and st["skipped"] == {}
    assert len(prepared.validation) > 10 and len(prepared.train) > 2000
    assert prepared.train[0][0] == 2
    assert prepared.tokenizer.get_vocab_size() == 1000
    again, _ = run(cfg)  # built once: the corpus file is reused as is
    assert again.stats["reused"] is True and corpus.stat().st_mtime_ns == os.stat(corpus).st_mtime_ns
