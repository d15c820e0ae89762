"""Checks that every file of the contract carries the options each generator
needs for idiomatic packages, with the same values everywhere."""

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
if not files:
    problems.append("no .proto files found")
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"options: {len(files)} files carry every generator option")
