"""mlm.data.report: every event counted; warnings name file and line, a few per file and reason."""
from __future__ import annotations

from mlm.data.report import WARNINGS_PER_FILE, DirtyInputReport, describe_location


def test_warnings_are_limited_per_file_but_all_events_are_counted():
    messages: list[str] = []
    report = DirtyInputReport(messages.append)
    for line in range(1, 11):
        report.skip("malformed_json", ("a.jsonl", line), "Expecting value")
    report.repair("nul_bytes", ("b.txt", 7), "2 removed", 2)
    report.skip("blank", ("b.txt", 8))  # silent: counted only
    assert report.counts() == {"skipped": {"malformed_json": 10, "blank": 1}, "repaired": {"nul_bytes": 2}}
    assert messages[:WARNINGS_PER_FILE] == [
        f"warning: a.jsonl:{n}: malformed JSON line (skipped): Expecting value" for n in (1, 2, 3)]
    assert messages[WARNINGS_PER_FILE] == ("warning: a.jsonl: further 'malformed_json' warnings not shown "
                                           "(all are counted in the summary)")
    assert messages[WARNINGS_PER_FILE + 1:] == ["warning: b.txt:7: NUL characters removed: 2 removed"]


def test_quiet_report_neither_counts_nor_warns_and_restore_continues_counts():
    messages: list[str] = []
    report = DirtyInputReport(messages.append)
    with report.quiet():
        assert report.is_quiet
        report.skip("too_short", ("a.txt", 1))
    assert not report.is_quiet and report.counts() == {"skipped": {}, "repaired": {}} and messages == []
    report.restore({"skipped": {"too_short": 4}})
    report.skip("too_short", ("a.txt", 9))
    assert report.skipped == {"too_short": 5}


def test_locations_read_as_file_line_or_row():
    assert describe_location(("a.txt",)) == "a.txt"
    assert describe_location(("a.txt", 3)) == "a.txt:3"
    assert describe_location(("t.parquet", 11, "row")) == "t.parquet (row 11)"
    assert describe_location(None) == "?"
