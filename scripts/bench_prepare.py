"""Benchmark `mlm.data.prepare_data` against calling the tokenizer's `encode_batch` directly.

    python scripts/bench_prepare.py            # 200 MB corpus: throughput ratio and peak RSS
    python scripts/bench_prepare.py --big      # also a 2 GB corpus: peak RSS must not grow with it

The corpus is the standard library's docstrings (the default corpus, no download), one
document per line, repeated until the file reaches the target size. A wordpiece tokenizer
(vocab 8192) is trained once on the base text, then, each in a fresh subprocess:

  encode   reads the same lines in the same batches as prepare and times only
           `tokenizer.encode_batch(batch, add_special_tokens=False)` and freeing its
           result (the ceiling); also with `encode_batch_fast` (same ids, no offsets),
           which is what prepare calls;
  prepare  `prepare_data` with that tokenizer on a cold cache: reading, decoding, splitting,
           tokenizing, packing blocks, writing and hashing shards, wall clock end to end.

Each subprocess reports its peak RSS (resource.getrusage). Prints one JSON object; exits 1
when a target is missed (prepare >= 0.8x encode throughput, peak RSS < 1.5 GB, and with
--big RSS at 2 GB within 20% of RSS at 200 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 1_000_000


def build_corpus(workdir: Path, size_mb: int) -> Path:
    """One document per line; the stdlib docstring corpus repeated to `size_mb` MB (built once)."""
    path = workdir / f"corpus-{size_mb}mb.txt"
    if path.is_file() and path.stat().st_size >= size_mb * MB:
        return path
    from mlm.data import stdlib_documents

    base = "".join(" ".join(doc.split()) + "\n" for doc in stdlib_documents()).encode("utf-8")
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "wb") as f:
        while written < size_mb * MB:
            f.write(base)
            written += len(base)
    os.replace(tmp, path)
    return path


def train_bench_tokenizer(workdir: Path) -> Path:
    path = workdir / "tokenizer.json"
    if not path.is_file():
        from mlm.data import stdlib_documents
        from mlm.tokenizer import train_tokenizer

        train_tokenizer(list(stdlib_documents()), 8192, "wordpiece").save(str(path))
    return path


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2 ** 20, 1)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_encode(corpus: Path, tokenizer: Path, method: str) -> dict:
    """The ceiling: `method` (encode_batch or encode_batch_fast) on the same lines, batched as
    prepare batches them. Timed: the call and freeing its result; not timed: reading the file."""
    from tokenizers import Tokenizer

    from mlm.data import pipeline

    tok = Tokenizer.from_file(str(tokenizer))
    tok.encode_special_tokens = True
    encode = getattr(tok, method)
    encode_s = 0.0
    tokens = 0
    cpu0 = cpu_seconds()
    wall0 = time.perf_counter()

    encode_cpu = 0.0

    def run(batch: list[str]) -> None:
        nonlocal encode_s, encode_cpu, tokens
        c, t = cpu_seconds(), time.perf_counter()
        encodings = encode(batch, add_special_tokens=False)
        encode_s += time.perf_counter() - t
        encode_cpu += cpu_seconds() - c
        tokens += sum(len(e) for e in encodings)
        c, t = cpu_seconds(), time.perf_counter()
        del encodings
        encode_s += time.perf_counter() - t
        encode_cpu += cpu_seconds() - c

    with open(corpus, encoding="utf-8") as f:
        batch: list[str] = []
        chars = 0
        for line in f:
            text = line.strip()
            if not text:
                continue
            batch.append(text)
            chars += len(text)
            if chars >= pipeline.BATCH_CHARS or len(batch) >= pipeline.BATCH_PIECES:
                run(batch)
                batch, chars = [], 0
        if batch:
            run(batch)
    size = corpus.stat().st_size
    return {"method": method, "encode_seconds": round(encode_s, 2), "wall_seconds": round(time.perf_counter() - wall0, 2),
            "cpu_seconds": round(encode_cpu, 2), "worker_cpu_seconds": round(cpu_seconds() - cpu0, 2),
            "tokens": tokens, "mb_per_s": round(size / MB / encode_s, 3), "tokens_per_s": round(tokens / encode_s),
            "peak_rss_mb": peak_rss_mb()}


def worker_prepare(corpus: Path, tokenizer: Path, cache: Path) -> dict:
    from mlm.config import Config
    from mlm.data import prepare_data

    shutil.rmtree(cache, ignore_errors=True)
    cfg = Config(output_dir=str(cache / "run"))
    cfg.log.progress = False
    cfg.data.train_files = [str(corpus)]
    cfg.data.tokenizer = str(tokenizer)
    cfg.data.cache_dir = str(cache)
    cfg.validate()
    rss_before = peak_rss_mb()
    cpu0 = cpu_seconds()
    t = time.perf_counter()
    prepared = prepare_data(cfg, log=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t
    st = prepared.stats
    size = corpus.stat().st_size
    out = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu_seconds() - cpu0, 2),
           "mb_per_s": round(size / MB / wall, 3), "tokens_per_s": round(st["tokens"] / wall),
           "documents": st["documents"], "tokens": st["tokens"], "blocks": st["blocks"],
           "dropped_tail_tokens": st["dropped_tail_tokens"], "skipped": st["skipped"],
           "shards": len(prepared.train.shards) + len(prepared.validation.shards),
           "peak_rss_mb_after_imports": rss_before, "peak_rss_mb": peak_rss_mb()}
    shutil.rmtree(cache, ignore_errors=True)
    return out


def run_worker(mode: str, *args: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {mode} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also run prepare on a 2 GB corpus (slow)")
    ap.add_argument("--mb", type=int, default=200, help="size of the main corpus in MB (default 200)")
    ap.add_argument("--big-mb", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is used")
    ap.add_argument("--workdir", default="/tmp/mlm-bench-prepare")
    ap.add_argument("--worker", choices=["encode", "prepare"], help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "encode":
        print(json.dumps(worker_encode(Path(a.args[0]), Path(a.args[1]), a.args[2])))
        return 0
    if a.worker == "prepare":
        print(json.dumps(worker_prepare(Path(a.args[0]), Path(a.args[1]), Path(a.args[2]))))
        return 0

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    corpus = build_corpus(workdir, a.mb)
    tokenizer = train_bench_tokenizer(workdir)
    setup_s = time.perf_counter() - t
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "corpus": {"path": str(corpus), "bytes": corpus.stat().st_size, "setup_seconds": round(setup_s, 1)},
        "tokenizer": "wordpiece, vocab 8192, trained on the stdlib docstring corpus",
    }
    # Interleaved rounds (encode, prepare, encode_fast), best of each: on a shared machine a change
    # in load then hits all three, and the best round is the one least disturbed.
    rounds: dict[str, list[dict]] = {"encode_batch": [], "prepare": [], "encode_batch_fast": []}
    for _ in range(a.repeats):
        rounds["encode_batch"].append(run_worker("encode", str(corpus), str(tokenizer), "encode_batch"))
        rounds["prepare"].append(run_worker("prepare", str(corpus), str(tokenizer), str(workdir / "cache")))
        rounds["encode_batch_fast"].append(run_worker("encode", str(corpus), str(tokenizer), "encode_batch_fast"))
    encode = min(rounds["encode_batch"], key=lambda r: r["encode_seconds"])
    fast = min(rounds["encode_batch_fast"], key=lambda r: r["encode_seconds"])
    prepare = min(rounds["prepare"], key=lambda r: r["wall_seconds"])
    result["encode_batch"] = {**encode, "all_rounds_seconds": [r["encode_seconds"] for r in rounds["encode_batch"]]}
    result["encode_batch_fast"] = {**fast, "all_rounds_seconds": [r["encode_seconds"] for r in rounds["encode_batch_fast"]]}
    result["prepare"] = {**prepare, "all_rounds_seconds": [r["wall_seconds"] for r in rounds["prepare"]],
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds["prepare"])}
    ratio = encode["encode_seconds"] / prepare["wall_seconds"]
    checks = {"throughput_ratio_vs_encode_batch": round(ratio, 3), "throughput_ok": ratio >= 0.8,
              "throughput_ratio_vs_encode_batch_fast": round(fast["encode_seconds"] / prepare["wall_seconds"], 3),
              "cpu_seconds_ratio_vs_encode_batch": round(encode["cpu_seconds"] / prepare["cpu_seconds"], 3),
              "cpu_seconds_ratio_vs_encode_batch_fast": round(fast["cpu_seconds"] / prepare["cpu_seconds"], 3),
              "peak_rss_ok": prepare["peak_rss_mb"] < 1536}
    if a.big:
        big = build_corpus(workdir, a.big_mb)
        big_prepare = run_worker("prepare", str(big), str(tokenizer), str(workdir / "cache-big"))
        result["prepare_big"] = {"corpus_bytes": big.stat().st_size, **big_prepare}
        growth = big_prepare["peak_rss_mb"] / prepare["peak_rss_mb"] - 1
        checks.update(rss_growth_200mb_to_2gb=round(growth, 3), rss_growth_ok=abs(growth) < 0.2,
                      peak_rss_ok=checks["peak_rss_ok"] and big_prepare["peak_rss_mb"] < 1536)
    result["checks"] = checks
    print(json.dumps(result, indent=1))
    return 0 if all(v for k, v in checks.items() if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
