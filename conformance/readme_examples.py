"""Runs every grpcurl example of README.md (the ```sh blocks; ```bash blocks name
hosts and files of the reader's own and are skipped), in order, against a server
loaded with the example data, so a stale example fails CI.

A command is expected to succeed unless the comment right above it names a
gRPC code in parentheses, "(FAILED_PRECONDITION ...)" (then grpcurl must exit
with 64 + that code). WatchChanges examples
stream forever: they run for 3 seconds and must print at least one response.

Usage: readme_examples.py README ADDRESS
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


def commands(readme):
    """(comment, command) pairs from the ```sh blocks that call grpcurl."""
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        if "grpcurl" not in block:
            continue
        comment, current = "", ""
        for line in block.splitlines():
            if not current and line.startswith("#"):
                comment = line
                continue
            if not current and not line.strip():
                continue
            current += line + "\n"
            if current.count("'") % 2 == 0 and not line.endswith("\\"):
                if current.lstrip().startswith("grpcurl"):
                    yield comment, current.strip()
                current, comment = "", ""


def main():
    readme = open(sys.argv[1]).read()
    address = sys.argv[2]
    failures = 0
    count = 0
    for comment, command in commands(readme):
        count += 1
        command = command.replace("127.0.0.1:50051", address)
        first_line = command.splitlines()[0][:100]
        if "WatchChanges" in command:
            result = subprocess.run(["timeout", "3", "bash", "-c", command], capture_output=True, text=True)
            ok = result.returncode == 124 and '"revision"' in result.stdout
        else:
            named = [code for name, code in CODES.items() if f"({name}" in comment]
            expected = 64 + named[0] if named else 0
            result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
            ok = result.returncode == expected
        if not ok:
            failures += 1
            print(f"FAILED (exit {result.returncode}): {first_line}\n{result.stdout[-600:]}{result.stderr[-600:]}")
    print(f"README examples: {count - failures} of {count} behaved as documented")
    if failures or count == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
