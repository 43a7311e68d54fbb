"""The intent parser's cost on long adversarial messages: linear in the length, and bounded.

    python -m bench.parser_speed [--max-kb 64]

For each family of inputs built to make a backtracking pattern re-scan the text (the tail
clauses, unclosed negations, whitespace runs, line breaks before the end), the unbounded
parser (``parse_unbounded``) is timed at doubling lengths; the ratio between consecutive
lengths is ~2 for linear work and ~4 for quadratic.  ``parse_correction`` itself reads at most
``MAX_CORRECTION_CHARS`` characters and is timed on the longest input (a 1 MB message too).
Before the rewrite, "Actually, " + "not a " × k + ";" took 0.84 s at 8 KB and 12.4 s at 32 KB.
"""

from __future__ import annotations

import argparse
import json
import time

from agents.intent_parser import MAX_CORRECTION_CHARS, parse_correction, parse_unbounded

FAMILIES = {
    "not a × k ;": lambda n: "Actually, " + "not a " * (n // 6) + ";",
    "instead of × k": lambda n: "Actually, X is Y" + " instead of z" * (n // 13) + ";",
    "is not × k (no comma)": lambda n: "No, the tower" + " is not b" * (n // 9) + " x",
    "clause tails + newline": lambda n: "Actually, the tower is in Rome" + ", i" * (n // 3) + "\nx",
    "whitespace runs": lambda n: "Actually, the capital" + " " * n + "of France is Rome",
    "possessive + newline": lambda n: "Actually, " + "Paris's " * (n // 8) + "\n",
    "zh 不是 × k": lambda n: "不对，" + "不是甲" * (n // 3) + "乙",
    "zh 是 × k + newline": lambda n: "不对，" + "甲是" * (n // 2) + "\n乙",
}


def seconds(fn, text: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-kb", type=int, default=64)
    args = parser.parse_args()
    sizes = [1024 * k for k in (4, 8, 16, 32, 64, 128, 256) if k <= args.max_kb]
    rows = []
    print(f"{'family':26s} " + " ".join(f"{s // 1024:>7d}K" for s in sizes) + "   ratio/doubling (max)  bounded")
    for name, make in FAMILIES.items():
        times = [seconds(parse_unbounded, make(n)) for n in sizes]
        ratios = [b / a for a, b in zip(times, times[1:]) if a > 1e-4]
        bounded = seconds(parse_correction, make(sizes[-1]))
        print(f"{name:26s} " + " ".join(f"{t * 1e3:7.1f}ms" for t in times)
              + f"   {max(ratios, default=float('nan')):5.2f}            {bounded * 1e6:6.1f} µs")
        rows.append({"family": name, "seconds": times, "max_ratio": max(ratios, default=None), "bounded_s": bounded})
    huge = "Actually, " + "not a " * ((1 << 20) // 6) + ";"
    print(f"1 MB message through parse_correction: {seconds(parse_correction, huge) * 1e6:.1f} µs "
          f"(reads at most {MAX_CORRECTION_CHARS} characters)")
    print(json.dumps({"sizes": sizes, "rows": rows}))


if __name__ == "__main__":
    main()
