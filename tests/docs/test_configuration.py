"""docs/configuration.md is the reference for the options: every option of both binaries, with
its environment variable, default, unit and range, checked against the binaries themselves
(`--help` for names, variables and defaults; the option parser's own range check, which answers
`--opt value --version` with exit 2 out of range and 0 in range, for the ranges)."""
import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from harness import admin_binary, node_binary  # noqa: E402

DOC = os.path.join(ROOT, "docs", "configuration.md")
# A clean environment (no SWITCHBOARD_* of the caller's), with a token so that nothing but the
# option under test can make the admin refuse.
ENV = {"PATH": os.environ.get("PATH", ""), "SWITCHBOARD_ADMIN_TOKEN": "t" * 32}


def doc_table(section):
    """{option: {env, default, unit, range}} of the table under '## <section>'."""
    with open(DOC) as fh:
        text = fh.read()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`--"):
            continue
        rows[cells[0].strip("`")] = {"env": cells[1].strip("`"), "default": cells[2],
                                     "unit": cells[3], "range": cells[4]}
    return rows


def help_options(binary):
    """{option: (env, default or None)} from binary --help."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, env=ENV,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    opts = {}
    lines = out.stdout.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  (--[a-z0-9-]+)\s+(SWITCHBOARD_[A-Z0-9_]+)$", line)
        if not m:
            continue
        desc = lines[i + 1]
        d = re.search(r"\(default: ([^)]*)\)$", desc)
        opts[m.group(1)] = (m.group(2), d.group(1) if d else None)
    return opts


def expected_unit(name):
    if name.endswith("-ms"):
        return "ms"
    if name.endswith("-bytes"):
        return "bytes"
    return None


BINARIES = {"switchboard-node": node_binary, "switchboard-admin": admin_binary}


@pytest.mark.parametrize("section", sorted(BINARIES))
def test_every_option_name_variable_default_and_unit(section):
    binary = BINARIES[section]()
    helped = help_options(binary)
    documented = doc_table(section)
    assert len(helped) >= 8
    assert sorted(documented) == sorted(helped), "options missing from or unknown to the doc"
    for name, (env, default) in helped.items():
        row = documented[name]
        assert row["env"] == env, name
        if default is None:
            # No default: the doc says what happens instead, never a value.
            assert not row["default"].startswith("`"), (name, row["default"])
        else:
            assert row["default"] == f"`{default}`", (name, row["default"], default)
        unit = expected_unit(name)
        if unit:
            assert row["unit"] == unit, (name, row["unit"])
        else:
            assert row["unit"] not in ("ms", "bytes") and row["unit"], (name, row["unit"])


def accepts(binary, name, value):
    out = subprocess.run([binary, name, str(value), "--version"], capture_output=True,
                         text=True, env=ENV, timeout=10)
    assert out.returncode in (0, 2), out
    if out.returncode == 2:
        assert name in out.stderr, out.stderr  # one line naming the option
    return out.returncode == 0


@pytest.mark.parametrize("section", sorted(BINARIES))
def test_every_documented_range_is_the_parsers(section):
    binary = BINARIES[section]()
    ranged = 0
    for name, row in doc_table(section).items():
        if row["range"].startswith("1 to 64 of"):
            ranged += 1
            assert accepts(binary, name, "a" * 64) and accepts(binary, name, "a.b_c:d-9"), name
            assert not accepts(binary, name, "a" * 65), name
            assert not accepts(binary, name, "a/b"), name
            continue
        m = re.fullmatch(r"(\d+) to (\d+)", row["range"])
        if not m:
            continue
        ranged += 1
        lo, hi = int(m.group(1)), int(m.group(2))
        assert accepts(binary, name, lo) and accepts(binary, name, hi), name
        assert not accepts(binary, name, hi + 1), name
        if lo > 0:
            assert not accepts(binary, name, lo - 1), name
        else:
            assert not accepts(binary, name, -1), name
    assert ranged >= 4


def test_names_and_variables_follow_the_rule():
    """SWITCHBOARD_<OPTION> for the node, SWITCHBOARD_ADMIN_<OPTION> for the admin."""
    for section, prefix in (("switchboard-node", "SWITCHBOARD_"),
                            ("switchboard-admin", "SWITCHBOARD_ADMIN_")):
        for name, row in doc_table(section).items():
            assert row["env"] == prefix + name[2:].upper().replace("-", "_"), name
