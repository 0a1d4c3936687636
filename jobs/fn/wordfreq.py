"""Word frequencies of each text file: /in/<path> -> /out/<path>.tsv, "word<TAB>count" lines,
most frequent first (ties by word), the top N only.

An ordinary Python program: fanout builds it into WebAssembly and runs it once a shard. It
runs unchanged on the host too (`python3 wordfreq.py --top 10 IN OUT`, IN a folder or one
file), which is how the tests and bench/python.sh check that both give the same bytes.
"""
import argparse
import collections
import os
import re
import sys

WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")


def frequencies(text, lower):
    if lower:
        text = text.lower()
    return collections.Counter(WORD.findall(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=10, help="words kept per file")
    parser.add_argument("--keep-case", action="store_true", help="count 'The' and 'the' apart")
    parser.add_argument("inputs", nargs="?", default="/in")
    parser.add_argument("outputs", nargs="?", default="/out")
    args = parser.parse_args()
    files = words = 0
    for path, name in texts(args.inputs):
        with open(path, encoding="utf-8", errors="replace") as f:
            counts = frequencies(f.read(), lower=not args.keep_case)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: args.top]
        target = os.path.join(args.outputs, name + ".tsv")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(f"{word}\t{count}\n" for word, count in ranked)
        files += 1
        words += sum(counts.values())
    print(f"{files} files, {words} words")
    return 0


def texts(inputs):
    """(path, name) of every file under a folder, or of one file."""
    if os.path.isfile(inputs):
        yield inputs, os.path.basename(inputs)
        return
    for folder, _, names in os.walk(inputs):
        for name in sorted(names):
            path = os.path.join(folder, name)
            yield path, os.path.relpath(path, inputs)


if __name__ == "__main__":
    sys.exit(main())
