"""mlm.data.fasta: one document per FASTA record (multi-line sequences joined, headers dropped or kept,
"*" and case, comments, compression, a record without a sequence counted), and the documents that
reach the shards."""
from __future__ import annotations

import bz2
import gzip

import pytest

from mlm.data.readers import format_of
from mlm.data.report import SKIP_REASONS
from mlm.tokenizer import train_tokenizer
from tests.data.data_helpers import check_stream, decoded_documents, make_cfg, run

FASTA = """>sp|P69905|HBA_HUMAN Hemoglobin subunit alpha
MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF
DLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL

RVDPVNFKLLSHCLLVTLAAHLPAEFTPAVHASLDKFLASVSTVLTSKYR*
>empty record
>tr|Q0|lower case and spaces
mkv lla agg
;a comment line
vvdd*
>only a stop
*
>internal stop
ACD*EFG
"""
RECORDS = ["MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL"
           "RVDPVNFKLLSHCLLVTLAAHLPAEFTPAVHASLDKFLASVSTVLTSKYR",
           "MKVLLAAGGVVDD", "ACD*EFG"]


@pytest.fixture(scope="module")
def residue_tok_path(tmp_path_factory):
    """A char tokenizer over residues (and the header characters, for fasta_header=keep)."""
    tok = train_tokenizer(RECORDS + [FASTA, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"], 200, "char")
    path = tmp_path_factory.mktemp("char") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_fasta_extensions_name_the_format():
    for name in ("a.fasta", "a.fa", "a.faa", "a.fna", "a.FA.gz", "a.fasta.xz"):
        assert format_of(f"/x/{name}").name == "fasta", name


@pytest.mark.parametrize("compress", [None, "gzip", "bz2"])
def test_one_document_per_record_line_breaks_removed(tmp_path, residue_tok_path, compress):
    data = FASTA.encode()
    path = tmp_path / "seqs.fasta"
    if compress == "gzip":
        data, path = gzip.compress(data), tmp_path / "seqs.fa.gz"
    elif compress == "bz2":
        data, path = bz2.compress(data), tmp_path / "seqs.faa"  # compression is read from the bytes, not the name
    path.write_bytes(data)
    prepared, messages = run(make_cfg(tmp_path, [path], residue_tok_path, seq_len=8))
    check_stream(prepared, RECORDS)
    assert prepared.stats["skipped"] == {"empty_record": 2}
    assert sum("FASTA record without a sequence" in m and f"{path}:6" in m for m in messages) == 1  # file:line
    assert "empty_record" in SKIP_REASONS


def test_header_kept_case_kept(tmp_path, residue_tok_path):
    path = tmp_path / "seqs.fasta"
    path.write_text(FASTA)
    prepared, _ = run(make_cfg(tmp_path, [path], residue_tok_path, seq_len=8, fasta_header="keep",
                               fasta_uppercase=False))
    docs = decoded_documents(prepared)
    assert docs[0] == ">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha\n" + RECORDS[0]
    assert docs[1] == ">tr|Q0|lower case and spaces\nmkvllaaggvvdd"


def test_sequence_before_any_header_and_crlf(tmp_path, residue_tok_path):
    path = tmp_path / "raw.fa"
    path.write_bytes(b"ACDE\r\nFGHI\r\n>second\r\nKLMN\r\n")
    prepared, _ = run(make_cfg(tmp_path, [path], residue_tok_path, seq_len=8))
    assert decoded_documents(prepared)[:2] == ["ACDEFGHI", "KLMN"]


def test_a_record_longer_than_the_piece_limit_is_streamed_whole(tmp_path, residue_tok_path):
    """A record of 2,500 residues with max_chunk_chars=1000 still is one document, with its final "*" removed."""
    residues = ("MKVLAAGGDE" * 250)
    lines = "\n".join(residues[i:i + 60] for i in range(0, len(residues), 60))
    path = tmp_path / "long.fasta"
    path.write_text(f">long\n{lines}*\n>short\nACDE\n")
    prepared, _ = run(make_cfg(tmp_path, [path], residue_tok_path, seq_len=64, max_chunk_chars=1000))
    check_stream(prepared, [residues, "ACDE"])
    assert prepared.stats["documents"] == 2
    assert prepared.stats["repaired"] == {"long_document": 1}


def test_a_file_of_empty_records_is_an_error_naming_it(tmp_path, residue_tok_path):
    from mlm.errors import UserError

    path = tmp_path / "headers.fasta"
    path.write_text(">a\n>b\n\n>c\n")
    with pytest.raises(UserError, match="no usable text.*headers.fasta.*empty_record"):
        run(make_cfg(tmp_path, [path], residue_tok_path))
