"""The stages of one target's build, in order, over one BuildState (packager.build.state):

convert -> install_runtime -> validate (gates, cross-checks) -> selftest -> bench -> finish ->
publish_bundle. packager.build.pipeline runs them for every target; packager.build.search runs
the first four for each candidate precision and hands the winner back to the pipeline."""

from packager.build.stages.bench import bench, bench_run, open_loop_run
from packager.build.stages.convert import artifact_mb, convert, converter_errors, install_runtime
from packager.build.stages.publish import bundle_root, finish, manifest_meta, publish_bundle
from packager.build.stages.selftest import selftest
from packager.build.stages.validate import run_cross_checks, validate

__all__ = [
    "artifact_mb",
    "bench",
    "bench_run",
    "bundle_root",
    "convert",
    "converter_errors",
    "finish",
    "install_runtime",
    "manifest_meta",
    "open_loop_run",
    "publish_bundle",
    "run_cross_checks",
    "selftest",
    "validate",
]
