from pathlib import Path

import pytest

from packager.config import load_config, parse_config
from packager.errors import UserError


def test_defaults_follow_the_contract() -> None:
    cfg = parse_config({}, Path("/tmp"))
    assert cfg.gates.min_sensitivity == 0.98 and cfg.gates.max_sensitivity_drop == 0.005
    assert cfg.bench.batch_sizes == [1, 8, 16, 32, 64]
    assert cfg.labels.positive == "pneumonia" and cfg.data.split == "test"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"gates": {"min_sensitivty": 0.9}}, ["min_sensitivty", "min_sensitivity"]),
        ({"modle": {}}, ["modle", "model"]),
        ({"gates": {"min_sensitivity": "high"}}, ["gates.min_sensitivity", "float"]),
        ({"gates": {"min_sensitivity": 98}}, ["fraction"]),
        ({"bench": {"batch_sizes": [1, "8"]}}, ["bench.batch_sizes[1]"]),
        ({"labels": {"positive": "covid"}}, ["labels.positive"]),
        ({"preprocess": {"layout": "CHW"}}, ["preprocess.layout", "NCHW"]),
        ({"targets": ["cpu-openvino"]}, ["[targets]"]),
        ({"data": {"groups": {"site": 3}}}, ["data.groups.site", "str"]),
        ({"data": {"groups": ["site.csv"]}}, ["data.groups", "table of str"]),
        ({"gates": {"min_subgroup_sensitivity": 95}}, ["min_subgroup_sensitivity", "fraction"]),
        ({"gates": {"min_subgroup_positives": 0}}, ["min_subgroup_positives"]),
    ],
)
def test_bad_keys_and_types_name_the_key(data: dict, words: list[str]) -> None:
    with pytest.raises(UserError) as err:
        parse_config(data, Path("/tmp"))
    for w in words:
        assert w in str(err.value)


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "packager.toml").write_text('[model]\npath = "m.onnx"\n[data]\npath = "d.npz"\n')
    cfg = load_config(None, cwd=tmp_path)
    assert cfg.model.path == str(tmp_path / "m.onnx")
    assert cfg.data.path == str(tmp_path / "d.npz")


def test_group_files_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "packager.toml").write_text('[data.groups]\nsite = "g/site-{split}.csv"\n')
    cfg = load_config(None, cwd=tmp_path)
    assert cfg.data.groups == {"site": str(tmp_path / "g" / "site-{split}.csv")}
    assert cfg.gates.min_subgroup_sensitivity is None and cfg.gates.min_subgroup_positives == 20


def test_pyproject_tool_section_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.packager.model]\nname = "x"\n')
    assert load_config(None, cwd=tmp_path).model.name == "x"


def test_invalid_toml_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "packager.toml").write_text("[model\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(None, cwd=tmp_path)
