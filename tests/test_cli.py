"""The CLI: instant help, -S overrides checked before any work, one-line errors."""

import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "lstmops"
HEAVY = ("torch", "mlflow", "great_expectations", "prefect", "dvc", "pandas")


def test_help_lists_every_stage_and_imports_nothing_heavy():
    code = (
        "import sys; from lstmops.cli import app\n"
        "from typer.main import get_command\n"
        "print(','.join(sorted(get_command(app).commands)))\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "backtest,checkout,compare,deploy,evaluate,export,gate,generate,history,ingest,keygen,lineage,models,monitor,new,package,predict,prepare,promote,pull,register,remote,rollback,run,serve,set,train,tune,validate"
    assert out[1] == ""  # heavy libraries are imported inside the commands that use them
    assert subprocess.run([str(CLI), "--help"], capture_output=True).returncode == 0


def test_wrong_override_fails_before_any_work_naming_the_key(project):
    before = (project / "params.yaml").read_text()
    for args, key in ((["ingest", "-S", "data.sorce=x.csv"], "data.sorce"), (["run", "-S", "train.epochs=many"], "train.epochs")):
        result = subprocess.run([str(CLI), *args], cwd=project, capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert key in result.stderr
    assert (project / "params.yaml").read_text() == before
    assert not (project / "data" / "raw").exists()


def test_missing_source_is_one_line_and_writes_no_snapshot(project):
    result = subprocess.run(
        [str(CLI), "ingest", "-S", "data.source=data/source/nope.csv"], cwd=project, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr == "error: data/source/nope.csv: source file not found\n"
    assert not (project / "data" / "raw" / "snapshot.parquet").exists()


def test_validate_works_standalone_on_any_file(project):
    bad = project / "elsewhere.csv"
    text = (project / "data/source/vic_elec_2014.csv").read_text().splitlines()
    bad.write_text("\n".join([text[0], *text[1:200], text[150], *text[200:]]) + "\n")  # a repeated row
    result = subprocess.run([str(CLI), "validate", "--data", "elsewhere.csv"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 1
    assert "elsewhere.csv: column 'timestamp': 2 duplicated timestamp(s): row 150" in result.stderr
    assert (project / "reports/validation-elsewhere.json").is_file()
    assert "FAILED" in (project / "reports/validation-elsewhere.html").read_text()
    assert not (project / "data/raw").exists()  # standalone: the pipeline's snapshot is untouched

    good = subprocess.run([str(CLI), "validate", "--data", "data/source/vic_elec_2014.csv"], cwd=project,
                          capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0, good.stderr
