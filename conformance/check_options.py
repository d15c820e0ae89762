"""Checks that every file of the contract carries the options each generator
needs for idiomatic packages, with the same values everywhere; and, of what
Google's api-linter checks (CI cannot install it), that every `request_id`
carries `(google.api.field_info).format = UUID4` and every rule the files
disable comes with its reason."""

import pathlib
import re
import sys

EXPECTED = {
    "csharp_namespace": '"Cooperation.V1"',
    "go_package": '"github.com/cooperation-registry/cooperation-registry/gen/go/cooperation/v1;cooperationv1"',
    "java_multiple_files": "true",
    "java_package": '"org.cooperationregistry.cooperation.v1"',
    "objc_class_prefix": '"CXX"',
    "php_namespace": '"Cooperation\\\\V1"',
    "ruby_package": '"Cooperation::V1"',
}

problems = []
files = sorted(pathlib.Path(sys.argv[1]).glob("cooperation/v1/*.proto"))
for path in files:
    text = path.read_text()
    found = dict(re.findall(r"^option (\w+) = (.+);$", text, re.M))
    for option, value in EXPECTED.items():
        if found.get(option) != value:
            problems.append(f"{path}: option {option} is {found.get(option)!r}, expected {value}")
    outer = found.get("java_outer_classname", "")
    camel = "".join(part.title() for part in path.stem.split("_")) + "Proto"
    if outer != f'"{camel}"':
        problems.append(f"{path}: java_outer_classname is {outer!r}, expected \"{camel}\"")
    # A request_id field and its options, up to the end of the declaration.
    for match in re.finditer(r"string request_id = \d+( \[[^\]]*\])?;", text):
        if "(google.api.field_info).format = UUID4" not in match.group(0):
            problems.append(f"{path}: {match.group(0)!r} lacks (google.api.field_info).format = UUID4")
    # Each `(-- api-linter: ... --)` block names its reason.
    for block in re.findall(r"\(-- api-linter:.*?--\)", re.sub(r"\n\s*// ?", " ", text), re.S):
        if "aip.dev/not-precedent:" not in block:
            problems.append(f"{path}: {block[:80]!r}... gives no aip.dev/not-precedent reason")
if not files:
    problems.append("no .proto files found")
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"options: {len(files)} files carry every generator option, every request_id "
      "its UUID4 format, every disabled api-linter rule its reason")
