#!/usr/bin/env python3
"""The shape of the code: functions over a length and files over a size in
non-test source (`crates/*/src`, without `#[cfg(test)]` modules).

    scripts/code-shape.py [--max-fn 100] [--max-file 800] [ROOT]

Prints every function over --max-fn lines and every file over --max-file
lines, then the largest files; exits 1 when any limit is passed.
"""

import argparse
import pathlib
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip_strings(line: str) -> str:
    """The line without string and char literals and `//` comments, so
    braces inside them are not counted."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == "/" and line.startswith("//", i):
            break
        if c == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
            continue
        if c == "'" and i + 2 < n and (line[i + 2] == "'" or (line[i + 1] == "\\" and "'" in line[i + 2 : i + 5])):
            j = line.find("'", i + 2 if line[i + 1] != "\\" else i + 3)
            i = j + 1 if j > 0 else i + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def test_module_lines(lines):
    """Indexes of lines inside `#[cfg(test)]` items."""
    skip = set()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            depth, started, j = 0, False, i + 1
            while j < len(lines):
                code = strip_strings(lines[j])
                depth += code.count("{") - code.count("}")
                started = started or "{" in code
                if started and depth <= 0:
                    break
                if not started and code.strip().endswith(";"):
                    break
                j += 1
            skip.update(range(i, j + 1))
            i = j + 1
        else:
            i += 1
    return skip


def functions(lines, skip):
    """(name, first line, length) of each function outside test code."""
    found = []
    for i, line in enumerate(lines):
        if i in skip:
            continue
        m = FN.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = strip_strings(lines[j])
            if not started and ";" in code and "{" not in code:
                break  # a declaration without a body (trait method)
            depth += code.count("{") - code.count("}")
            started = started or "{" in code
            if started and depth <= 0:
                found.append((m.group(7), i + 1, j - i + 1))
                break
            j += 1
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-fn", type=int, default=100)
    ap.add_argument("--max-file", type=int, default=800)
    ap.add_argument("root", nargs="?", default=".")
    args = ap.parse_args()
    root = pathlib.Path(args.root)
    long_fns, big_files, sizes = [], [], []
    for path in sorted(root.glob("crates/*/src/**/*.rs")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        skip = test_module_lines(lines)
        rel = path.relative_to(root)
        code_lines = len(lines) - len(skip)
        sizes.append((code_lines, str(rel)))
        if path.name != "tests.rs" and code_lines > args.max_file:
            big_files.append((code_lines, str(rel)))
        if path.name == "tests.rs":
            continue
        for name, first, length in functions(lines, skip):
            if length > args.max_fn:
                long_fns.append((length, f"{rel}:{first}", name))
    print(f"functions over {args.max_fn} lines (non-test source): {len(long_fns)}")
    for length, where, name in sorted(long_fns, reverse=True):
        print(f"  {length:5}  {name:<32} {where}")
    print(f"files over {args.max_file} lines (without test modules): {len(big_files)}")
    for n, rel in sorted(big_files, reverse=True):
        print(f"  {n:5}  {rel}")
    print("largest files (without test modules):")
    for n, rel in sorted(sizes, reverse=True)[:10]:
        print(f"  {n:5}  {rel}")
    return 1 if long_fns or big_files else 0


if __name__ == "__main__":
    sys.exit(main())
