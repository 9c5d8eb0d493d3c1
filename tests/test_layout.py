"""The layout is a specification too: every task is a room behind one interface, the shared parts
never name a task, no task reaches into another, no module imports another's private names or
forms an import circle, and every pipeline folder is what its task's template says."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lstmops import config, scaffold
from lstmops.config import Config
from lstmops.errors import LstmopsError
from lstmops.tasks import for_task, names, settings_for, template_dir
from lstmops.tasks.base import Task

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "lstmops"
TASKS = PACKAGE / "tasks"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(folder: Path) -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(folder.rglob("*.py"))}


def imported(node: ast.AST, module: str) -> list[tuple[str, list[str]]]:
    """(module, names) of an import statement, relative imports resolved against ``module``."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".")[: -node.level]
            base = ".".join([*package, base] if base else package)
        return [(base, [alias.name for alias in node.names])]
    return []


def all_imports(tree: ast.Module, module: str) -> list[tuple[str, list[str]]]:
    return [imp for node in ast.walk(tree) for imp in imported(node, module)]


def outside_tasks() -> dict[str, ast.Module]:
    trees = {name: tree for name, tree in sources(PACKAGE).items() if not name.startswith("lstmops.tasks")}
    trees.update({f"flows.{p.stem}": ast.parse(p.read_text()) for p in (REPO / "flows").glob("*.py")})
    return trees


def test_no_module_outside_tasks_names_a_task():
    task_names = set(names())
    found = []
    for module, tree in outside_tasks().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in task_names:
                found.append(f"{module}:{node.lineno}: the string {node.value!r}")
            elif isinstance(node, ast.Attribute) and node.attr in task_names:
                found.append(f"{module}:{node.lineno}: .{node.attr}")
        for target, _ in all_imports(tree, module):
            if any(target == f"lstmops.tasks.{n}" or target.startswith(f"lstmops.tasks.{n}.") for n in task_names):
                found.append(f"{module}: imports {target}")
    assert found == []


def test_the_check_above_finds_a_task_name_where_one_is_written():
    tree = ast.parse('from lstmops.tasks.charlm.text import x\nif cfg.task == "classify": cfg.long_lag')
    named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)] + [
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]  # fmt: skip
    assert {"classify", "long_lag"} <= set(named) and all_imports(tree, "x")[0][0].startswith("lstmops.tasks.charlm")


def test_no_task_imports_another_task():
    found = []
    for task in names():
        for module, tree in sources(TASKS / task).items():
            for target, _ in all_imports(tree, module):
                other = [n for n in names() if n != task and (target == f"lstmops.tasks.{n}" or target.startswith(f"lstmops.tasks.{n}."))]
                found += [f"{module} imports {target}" for _ in other]
    assert found == []


def test_no_module_imports_a_private_name_of_another():
    found = []
    for module, tree in sources(PACKAGE).items():
        for target, imported_names in all_imports(tree, module):
            if target.startswith("lstmops") and target != module:
                found += [f"{module} imports {target}.{n}" for n in imported_names if n.startswith("_") and n != "__version__"]
    assert found == []


def module_level_imports(tree: ast.Module, module: str, known: set[str]) -> set[str]:
    """The lstmops modules imported when ``module`` is imported (not those imported inside functions,
    which is how heavy or upward dependencies are deferred, nor under TYPE_CHECKING)."""
    found = set()
    for node in tree.body:
        for target, imported_names in imported(node, module):
            for candidate in (target, *(f"{target}.{n}" for n in imported_names)):
                if candidate in known:
                    found.add(candidate)
    return found - {module}


def test_module_level_imports_form_no_circle():
    trees = sources(PACKAGE)
    graph = {m: module_level_imports(t, m, set(trees)) for m, t in trees.items()}
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack, node, nxt]
            if nxt not in state and (circle := visit(nxt, [*stack, node])):
                return circle
        state[node] = "done"
        return None

    circles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert circles == []


@pytest.mark.parametrize("name", names())
def test_every_task_implements_the_interface_and_has_settings_and_a_template(name):
    assert isinstance(for_task(name), Task)
    settings = settings_for(name)
    assert issubclass(settings, Config) and settings.SOURCE_KEY and settings.MODEL_NAME_KEY
    assert {p.name for p in template_dir(name).iterdir()} >= set(scaffold.FILES)


def test_the_root_pipeline_is_the_forecast_template_rendered_at_the_root():
    files = scaffold.rendered("forecast", "")
    assert files["params.yaml"] == (REPO / "params.yaml").read_text()
    assert files["dvc.yaml"] == (REPO / "dvc.yaml").read_text()


def project_with_sources(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    shutil.copytree(REPO / "data" / "source", project / "data" / "source")
    return project


@pytest.mark.parametrize("name", [p.name for p in sorted((REPO / "pipelines").iterdir()) if p.is_dir()])
def test_each_embedded_pipeline_is_what_lstmops_new_writes_for_its_task(tmp_path, name):
    task = config.load(REPO / "pipelines" / name).task
    made = scaffold.new(project_with_sources(tmp_path), name, task)
    for file in scaffold.FILES.values():
        assert (made / file).read_text() == (REPO / "pipelines" / name / file).read_text(), file


def test_new_writes_a_pipeline_of_its_own_with_the_source_relative_to_it(tmp_path, monkeypatch):
    project = project_with_sources(tmp_path)
    monkeypatch.chdir(project)
    made = scaffold.new(project, "demand-nsw", "forecast", "data/source/vic_elec_2014.csv")
    cfg = config.load(made)
    assert made == project / "pipelines" / "demand-nsw"
    assert cfg.task == "forecast" and cfg.model_name == "lstmops-demand-nsw"
    assert cfg.source == "../../data/source/vic_elec_2014.csv" and (made / cfg.source).is_file()
    assert "- ../../src/lstmops/tasks/forecast/model.py" in (made / "dvc.yaml").read_text()


@pytest.mark.parametrize(("name", "task", "source", "says"), [
    ("Bad Name", "forecast", None, "pipeline name 'Bad Name': use lowercase letters"),
    ("ok", "forecasting", None, "--task forecasting: not a task; expected one of forecast, charlm, classify, long_lag"),
    ("ok", "forecast", "data/source/missing.csv", "--source data/source/missing.csv: no such file or directory"),
])  # fmt: skip
def test_new_refuses_in_one_line_and_writes_nothing(tmp_path, monkeypatch, name, task, source, says):
    project = project_with_sources(tmp_path)
    monkeypatch.chdir(project)
    with pytest.raises(LstmopsError, match=says.replace("(", r"\(").replace(")", r"\)")):
        scaffold.new(project, name, task, source)
    assert not (project / "pipelines").exists() or not any((project / "pipelines").iterdir())


def test_new_refuses_an_existing_pipeline_and_leaves_it_alone(tmp_path):
    project = project_with_sources(tmp_path)
    made = scaffold.new(project, "charlm", "charlm")
    (made / "params.yaml").write_text((made / "params.yaml").read_text() + "# mine\n")
    with pytest.raises(LstmopsError, match="already exists"):
        scaffold.new(project, "charlm", "classify")
    assert (made / "params.yaml").read_text().endswith("# mine\n")


def test_a_pipeline_s_task_is_fixed_by_its_params():
    with pytest.raises(LstmopsError, match="task is fixed by"):
        config.load(REPO, ["task=charlm"])


def dvc_stages(project: Path, dvc_file: str) -> list:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return list(repo.stage.collect(str(project / dvc_file)))


def test_the_root_pipeline_depends_on_nothing_of_the_other_pipelines():
    """What makes `dvc status` at the root blind to edits of pipelines/*: none of the root's stages
    reads a file under pipelines/ or a params file other than the root's (the end-to-end test in
    test_pipeline.py edits pipelines/charlm/params.yaml after a run and checks the status)."""
    for stage in dvc_stages(REPO, "dvc.yaml"):
        for dep in stage.deps:
            assert "pipelines" not in Path(dep.fs_path).relative_to(REPO).parts, f"{stage.addressing}: {dep}"
            if hasattr(dep, "params"):
                assert Path(dep.fs_path) == REPO / "params.yaml", f"{stage.addressing}: {dep}"


def test_the_cli_takes_pipeline_before_or_after_the_command(tmp_path):
    cli = Path(sys.executable).parent / "lstmops"
    missing = subprocess.run([str(cli), "validate", "--pipeline", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr == f"error: --pipeline {tmp_path}: no params.yaml there (a pipeline is a folder with params.yaml and dvc.yaml)\n"
    shown = subprocess.run([str(cli), "--pipeline", "pipelines/charlm", "models", "--help"], cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr


HOLDERS = {"Backtests": ["forecast"], "Tunes": ["forecast"], "Compares": ["forecast"], "Generates": ["charlm"],
           "Predicts": ["forecast"], "Monitors": ["forecast"]}  # fmt: skip


@pytest.mark.parametrize(("capability", "holders"), HOLDERS.items())
def test_each_capability_belongs_to_the_tasks_that_have_it(capability, holders):
    """A capability is found by its members, so no task may have them by accident (long_lag's
    problem generator once made it look like a text sampler)."""
    from lstmops.tasks import base

    protocol = getattr(base, capability)
    assert [name for name in names() if isinstance(for_task(name), protocol)] == holders
