import dataclasses
import json
import math
from pathlib import Path

import pydantic.dataclasses
import pytest
import tomllib

from packager.core.config import load_config, parse_config
from packager.core.errors import UserError


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
        ({"gates": {"min_finding_positives": 0}}, ["min_finding_positives"]),
        ({"bench": {"reuse": "sometimes"}}, ["bench.reuse", "quiet"]),
        ({"preprocess": {"size": [224, 224, 1]}}, ["preprocess.size", "[height, width]"]),
        ({"preprocess": {"size": [224, 0]}}, ["preprocess.size", "between 1 and 4096"]),
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


# ---- `packager targets --json` publishes each target's option schema -------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "packager" / "example" / "packager.toml"
BAD_TABLES = [
    {"threads": "4"},  # a string for an int
    {"threads": True},  # a bool for an int
    {"no_such_option": 1},  # an unknown key
    {"threads": 1.5},  # a float for an int
]


def test_published_option_schemas_take_the_example_and_refuse_what_packager_refuses(
    cli, tmp_path: Path
) -> None:
    """jsonschema (an independent validator) reads the schemas `packager targets --json`
    publishes: the example's [targets.*] tables pass, and bad tables fail there as they do in
    packager itself."""
    import jsonschema

    from packager.core import registry
    from packager.core.schema import from_dict

    r = cli("targets", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    schemas = {t["name"]: t["options_schema"] for t in r.json["targets"] if t["options_schema"]}
    assert set(schemas) == set(registry.names())
    tables = tomllib.loads(EXAMPLE.read_text())["targets"]
    assert tables  # the example configures at least one target
    for name, schema in schemas.items():
        assert pydantic.dataclasses.is_pydantic_dataclass(registry.get(name).Options), name
        validator = jsonschema.Draft202012Validator(schema)
        validator.check_schema(schema)
        assert validator.is_valid({}), name  # every option has a default
        if name in tables:
            errors = list(validator.iter_errors(tables[name]))
            assert not errors, (name, [e.message for e in errors])
        options = registry.get(name).Options
        for bad in BAD_TABLES:
            if "threads" in bad and "threads" not in schema["properties"]:
                continue
            assert not validator.is_valid(bad), (name, bad)
            with pytest.raises(UserError):
                from_dict(options, bad, f"targets.{name}")
        # Each default in the schema is what the options hold when nothing is set.
        defaults = {k: v.get("default") for k, v in schema["properties"].items()}
        assert defaults == json.loads(json.dumps(dataclasses.asdict(options())))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bench": {"seconds": True}}, "bench.seconds must be float, got True"),
        ({"bench": {"warmup": 2.0}}, "bench.warmup must be int, got 2.0"),
        ({"model": {"version": 1}}, "model.version must be str, got 1"),
        ({"labels": {"output": "softmax"}}, "labels.output = 'softmax' is not allowed; use one of"),
        ({"gates": {"min_subgroup_sensitivity": math.nan}}, "= nan must be a finite number"),
        ({"data": {"dicom": {"windw": [1, 2]}}}, "unknown key 'windw' in [data.dicom]"),
        ({"data": {"dicom": 3}}, "data.dicom must be DicomConfig, got 3"),
        ({"data": {"dicom": {"window": [40, 0]}}}, "data.dicom.window = [40.0, 0.0] must be"),
    ],
)
def test_strict_types_and_their_one_line_messages(data: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_config(data, Path("/tmp"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ints_pass_as_floats_and_the_config_round_trips() -> None:
    cfg = parse_config(
        {"bench": {"seconds": 3}, "data": {"dicom": {"window": [40, 400]}}}, Path("/")
    )
    assert cfg.bench.seconds == 3.0 and isinstance(cfg.bench.seconds, float)
    assert cfg.data.dicom.window == [40.0, 400.0]
    again = parse_config(json.loads(json.dumps(cfg.to_dict())), Path("/"))
    assert again.to_dict() == cfg.to_dict()
