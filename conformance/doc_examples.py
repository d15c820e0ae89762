"""Runs every grpcurl example of the documentation against a server loaded with
the example data, so a stale example fails CI.

The files are read in the order given (conformance/run.sh passes README.md, then
docs/*.md, which the shell sorts by name), and their examples run in that order
against one server: an example that creates, changes or deletes a record must
leave the data as the examples after it, in the same file or a later one, expect.

Within a file, the ```sh blocks that call grpcurl run; ```bash blocks name hosts and
files of the reader's own and are skipped. A command is expected to succeed unless
the comment line right above it names a gRPC code in parentheses,
"(FAILED_PRECONDITION ...)": then grpcurl must exit with 64 + that code.
WatchChanges examples stream forever: they run for 3 seconds and must print at
least one response.

Usage: doc_examples.py ADDRESS FILE.md [FILE.md ...]
"""

import re
import subprocess
import sys

CODES = {
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}

# The address the examples are written for, replaced by the server's.
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def commands(text):
    """(line number, comment, command) of each grpcurl call in the ```sh blocks."""
    for block in re.finditer(r"```sh\n(.*?)```", text, re.S):
        if "grpcurl" not in block.group(1):
            continue
        first_line = text.count("\n", 0, block.start(1)) + 1
        comment, current, start = "", "", 0
        for offset, line in enumerate(block.group(1).splitlines()):
            if not current and line.startswith("#"):
                comment = line
                continue
            if not current and not line.strip():
                continue
            if not current:
                start = first_line + offset
            current += line + "\n"
            if current.count("'") % 2 == 0 and not line.endswith("\\"):
                if current.lstrip().startswith("grpcurl"):
                    yield start, comment, current.strip()
                current, comment = "", ""


def run(address, command, comment):
    """Runs one example; returns (whether it behaved as documented, the result)."""
    command = command.replace(DOCUMENTED_ADDRESS, address)
    if "WatchChanges" in command:
        result = subprocess.run(["timeout", "3", "bash", "-c", command], capture_output=True, text=True)
        return result.returncode == 124 and '"revision"' in result.stdout, result
    named = [code for name, code in CODES.items() if f"({name}" in comment]
    expected = 64 + named[0] if named else 0
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    return result.returncode == expected, result


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    address, files = sys.argv[1], sys.argv[2:]
    failures = 0
    counts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        count = 0
        for line, comment, command in commands(text):
            count += 1
            ok, result = run(address, command, comment)
            if not ok:
                failures += 1
                first = command.splitlines()[0][:100]
                print(f"FAILED {path}:{line} (exit {result.returncode}): {first}\n"
                      f"{result.stdout[-600:]}{result.stderr[-600:]}")
        counts.append(f"{path} {count}")
    total = sum(int(c.rsplit(" ", 1)[1]) for c in counts)
    print(f"grpcurl examples: {total - failures} of {total} behaved as documented ({', '.join(counts)})")
    if failures or total == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
