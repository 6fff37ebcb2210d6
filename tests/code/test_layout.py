"""The layout's rules, checked on the code: dependencies point one way, and TensorFlow loads only where a network is
built or run (never in the jobs' argument parsing or the screening driver)."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

MAY_IMPORT = {"infra": set(), "model": {"infra"}, "pipeline": {"infra", "model"},
              "jobs": {"infra", "model", "pipeline"}, "tools": {"infra", "model", "pipeline"}}


def project_imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names & set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(package):
    wrong = {str(path.relative_to(ROOT)): sorted(project_imports(path) - MAY_IMPORT[package] - {package})
             for path in (ROOT / package).rglob("*.py")}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_jobs_the_screening_driver_and_an_onnx_actor_do_not_load_tensorflow():
    code = ("import sys, jobs.screen, jobs.retrain, jobs.evaluate, jobs.query, jobs.maintain, jobs.doctor, "
            "pipeline.screening.run, pipeline.scoring.stages, pipeline.doctor, model.registry; "
            "from pipeline.scoring.stages import InferenceActor; from model.registry import load_model_info; "
            "info = load_model_info(); InferenceActor(info.uri, info.weights_sha256, 0.5, 1, False, backend='onnx'); "
            "print(sorted(name for name in ('tensorflow', 'tf_keras', 'keras') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


# within pipeline: the stores and stages below the jobs' orchestration never reach up into it, nor into the pages
# built on their results (the report, the review app)
PIPELINE_ABOVE = {"sources": {"screening", "report", "review"}, "scoring": {"screening", "report", "review"},
                  "results": {"screening", "report", "review"}, "report": {"screening", "review"},
                  "review": {"screening"}}


def pipeline_imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            names.add(node.module.split(".")[1])
    return names


@pytest.mark.parametrize("package", sorted(PIPELINE_ABOVE))
def test_pipeline_sub_packages_do_not_import_the_layers_above_them(package):
    wrong = {str(path.relative_to(ROOT)): sorted(pipeline_imports(path) & PIPELINE_ABOVE[package])
             for path in (ROOT / "pipeline" / package).rglob("*.py")}
    assert {path: names for path, names in wrong.items() if names} == {}
