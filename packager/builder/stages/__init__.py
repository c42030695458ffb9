"""The stages of one target's build, in order, over one BuildState (packager.builder.state):

convert -> install_runtime -> validate (gates, cross-checks) -> selftest -> bench -> finish ->
publish_bundle. packager.builder.pipeline runs them for every target; packager.builder.search runs
the first four for each candidate precision and hands the winner back to the pipeline."""

from packager.builder.stages.bench import bench, bench_rounds, bench_run, open_loop_run
from packager.builder.stages.convert import artifact_mb, convert, converter_errors, install_runtime
from packager.builder.stages.publish import bundle_root, finish, manifest_meta, publish_bundle
from packager.builder.stages.selftest import selftest
from packager.builder.stages.validate import run_cross_checks, validate

__all__ = [
    "artifact_mb",
    "bench",
    "bench_rounds",
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
