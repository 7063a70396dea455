"""Fuzz the model-file loader: structured mutations of valid model files (tests/fuzz_modelfile.py: truncation,
byte flips in header and data, wrong length prefixes, header entries and manifest fields of wrong types or
huge values, duplicate keys, swapped or spliced offsets, inserted garbage), thousands of cases; then, where
atheris installs, coverage-guided byte-level fuzzing for a fixed time. The property: every case either loads
with exactly the original tensors or is refused with a one-line ModelFileError.

    python benchmarks/fuzz_modelfile.py [--cases-per-kind 500] [--atheris-seconds 60]

Writes benchmarks/results/fuzz_modelfile.json and .md (counts per mutation kind and outcome)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: tests/fuzz_modelfile.py holds the mutations

import torch  # noqa: E402

from backdoor_arena.modelfile import Manifest, save_model  # noqa: E402
from backdoor_arena.models import build_model  # noqa: E402
from backdoor_arena.records import Record, write_jsonl  # noqa: E402
from backdoor_arena.report import markdown_table  # noqa: E402
from backdoor_arena.runtime import set_threads, versions  # noqa: E402
from tests.fuzz_modelfile import MUTATIONS, check_outcome, mutate  # noqa: E402

SUBJECTS = {  # architectures with and without BatchNorm (int64 counters), small enough to load fast
    "badnet-mnist": ("mnist", [1, 28, 28], 10),
    "gtsrb-cnn": ("gtsrb", [3, 32, 32], 43),
}


def _valid(root: Path, arch: str) -> tuple[bytes, dict[str, torch.Tensor]]:
    dataset, shape, classes = SUBJECTS[arch]
    args = {"in_channels": shape[0], "num_classes": classes, "image_size": shape[1], "mean": [0.5] * shape[0],
            "std": [0.25] * shape[0]}
    torch.manual_seed(0)
    model = build_model(arch, args).eval()
    path = root / f"{arch}.safetensors"
    save_model(path, model, Manifest(architecture=arch, arch_args=args, dataset=dataset, input_shape=shape,
                                     num_classes=classes, class_names=[str(i) for i in range(classes)]))
    return path.read_bytes(), {k: v.clone() for k, v in model.state_dict().items()}


def run_structured(cases_per_kind: int, root: Path) -> tuple[list[dict], list[dict]]:
    rows, failures = [], []
    for arch in SUBJECTS:
        raw, tensors = _valid(root, arch)
        for kind in MUTATIONS:
            counts: collections.Counter[str] = collections.Counter()
            started = time.perf_counter()
            for seed in range(cases_per_kind):
                outcome = check_outcome(mutate(raw, kind, seed), tensors, root / "case.safetensors")
                bucket = outcome if outcome in ("refused", "unchanged") else "FAILURE"
                counts[bucket] += 1
                if bucket == "FAILURE":
                    failures.append({"architecture": arch, "kind": kind, "seed": seed, "outcome": outcome})
            rows.append({"fuzzer": "structured", "architecture": arch, "mutation": kind, "cases": cases_per_kind,
                         "refused": counts["refused"], "unchanged": counts["unchanged"], "failures": counts["FAILURE"],
                         "cases_per_s": round(cases_per_kind / (time.perf_counter() - started), 1)})
            print(rows[-1], flush=True)
    return rows, failures


def run_atheris(seconds: int, root: Path) -> list[dict]:
    """Coverage-guided fuzzing in a child process: libFuzzer ends its process when the time is up, so the
    child writes its counts at exit and this process reads them."""
    import subprocess

    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris); coverage-guided fuzzing skipped", flush=True)
        return []
    import re

    counts_file = root / "atheris-counts.json"
    run = subprocess.run([sys.executable, __file__, "--atheris-child", str(seconds), "--child-dir", str(root)],
                         timeout=seconds * 4 + 600, check=False, capture_output=True, text=True)
    done = re.search(r"Done (\d+) runs", run.stderr)
    counts = json.loads(counts_file.read_text()) if counts_file.is_file() else {}
    failed = run.returncode != 0 or not done or counts.get("FAILURE", 0)
    if failed:
        print(run.stderr[-3000:], flush=True)
    total = int(done[1]) if done else sum(counts.values())
    # the child writes its counts every 256 cases; libFuzzer's own total counts the last few too
    refused = counts.get("refused", 0) + (total - sum(counts.values()) if not failed else 0)
    return [{"fuzzer": "atheris", "architecture": "badnet-mnist", "mutation": "coverage-guided bytes", "cases": total,
             "refused": refused, "unchanged": counts.get("unchanged", 0), "failures": int(bool(failed)),
             "cases_per_s": round(total / seconds, 1)}]


def _atheris_child(seconds: int, root: Path) -> None:
    import atexit

    import atheris

    raw, tensors = _valid(root, "badnet-mnist")
    counts: collections.Counter[str] = collections.Counter()

    def save() -> None:
        (root / "atheris-counts.json").write_text(json.dumps(counts))

    atexit.register(save)

    def one(data: bytes) -> None:
        outcome = check_outcome(data, tensors, root / "atheris.safetensors")
        counts["refused" if outcome == "refused" else "unchanged" if outcome == "unchanged" else "FAILURE"] += 1
        if sum(counts.values()) % 256 == 0 or outcome not in ("refused", "unchanged"):
            save()
        assert outcome in ("refused", "unchanged"), outcome

    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "valid").write_bytes(raw)
    atheris.instrument_all()  # coverage of every loaded Python function (the loader, safetensors' Python side)
    atheris.Setup([sys.argv[0], f"-max_len={len(raw) + 4096}", f"-max_total_time={seconds}",
                   f"-artifact_prefix={root}/", str(corpus)], one)
    atheris.Fuzz()


COLUMNS = ["fuzzer", "architecture", "mutation", "cases", "refused", "unchanged", "failures", "cases_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-per-kind", type=int, default=500)
    parser.add_argument("--atheris-seconds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--atheris-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, default=HERE.parent / "docs" / "records" / "fuzz_modelfile.jsonl",
                        help="Records for docs/ (docs/tables.py renders the table from them).")
    args = parser.parse_args()
    set_threads()
    if args.atheris_child:
        _atheris_child(args.atheris_child, args.child_dir)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, failures = run_structured(args.cases_per_kind, Path(tmp))
        rows += run_atheris(args.atheris_seconds, Path(tmp))
    total = {"cases": sum(r["cases"] for r in rows), "failures": sum(r["failures"] for r in rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": "fuzz_modelfile", "command": " ".join(sys.argv), "total": total, "failures": failures[:50],
            "wall_time_s": round(time.perf_counter() - started, 1), "versions": versions()}
    (args.out / "fuzz_modelfile.json").write_text(json.dumps({**meta, "records": rows}, indent=1))
    command = "python benchmarks/fuzz_modelfile.py " + " ".join(sys.argv[1:])
    config = {"command": command.strip(), "cases_per_kind": args.cases_per_kind,
              "atheris_seconds": args.atheris_seconds}
    write_jsonl(args.records, [Record("fuzz-modelfile", config, None,
                                      {k: r[k] for k in ("cases", "refused", "unchanged", "failures", "cases_per_s")},
                                      {k: r[k] for k in ("fuzzer", "architecture", "mutation")}, versions())
                               for r in rows])
    table = markdown_table(rows, COLUMNS)
    (args.out / "fuzz_modelfile.md").write_text(
        f"# fuzz_modelfile\n\n{__doc__.splitlines()[0]}\n\n{table}\nTotal: {total['cases']} cases, "
        f"{total['failures']} outcomes other than a ModelFileError or an unchanged load.\n")
    print(table)
    print(f"total {total['cases']} cases, {total['failures']} failures")
    sys.exit(1 if total["failures"] else 0)


if __name__ == "__main__":
    main()
