"""params.yaml is the one home of every default: each section is read into its dataclass, none of which has a
default, so a key missing from params.yaml fails with its name. One table of every section and its dataclass,
so that a new section or a new code default fails here."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

pytest.importorskip("tvm")

from lprnet.compile.tvm.tune import TuneParams  # noqa: E402
from lprnet.errors import InputError  # noqa: E402
from lprnet.pipeline.baseline_step import BaselineParams  # noqa: E402
from lprnet.pipeline.budget import BudgetParams  # noqa: E402
from lprnet.pipeline.calibrate_step import CalibrateParams  # noqa: E402
from lprnet.pipeline.data_step import DataParams  # noqa: E402
from lprnet.pipeline.export_onnx_step import ExportParams  # noqa: E402
from lprnet.pipeline.gate import GateParams  # noqa: E402
from lprnet.pipeline.params import read_section  # noqa: E402
from lprnet.pipeline.prune_step import PruneParams  # noqa: E402
from lprnet.pipeline.quantize_step import QuantizeParams  # noqa: E402
from lprnet.pipeline.tvm_step import TVMParams  # noqa: E402
from lprnet.runtime.bench import BenchConfig  # noqa: E402
from tests.conftest import REPO  # noqa: E402

SECTIONS = {"data": DataParams, "baseline": BaselineParams, "bench": BenchConfig, "prune": PruneParams,
            "calibrate": CalibrateParams, "quantize": QuantizeParams, "export_onnx": ExportParams, "tvm": TVMParams,
            "gate": GateParams, "tune": TuneParams, "budget": BudgetParams}
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_every_section_has_its_dataclass():
    assert sorted(PARAMS) == sorted(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_no_field_has_a_code_default(section):
    defaulted = [field.name for field in dataclasses.fields(SECTIONS[section])
                 if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING]
    assert not defaulted, f"{section}: {defaulted} have code defaults; params.yaml is their home"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_repository_section_is_valid_and_complete(section):
    params = read_section(REPO / "params.yaml", section, SECTIONS[section])
    assert sorted(field.name for field in dataclasses.fields(params)) == sorted(PARAMS[section])


@pytest.mark.parametrize(("section", "key"), [(section, key) for section in sorted(SECTIONS)
                                              for key in sorted(PARAMS[section])])
def test_a_key_missing_from_params_yaml_fails_with_its_name(tmp_path, section, key):
    params = {**PARAMS, section: {k: v for k, v in PARAMS[section].items() if k != key}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'params.yaml'}: {section}: missing key\(s\) {key}$"):
        read_section(tmp_path / "params.yaml", section, SECTIONS[section])
