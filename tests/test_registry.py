import dataclasses

from packager.core import registry
from packager.core.schema import describe


def test_every_registered_target_loads_and_declares_options() -> None:
    names = registry.names()
    assert names[0] == "cpu-onnxruntime"
    assert {"cpu-openvino", "edge-ort", "gpu-tensorrt", "apple-coreml"} <= set(names)
    for name in names:
        target = registry.get(name)
        assert target.name == name and target.summary
        assert dataclasses.is_dataclass(target.Options)
        assert all(row["key"] for row in describe(target.Options))
        avail = target.availability()
        for status in (avail.build, avail.validate, avail.bench):
            assert status.ok or status.reason, f"{name}: a 'no' must say why"
