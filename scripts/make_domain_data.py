"""Domain corpora, held-out sets and one labelled task per domain, from what this machine has.

    apt-get install -y hmmer-examples emboss-test        # protein sequences (Debian; offline mirrors work)
    python scripts/make_domain_data.py --out runs/domains

Writes, under --out:

    code/train/<module path>.py     the Python standard library's source (no tests, no site-packages)
    code/heldout.jsonl              {"text": source} of 5% of the files (by a hash of the path)
    legal/train.txt, heldout.txt    the licence and copyright texts Debian installs (/usr/share/doc/*/copyright),
                                    one paragraph per document (blank-line separated), exact duplicates removed
    protein/train.fasta, heldout.fasta
                                    protein sequences shipped by hmmer-examples and emboss-test (FASTA, Stockholm
                                    alignments without their gaps, Swiss-Prot flat files), duplicates removed
    tasks/protein_families/{train,dev,test}.jsonl
                                    which family a protein (domain) sequence belongs to: the Pfam alignments of
                                    the HMMER tutorial and test suite (fn3, Pkinase, RRM_1, SMC_N), the globins,
                                    and two SCOP domain families of the EMBOSS tests
    tasks/licenses/{train,dev,test}.jsonl
                                    which licence a licence text is (the "License:" paragraphs of the Debian
                                    copyright files, the licence name line removed; GPL-2 vs GPL-2+ etc.)
    tasks/code_topics/{train,dev,test}.jsonl
                                    which area of the standard library a function's source comes from (the seven
                                    topics of scripts/make_classification_task.py; docstrings removed, the
                                    module names replaced by "module")
    summary.json                    counts

No text of a task's dev or test split is in any pretraining corpus or held-out set: the protein
and licence texts are removed from them, and the code task's dev and test functions come from files
that are kept out of code/train (they are in neither code split). Held-out sets are for masked-token
accuracy (`python -m mlm.evaluate RUN --data ...`). Deterministic: sorted inputs, hashed splits,
sampling with --seed. What the corpora hold depends on the machine (the Python version, the Debian
packages installed); summary.json records the counts.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_classification_task import TOPICS  # noqa: E402  (the seven stdlib topics)

HMMER = Path("/usr/share/doc/hmmer/examples")
EMBOSS = Path("/usr/share/EMBOSS/test")
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
PROTEIN_FAMILIES = {"fn3": "fn3", "Pkinase": "Pkinase", "RRM_1": "RRM_1", "SMC_N": "SMC_N"}  # Stockholm ID -> label
LICENSES = {"gpl-2+": "GPL-2+", "gpl-2.0+": "GPL-2+", "gplv2+": "GPL-2+", "gpl-2": "GPL-2", "gpl-3+": "GPL-3+",
            "gplv3+": "GPL-3+", "gpl-3.0+": "GPL-3+", "lgpl-2.1+": "LGPL-2.1+", "lgpl-2+": "LGPL-2+",
            "bsd-3-clause": "BSD-3-clause", "bsd-2-clause": "BSD-2-clause", "expat": "MIT/Expat",
            "mit": "MIT/Expat", "apache-2.0": "Apache-2.0", "isc": "ISC"}


def fraction(text: str) -> float:
    """A salted blake2b-64 of the text as a number in [0, 1): the split of a file, paragraph or sequence.
    Salted so it is independent of the hash mlm.data splits validation documents by (unsalted: the
    training files would then hold no document the trainer's validation split could take)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"mlm-heldout").digest()
    return int.from_bytes(digest, "little") / 2 ** 64


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def split_task(by_label: dict[str, list[str]], shares: tuple[float, float], cap: int, seed: int) -> dict:
    """Each label's texts shuffled and cut into train / dev / test by `shares` (train, dev); at most `cap`."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for label in sorted(by_label):
        texts = sorted(set(by_label[label]))
        rng.shuffle(texts)
        texts = texts[:cap]
        a, b = round(len(texts) * shares[0]), round(len(texts) * (shares[0] + shares[1]))
        for split, part in (("train", texts[:a]), ("dev", texts[a:b]), ("test", texts[b:])):
            out[split].extend({"text": t, "label": label} for t in part)
    for split in out:
        rng.shuffle(out[split])
    return out


# ---------------------------------------------------------------- proteins

def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8", "replace")


def fasta_records(text: str) -> list[tuple[str, str]]:
    records, header, lines = [], None, []
    for line in text.splitlines() + [">"]:
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join("".join(lines).split()).upper().rstrip("*")))
            header, lines = line[1:].strip(), []
        elif header is not None and not line.startswith(";"):
            lines.append(line)
    return records


def stockholm_records(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(family ID, [(name, ungapped sequence)]) of a Stockholm alignment."""
    family, parts = "", defaultdict(list)
    for line in text.splitlines():
        if line.startswith("#=GF ID"):
            family = line.split()[-1]
        elif line.strip() and not line.startswith(("#", "//")):
            name, *seq = line.split()
            parts[name].append("".join(seq))
    return family, [(n, re.sub(r"[.\-~]", "", "".join(p)).upper()) for n, p in parts.items()]


def swissprot_records(text: str) -> list[tuple[str, str]]:
    records = []
    for entry in text.split("\n//"):
        name = re.search(r"^ID\s+(\S+)", entry, re.M)
        seq = entry.split("\nSQ ", 1)
        if name and len(seq) == 2:
            records.append((name.group(1), "".join(seq[1].split("\n", 1)[1].split()).upper()))
    return records


def is_protein(seq: str) -> bool:
    return len(seq) >= 30 and seq.isalpha() and sum(seq.count(c) for c in "ACGTUN") < 0.9 * len(seq)


def protein_sources() -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """(family -> sequences for the task, [(name, sequence)] of every protein found)."""
    families: dict[str, list[str]] = defaultdict(list)
    found: list[tuple[str, str]] = []
    for root in (HMMER, EMBOSS):
        for path in sorted(root.rglob("*")):
            name = path.name.removesuffix(".gz")
            if not path.is_file():
                continue
            if name.endswith((".fa", ".fasta", ".faa", ".dhf")) or name == "wormpep":
                records = fasta_records(read_text(path))
                if name.endswith(".dhf"):  # SCOP domain hits: the family is the 7th field of the header
                    for header, seq in records:
                        fields = header.split("^")
                        if len(fields) > 11 and is_protein(seq):
                            families[f"SCOP:{fields[11]}"].append(seq)
                elif "globin" in name:
                    families["globin"].extend(s for _, s in records if is_protein(s))
                found.extend(records)
            elif name.endswith(".sto"):
                family, records = stockholm_records(read_text(path))
                if family in PROTEIN_FAMILIES:
                    families[PROTEIN_FAMILIES[family]].extend(s for _, s in records if is_protein(s))
                found.extend(records)
            elif name in ("seq.dat", "trembl.dat"):
                found.extend(swissprot_records(read_text(path)))
    return families, [(n, s) for n, s in found if is_protein(s)]


def write_proteins(out: Path, seed: int, heldout: float) -> dict:
    families, found = protein_sources()
    if not found:
        print(f"no protein sequences under {HMMER} or {EMBOSS}: apt-get install -y hmmer-examples emboss-test",
              file=sys.stderr)
        return {"protein_sequences": 0}
    task = split_task({k: v for k, v in families.items() if len(set(v)) >= 25}, (0.5, 0.2), 80, seed)
    for split, records in task.items():
        write_jsonl(out / "tasks" / "protein_families" / f"{split}.jsonl", records)
    reserved = {r["text"] for split in ("dev", "test") for r in task[split]}
    seen: set[str] = set()
    parts: dict[str, list[str]] = {"train": [], "heldout": []}
    for name, seq in found:
        if seq in seen or seq in reserved:
            continue
        seen.add(seq)
        parts["heldout" if fraction(seq) < heldout else "train"].append(f">{name}\n" + "\n".join(
            seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    for split, records in parts.items():
        (out / "protein").mkdir(parents=True, exist_ok=True)
        (out / "protein" / f"{split}.fasta").write_text("".join(records))
    return {"protein_sequences": {k: len(v) for k, v in parts.items()},
            "protein_residues": sum(len(s) for s in seen),
            "protein_task": {k: len(v) for k, v in task.items()},
            "protein_task_labels": sorted({r["label"] for r in task["train"]})}


# ---------------------------------------------------------------- licences

def without_file_lists(paragraph: str) -> str:
    """A DEP-5 stanza without its "Files:" field (lists of paths, e.g. thousands in Boost's), so the
    corpus is the copyright and licence text."""
    kept, in_files = [], False
    for line in paragraph.split("\n"):
        if line.startswith("Files:"):
            in_files = True
            continue
        if in_files and line[:1] in (" ", "\t"):
            continue
        in_files = False
        kept.append(line)
    return "\n".join(kept)


def copyright_paragraphs() -> list[str]:
    """Every distinct paragraph (blank-line separated) of the copyright files, file lists removed."""
    paragraphs, seen = [], set()
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for para in re.split(r"\n[ \t]*\n", text):
            para = without_file_lists(para.strip("\n")).strip("\n")
            if para.strip() and para not in seen:
                seen.add(para)
                paragraphs.append(para)
    return paragraphs


def license_text(paragraph: str) -> tuple[str, str] | None:
    """(label, text without its "License:" line) of a standalone DEP-5 licence paragraph."""
    lines = paragraph.split("\n")
    if not lines[0].startswith("License:") or any(l.startswith(("Files:", "Copyright:")) for l in lines):
        return None
    label = LICENSES.get(lines[0][8:].strip().lower())
    body = "\n".join(l.strip() for l in lines[1:] if l.strip() != ".").strip()
    return (label, body) if label and len(body) >= 100 else None


def write_legal(out: Path, seed: int, heldout: float) -> dict:
    paragraphs = copyright_paragraphs()
    by_label: dict[str, list[str]] = defaultdict(list)
    for para in paragraphs:
        found = license_text(para)
        if found:
            by_label[found[0]].append(found[1])
    task = split_task({k: v for k, v in by_label.items() if len(set(v)) >= 20}, (0.5, 0.2), 80, seed)
    for split, records in task.items():
        write_jsonl(out / "tasks" / "licenses" / f"{split}.jsonl", records)
    reserved = {r["text"] for split in ("dev", "test") for r in task[split]}
    parts: dict[str, list[str]] = {"train": [], "heldout": []}
    for para in paragraphs:
        found = license_text(para)
        if found and found[1] in reserved:
            continue
        parts["heldout" if fraction(para) < heldout else "train"].append(para)
    (out / "legal").mkdir(parents=True, exist_ok=True)
    for split, paras in parts.items():
        (out / "legal" / f"{split}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return {"legal_paragraphs": {k: len(v) for k, v in parts.items()},
            "legal_bytes": sum(len(p) for p in paragraphs),
            "license_task": {k: len(v) for k, v in task.items()},
            "license_task_labels": sorted({r["label"] for r in task["train"]})}


# ---------------------------------------------------------------- code

def stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def topic_of(rel: Path) -> str | None:
    top = rel.parts[0].removesuffix(".py")
    return next((t for t, modules in TOPICS.items() if top in modules), None)


def functions(source: str, topic: str) -> list[str]:
    """The source of each top-level function and method (docstring removed, module names hidden)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = source.splitlines(keepends=True)
    names = re.compile(r"\b(" + "|".join(map(re.escape, TOPICS[topic])) + r")\b")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            skip = body[0] if body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str) else None
            kept = [l for i, l in enumerate(lines[node.lineno - 1:node.end_lineno], node.lineno)
                    if skip is None or not skip.lineno <= i <= skip.end_lineno]
            text = names.sub("module", "".join(kept))
            if 80 <= len(text) <= 1500 and len(kept) >= 3:
                out.append(text)
    return out


def write_code(out: Path, seed: int, heldout: float) -> dict:
    root = Path(sysconfig.get_paths()["stdlib"])
    task_files: dict[str, dict[str, list[str]]] = {"train": defaultdict(list), "dev": defaultdict(list),
                                                   "test": defaultdict(list)}
    counts = {"train": 0, "heldout": 0, "task_only": 0}
    held: list[dict] = []
    for path in stdlib_files(root):
        rel = path.relative_to(root)
        source = path.read_text(encoding="utf-8", errors="replace")
        topic, u = topic_of(rel), fraction(str(rel))
        if topic is not None and u >= 1 - 0.4:  # 40% of each topic's files: the task's dev and test functions
            task_files["dev" if u < 1 - 0.25 else "test"][topic].extend(functions(source, topic))
            counts["task_only"] += 1
            continue
        if topic is not None:
            task_files["train"][topic].extend(functions(source, topic))
        if u < heldout:
            held.append({"text": source, "path": str(rel)})
            counts["heldout"] += 1
        else:
            target = out / "code" / "train" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
            counts["train"] += 1
    write_jsonl(out / "code" / "heldout.jsonl", held)
    rng = random.Random(seed)
    sizes = {"train": 120, "dev": 40, "test": 100}
    task = {}
    for split, by_topic in task_files.items():
        records = []
        for topic in sorted(by_topic):
            texts = sorted(set(by_topic[topic]))
            rng.shuffle(texts)
            records.extend({"text": t, "label": topic} for t in texts[:sizes[split]])
        rng.shuffle(records)
        task[split] = records
        write_jsonl(out / "tasks" / "code_topics" / f"{split}.jsonl", records)
    return {"code_files": counts, "code_task": {k: len(v) for k, v in task.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--only", choices=("code", "legal", "protein"), action="append",
                        help="build only these domains (repeatable); default: all three")
    parser.add_argument("--heldout", type=float, default=0.05, help="share of files / paragraphs / sequences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = {}
    for domain, build in (("code", write_code), ("legal", write_legal), ("protein", write_proteins)):
        if not args.only or domain in args.only:
            summary.update(build(args.out, args.seed, args.heldout))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
