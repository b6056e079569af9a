"""Hostile params files: nothing a user can put in params.yaml switches a check off or escapes as a traceback.

- Every numeric key of every section (found from the dataclasses' type hints, so a new key is covered): NaN,
  infinities (as YAML floats and as strings), and values of the wrong type are refused naming `section.key`.
- Non-finite numbers inside lists and dicts (prune.auto_ratios, tvm.target) are refused naming the key.
- A params file that is not UTF-8 plain-data YAML with unique keys is refused as one line naming the file.
- The entry points that read params: a stage script and the `gate` verb (whose NaN threshold once passed any drop).
"""

from __future__ import annotations

import math
import re
import types
from typing import Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from lprnet.__main__ import main as cli
from lprnet.errors import InputError
from lprnet.pipeline.params import read_section
from tests.conftest import REPO
from tests.test_params_sections import PARAMS, SECTIONS
from tests.test_stage_params import names, run_stage_in_process

NON_FINITE = [math.nan, math.inf, -math.inf, "nan", "-inf", "1e999"]
WRONG_TYPES = ["abc", [1.0], {"value": 1}, True]


def options(section: str, key: str) -> tuple:
    """The types a key's hint allows (`float | None` -> (float, NoneType))."""
    hint = get_type_hints(SECTIONS[section])[key]
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


def numeric_keys() -> list[tuple[str, str]]:
    return [(section, key) for section in sorted(SECTIONS) for key in get_type_hints(SECTIONS[section])
            if {int, float} & set(options(section, key))]


def write_params(path, section: str, key: str, value) -> None:
    params = {name: dict(values) for name, values in PARAMS.items()}
    params[section][key] = value
    path.write_text(yaml.safe_dump(params), encoding="utf-8")


def refusal(path, section: str) -> str:
    with pytest.raises(InputError) as refused:
        read_section(path, section, SECTIONS[section])
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_every_section_has_numeric_keys_under_test():
    covered = {section for section, _ in numeric_keys()}
    assert covered == set(SECTIONS), set(SECTIONS) - covered


@pytest.mark.parametrize(("section", "key"), numeric_keys(), ids=lambda v: v)
def test_non_finite_and_wrongly_typed_numbers_are_refused_naming_the_key(tmp_path, section, key):
    integers_only = float not in options(section, key)
    for value in NON_FINITE + WRONG_TYPES + ([1.5, "2"] if integers_only else []):
        write_params(tmp_path / "params.yaml", section, key, value)
        message = refusal(tmp_path / "params.yaml", section)
        assert names(message, section, key), (value, message)


@pytest.mark.parametrize(("section", "key", "value", "named"), [
    ("prune", "auto_ratios", [0.1, math.nan, 0.3], "prune.auto_ratios[1]"),
    ("prune", "auto_ratios", [0.1, "inf"], "prune.auto_ratios"),
    ("tvm", "target", {"kind": "llvm", "mcpu": math.nan}, "tvm.target.mcpu"),
    ("tvm", "target", {"kind": "llvm", "mtriple": "garbage-xx"}, "tvm.target"),
    ("tvm", "graph_passes", "graphs", "tvm.graph_passes"),
    ("tvm", "layout_passes", ["fold_constant", math.inf], "tvm.layout_passes[1]"),
])
def test_non_finite_numbers_in_lists_and_dicts_and_bad_names_are_refused(tmp_path, section, key, value, named):
    write_params(tmp_path / "params.yaml", section, key, value)
    message = refusal(tmp_path / "params.yaml", section)
    assert named in message, message


# (what is wrong, file content, what the one line must say after the file name)
BAD_FILES = [
    ("syntax", b"data:\n  source: [\n", r"not valid YAML at line \d+"),
    ("python tag", b"data: !!python/object/apply:os.system [echo hi]\n", r"not valid YAML at line 1 .*python"),
    ("duplicate key", b"data:\n  seed: 0\n  seed: 1\n", r"not valid YAML at line 3 \(key 'seed' given twice\)"),
    ("duplicate section", b"gate: {}\ngate: {}\n", r"not valid YAML at line 2 \(key 'gate' given twice\)"),
    ("not UTF-8", b"data:\n  source: \xff\n", r"not UTF-8 text \(byte 16\)"),
    ("a list", b"- data\n", r"no section 'data'"),
    ("section a list", b"data: [1, 2]\n", r"no section 'data'"),
]


@pytest.mark.parametrize(("content", "expected"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_params_file_that_is_not_plain_utf8_yaml_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    message = refusal(path, "data")
    assert re.search(expected, message), message


@pytest.mark.parametrize(("content", "expected"), [
    (b"data:\n  seed: 0\n  seed: 1\n", "key 'seed' given twice"),
    (b"data: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    (b"data:\n  source: \xff\n", "not UTF-8"),
], ids=["duplicate key", "python tag", "not UTF-8"])
def test_a_stage_given_such_a_file_stops_in_one_line_before_writing(tmp_path, monkeypatch, capsys, content,
                                                                     expected):
    (tmp_path / "params.yaml").write_bytes(content)
    out = tmp_path / "out"
    code = run_stage_in_process("data", ["stages/data.py", "--params", str(tmp_path / "params.yaml"),
                                         f"--out={out / 'prepared'}", f"--metrics={out / 'data.json'}"], monkeypatch)
    stderr = capsys.readouterr().err
    assert code == 1 and stderr.count("\n") == 1 and expected in stderr and "Traceback" not in stderr, stderr
    assert not out.exists()


@pytest.mark.parametrize("value", [math.nan, "nan", math.inf, -1.0, "x"])
def test_the_gate_refuses_a_threshold_that_would_pass_any_drop(tmp_path, capsys, value):
    write_params(tmp_path / "params.yaml", "gate", "max_accuracy_drop", value)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "baseline.json").write_text('{"accuracy": 0.1}', encoding="utf-8")
    code = cli(["gate", "--against", "HEAD", "--params", str(tmp_path / "params.yaml"),
                "--metrics", str(tmp_path / "metrics")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert captured.err.count("\n") == 1 and "gate.max_accuracy_drop" in captured.err, captured.err


def test_the_repository_params_file_still_reads():
    for section, cls in SECTIONS.items():
        read_section(REPO / "params.yaml", section, cls)
