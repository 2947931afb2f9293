"""The runbook loader refuses what a runbook never needs, fast, in one message naming the file.

Inputs that hung or flooded the old loader (an alias bomb, a 10 MB file, fifteen thousand
wrong values) carry a timeout marker instead of a timed assertion: speed is measured in
benchmarks, these only fail when the loader hangs again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drorch.config import Runbook, RunbookError, _expand_env, load_runbook
from drorch.runbook_file import MAX_BYTES, MAX_DEPTH, MAX_NODES, MAX_SHOWN
from tests.conftest import LAB_RUNBOOK, ROOT

GOOD = LAB_RUNBOOK.read_text()
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]"
       for i in range(8)]
    + ["name: *i"]) + "\n"


def _write(tmp_path: Path, data: str | bytes) -> Path:
    path = tmp_path / "rb.yaml"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _error(path: Path) -> str:
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    message = str(info.value)
    assert all(line.startswith(f"{path}") for line in message.splitlines()), message
    return message


def _line(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` occurrence of ``needle`` in ``text``."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    return text.count("\n", 0, index) + 1


# -- size, encoding ------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_a_file_over_the_size_limit_is_refused_by_name(tmp_path: Path) -> None:
    """A 10 MB file is refused at the limit, with the file and the limit named."""
    path = _write(tmp_path, GOOD + "# padding\n" * (10 * 2**20 // 10))
    message = _error(path)
    assert message == (f"{path}: larger than the 1 MiB limit for a runbook (runbooks are a "
                       "few KiB of YAML: is this the right file?)")


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    """The limit refuses only what is over it: a runbook padded to the limit loads."""
    padding = MAX_BYTES - len(GOOD.encode())
    path = _write(tmp_path, GOOD + "#" * (padding - 1) + "\n")
    assert path.stat().st_size == MAX_BYTES
    assert load_runbook(path).name == "lab"


def test_a_binary_file_is_named_as_such(tmp_path: Path) -> None:
    """A PNG (NUL bytes) is a binary file, not a YAML error or a traceback."""
    path = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert _error(path) == f"{path}:3: a binary file, not YAML text (NUL byte at byte 8)"


def test_text_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    """Latin-1 text: the first byte that is not UTF-8 and its line are named."""
    data = GOOD.replace("description: Local", "description: Caf\u00e9 Local").encode("latin-1")
    path = _write(tmp_path, data)
    at = data.index(b"\xe9")
    assert _error(path) == (f"{path}:{_line(GOOD, 'description:')}: not UTF-8 text at byte "
                            f"{at} (a runbook is UTF-8 YAML)")


# -- YAML shape ----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    """Billion laughs: refused at line 1 before anything is expanded."""
    path = _write(tmp_path, BILLION_LAUGHS)
    assert _error(path) == (f"{path}:1: YAML anchor &a: anchors and aliases are not allowed "
                            "in a runbook (write the value out)")


def test_an_alias_is_refused_with_its_line(tmp_path: Path) -> None:
    """A merge key reusing an anchor defined elsewhere is refused where the alias is."""
    text = GOOD.replace("regions:\n  - name: region-a\n",
                        "regions:\n  - name: region-a\n    <<: *base\n")
    path = _write(tmp_path, text)
    assert _error(path) == (f"{path}:{_line(text, '<<: *base')}: YAML alias *base: anchors and "
                            "aliases are not allowed in a runbook (write the value out)")


@pytest.mark.timeout(20)
def test_too_many_values_and_too_deep_nesting_are_refused(tmp_path: Path) -> None:
    """Under the size limit a file can still hold half a million values or nest deep
    (libyaml stops at 1,000 levels; the pure-Python parser has no limit)."""
    many = _write(tmp_path, "app_roles: [" + ",".join(["a"] * (MAX_NODES + 10)) + "]\n")
    assert f"more than {MAX_NODES:,} values" in _error(many)
    deep = _write(tmp_path, "name: " + "[" * 100 + "]" * 100 + "\n")
    assert _error(deep) == f"{deep}:1: nested more than {MAX_DEPTH} levels deep"


def test_a_duplicate_top_level_key_is_refused(tmp_path: Path) -> None:
    """An appended ``name: other`` no longer renames the runbook."""
    path = _write(tmp_path, GOOD + "name: other\n")
    last = len(GOOD.splitlines()) + 1
    assert _error(path) == (f"{path}:{last}: (top level): key 'name' is given twice in one "
                            f"mapping (first at line {_line(GOOD, 'name: lab')}); YAML would "
                            "silently keep only the last")


def test_a_duplicate_nested_key_is_refused_with_its_path(tmp_path: Path) -> None:
    """Deep in the runbook too: the mapping's path, the key and both lines are named."""
    text = GOOD.replace("    app_roles: [app]\n", "    app_roles: [app]\n    kind: postgres\n")
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}:{_line(text, 'kind: postgres', 2)}: databases.0: key 'kind' is given twice in "
        f"one mapping (first at line {_line(text, 'kind: postgres')}); YAML would silently "
        "keep only the last")


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    """A syntax error is one line with the file, the line and the parser's problem."""
    text = GOOD.replace("regions:\n", "regions:\n  - [unclosed\n")
    path = _write(tmp_path, text)
    assert _error(path).startswith(f"{path}:{_line(text, '[unclosed') + 1}: invalid YAML: ")


# -- duplicate names -----------------------------------------------------------------

_DB = "  - name: main\n    endpoints:\n      region-a: {host: h, port: 1}\n" \
      "      region-b: {host: h, port: 1}\n"
_RECORD = "    - {name: app.lab.drorch.test., set_identifiers: {region-a: x, region-b: y}}\n"


@pytest.mark.parametrize(("old", "new", "first", "dup", "field"), [
    ("- name: email\n", "- name: login-checkout\n", ("- name: login-checkout", 1),
     ("- name: login-checkout", 2), "validation.flows.1.name"),
    ("- name: checkout\n", "- name: login\n", ("- name: login\n", 1), ("- name: login\n", 2),
     "validation.flows.0.steps.1.name"),
    ("- name: region-b\n", "- name: region-a\n", ("- name: region-a", 1),
     ("- name: region-a", 2), "regions.1.name"),
    ("databases:\n", "databases:\n" + _DB, ("- name: main", 1), ("- name: main", 2),
     "databases.1.name"),
    ("region: region-b, database: main}", "region: region-a, database: main}",
     ("{secret_id: lab/main/db", 1), ("{secret_id: lab/main/db", 2), "secrets.1.secret_id"),
    ("{name: db-port, kind: tcp, host: 127.0.0.1, port: \"${DRORCH_LAB_PG_A_PORT",
     "{name: db, kind: tcp, host: 127.0.0.1, port: \"${DRORCH_LAB_PG_A_PORT",
     ("{name: db,", 1), ("{name: db,", 2), "health.regions.0.probes.1.name"),
    ("- region: region-b\n", "- region: region-a\n", ("- region: region-a", 1),
     ("- region: region-a", 2), "health.regions.1.region"),
    ("{name: public.orders,", "{name: public.users,", ("{name: public.users", 1),
     ("{name: public.users", 2), "databases.0.reconcile.tables.1.name"),
    ("  records:\n", "  records:\n" + _RECORD, ("- {name: app.lab", 1),
     ("- name: app.lab", 1), "dns.records.1.name"),
    ("{region-a: region-a, region-b: region-b}", "{region-a: same, region-b: same}",
     ("set_identifiers:", 1), ("set_identifiers:", 1), "dns.records.0.set_identifiers.region-b"),
])
def test_a_repeated_name_is_refused_with_both_lines(
        tmp_path: Path, old: str, new: str, first: tuple[str, int], dup: tuple[str, int],
        field: str) -> None:
    """Where a name must be unique, the repeat is named at its line with the first's line."""
    assert GOOD.count(old) == 1
    text = GOOD.replace(old, new)
    path = _write(tmp_path, text)
    line, first_line = _line(text, *dup), _line(text, *first)
    assert re.search(rf"^{re.escape(f'{path}:{line}: {field}: ')}.*(must be unique|used twice)"
                     rf".* is used twice \(first at line {first_line}\)$",
                     _error(path), re.MULTILINE), _error(path)


def test_a_step_and_a_check_of_one_flow_cannot_share_a_name(tmp_path: Path) -> None:
    """Steps and checks are reported by name, so they share one namespace."""
    check = "        - kind: db_row\n"
    text = GOOD.replace(check, check + "          name: login\n")
    path = _write(tmp_path, text)
    step, check = _line(text, "name: login\n"), _line(text, "name: login\n", 2)
    assert (f"{path}:{check}: validation.flows.0.checks.0.name: step/check name 'login' is "
            f"used twice (first at line {step})") in _error(path)


# -- a screenful of errors -----------------------------------------------------------

@pytest.mark.timeout(20)
def test_thousands_of_errors_print_a_screenful_and_a_count(tmp_path: Path) -> None:
    """15,000 wrong values: the first few problems with their lines, then a count."""
    roles = ", ".join(str(i) for i in range(15_000))
    path = _write(tmp_path, GOOD.replace("app_roles: [app]", f"app_roles: [{roles}]"))
    lines = _error(path).splitlines()
    assert len(lines) == MAX_SHOWN + 1 <= 20
    line = _line(GOOD, "app_roles")
    assert lines[0] == (f"{path}:{line}: databases.0.app_roles.0: Input should be a valid "
                        "string")
    assert lines[-1] == f"{path}: ... and {15_000 - MAX_SHOWN} more problems"


# -- ${VAR} substitution -------------------------------------------------------------

def test_a_variable_cannot_change_the_document_structure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value is substituted inside its scalar: YAML in it stays text."""
    monkeypatch.setenv("DRORCH_TEST_DESC", "x\nname: evil\nregions: []")
    path = _write(tmp_path, GOOD.replace("description: Local", "description: ${DRORCH_TEST_DESC}"
                                         " Local"))
    rb = load_runbook(path)
    assert rb.name == "lab" and len(rb.regions) == 2
    assert rb.description.startswith("x\nname: evil\nregions: []")


def test_an_unset_variable_names_file_line_and_variable(tmp_path: Path) -> None:
    """Every unset variable without a default is named at its line; comments are not read."""
    text = GOOD.replace("name: lab\n", "name: ${DRORCH_NO_SUCH_VAR}\n# ${DRORCH_NOR_THIS}\n")
    path = _write(tmp_path, text)
    assert _error(path) == (f"{path}:{_line(text, 'name: $')}: environment variable "
                            "DRORCH_NO_SUCH_VAR is not set (and ${DRORCH_NO_SUCH_VAR} has no "
                            "default)")


def test_a_plain_placeholder_is_typed_and_a_quoted_one_is_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${P}`` unquoted becomes an int the way YAML types it; quoted it stays text."""
    monkeypatch.setenv("DRORCH_TEST_PORT", "31000")
    path = _write(tmp_path, "a: ${DRORCH_TEST_PORT}\nb: \"${DRORCH_TEST_PORT}\"\n")
    from drorch.runbook_file import read_runbook_file

    raw = read_runbook_file(path)
    assert (raw["a"], raw["b"]) == (31000, "31000")


# -- the shipped runbooks ------------------------------------------------------------

RUNBOOKS = sorted((ROOT / "runbooks").glob("*.yaml"))


@pytest.mark.parametrize("path", RUNBOOKS, ids=[p.name for p in RUNBOOKS])
def test_shipped_runbooks_are_yaml_before_substitution(path: Path) -> None:
    """Editors, linters and plain YAML tools read the shipped runbooks as they are."""
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def _old_loader(text: str) -> Runbook:
    """What the runbook meant before its placeholders were quoted: the loader of then
    replaced ``${VAR}`` in the whole text, unquoted, and parsed the result."""
    unquoted = re.sub(r'"(\$\{[A-Za-z0-9_]+(?::-[^}"]*)?\})"', r"\1", text)
    raw: Any = yaml.safe_load(_expand_env(unquoted))
    return Runbook.model_validate(raw)


@pytest.mark.parametrize("env", [{}, {"DRORCH_LAB_PG_A_PORT": "31000",
                                      "DRORCH_LAB_DNS_VERIFY_S": "7",
                                      "DRORCH_STATE_DIR": "/tmp/elsewhere"}])
@pytest.mark.parametrize("path", RUNBOOKS, ids=[p.name for p in RUNBOOKS])
def test_quoting_the_placeholders_changed_nothing_loaded(
        path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Quoted placeholders give the same runbook (ints still ints) as the text-wide
    substitution of unquoted ones did, with defaults and with variables set."""
    for name in [n for n in os.environ if n.startswith("DRORCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    text = path.read_text()
    loaded = load_runbook(path)
    assert loaded == _old_loader(text)
    if path.name == "lab.yaml":
        port = loaded.database("main").endpoints["region-a"].port
        assert port == int(env.get("DRORCH_LAB_PG_A_PORT", "25432"))


# -- the command line ----------------------------------------------------------------

BAD_RUNBOOKS: dict[str, tuple[bytes, str]] = {
    "binary": (b"\x00\x01\x02" * 1000, "a binary file, not YAML text"),
    "alias-bomb": (BILLION_LAUGHS.encode(), "YAML anchor &a"),
    "duplicate-key": ((GOOD + "name: other\n").encode(), "key 'name' is given twice"),
    "huge": (GOOD.encode() * 3000, "larger than the 1 MiB limit"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", [["plan"], ["failover", "--dry-run"]])
@pytest.mark.parametrize("case", sorted(BAD_RUNBOOKS))
def test_cli_answers_a_bad_runbook_with_one_message(
        tmp_path: Path, case: str, command: list[str]) -> None:
    """`drorch plan` / `failover --dry-run` exit 2 naming the file, with no traceback."""
    data, expected = BAD_RUNBOOKS[case]
    path = _write(tmp_path, data)
    result = subprocess.run([sys.executable, "-m", "drorch.cli", *command, "-r", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{path}:" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) <= 20


def test_a_merge_key_is_refused(tmp_path: Path) -> None:
    """``<<`` with an inline mapping (no alias) would let a key be given twice without
    the duplicate-key check seeing it: refused where it stands (found by review)."""
    text = GOOD.replace("write_flag:\n", "write_flag:\n  <<: {parameter: /other}\n")
    path = _write(tmp_path, text)
    error = _error(path)
    assert error.startswith(f"{path}:{_line(text, '<<: {parameter')}: write_flag: merge keys")
