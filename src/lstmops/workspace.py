"""A flow run's own workspace: a clone of the project at the deployed ref, never the checkout it
was deployed from, on any worker.

The deployment's pull steps (prefect.yaml) clone the repository, then ``lstmops pull`` (``pull``
below) brings in what earlier runs left:

- **dvc.lock files** from the state branch (``lstmops/state``): after every run the flow commits
  the pipeline's dvc.lock there (``publish``). DVC then compares the deployed code, params and
  source against what the last run used, so unchanged stages are skipped, changed ones rerun.
  A run's overrides live in its own clone's params.yaml, so they are recorded in that run's
  dvc.lock (and in the version's lineage artifacts), never in the deployed params.
- **outputs** from the project's DVC remote (``dvc pull --allow-missing``). A cold remote, or
  one that lacks some outputs, is tolerated: DVC recomputes what it cannot fetch.

Then the flow runs, and ``publish`` pushes the outputs (``dvc push``) and the dvc.lock, so the
next run on any worker starts where this one ended. The state branch holds only dvc.lock files
(one commit per run, on top of the deployed ref), so it doubles as a log of what each run used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lstmops.errors import LstmopsError, ServiceUnavailable

STATE_BRANCH = "lstmops/state"
MARKER = Path(".lstmops-workspace")  # written by `lstmops pull`: this clone belongs to one flow run
PUSH_ATTEMPTS = 5  # a concurrent run of another pipeline may push the state branch first


def run(cwd: Path, *cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and done.returncode != 0:
        what = (done.stderr or done.stdout).strip().splitlines()
        raise LstmopsError(f"{' '.join(cmd[:3])} failed in {cwd}: {what[-1] if what else f'exit {done.returncode}'}")
    return done


def git(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run(cwd, "git", "-c", "user.name=lstmops", "-c", "user.email=lstmops@localhost", *args, check=check, env=env)


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def has_remote(project: Path) -> bool:
    return bool(dvc(project, "remote", "default", check=False).stdout.strip())


def pull(project: Path, outputs: bool = True) -> list[str]:
    """Bring this clone up to the last run's state (see the module docstring); mark it a workspace.
    ``outputs=False``: the dvc.lock files only (what `watch-source` compares the source with)."""
    said = []
    fetched = git(project, "fetch", "-q", "origin", STATE_BRANCH, check=False)
    if fetched.returncode == 0:
        tracked = git(project, "ls-tree", "-r", "--name-only", "FETCH_HEAD").stdout.split()
        locks = [f for f in tracked if f == "dvc.lock" or f.endswith("/dvc.lock")]
        if locks:
            git(project, "checkout", "FETCH_HEAD", "--", *locks)
            git(project, "reset", "-q")  # restored in the worktree, not staged
        said.append(f"dvc.lock from {STATE_BRANCH}: {', '.join(locks) or 'none'}")
    else:
        said.append(f"no {STATE_BRANCH} branch yet: every stage runs from the deployed ref's dvc.lock")
    if not outputs:
        said.append("outputs not pulled (--no-outputs)")
    elif has_remote(project):
        pulled = dvc(project, "pull", "--allow-missing", "-q", check=False)
        # A cold remote, or one missing some outputs, is fine: DVC reruns what it cannot fetch.
        said.append("outputs pulled from the DVC remote (what it had)" if pulled.returncode == 0 else
                    f"DVC remote incomplete, stages rerun as needed ({_last(pulled)})")  # fmt: skip
    else:
        said.append("no DVC remote configured: outputs are recomputed")
    (project / MARKER).write_text("a flow run's workspace (lstmops pull)\n")
    return said


def _last(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def is_workspace(project: Path) -> bool:
    return (project / MARKER).is_file()


def publish(project: Path, pipeline: Path, message: str) -> list[str]:
    """Push the run's outputs to the DVC remote and its dvc.lock to the state branch."""
    said = []
    if has_remote(project):
        pushed = dvc(project, "push", "-q", check=False)
        if pushed.returncode != 0:
            raise ServiceUnavailable(f"dvc push to the project's remote failed: {_last(pushed)}")
        said.append("outputs pushed to the DVC remote")
    lock = str((pipeline / "dvc.lock").resolve().relative_to(project.resolve()))
    blob = git(project, "hash-object", "-w", lock).stdout.strip()
    # The commit is built in an index of its own: the run's worktree (outputs, params) stays as it is.
    index = {"GIT_INDEX_FILE": str(project / ".git" / "lstmops-state-index")}
    for attempt in range(PUSH_ATTEMPTS):
        fetched = git(project, "fetch", "-q", "origin", STATE_BRANCH, check=False).returncode == 0
        base = git(project, "rev-parse", "FETCH_HEAD" if fetched else "HEAD").stdout.strip()
        git(project, "read-tree", base, env=index)
        git(project, "update-index", "--add", "--cacheinfo", f"100644,{blob},{lock}", env=index)
        tree = git(project, "write-tree", env=index).stdout.strip()
        if tree == git(project, "rev-parse", f"{base}^{{tree}}").stdout.strip():
            return [*said, f"{lock} unchanged on {STATE_BRANCH}"]
        commit = git(project, "commit-tree", tree, "-p", base, "-m", message).stdout.strip()
        if git(project, "push", "-q", "origin", f"{commit}:refs/heads/{STATE_BRANCH}", check=False).returncode == 0:
            return [*said, f"{lock} pushed to {STATE_BRANCH} ({commit[:10]})"]
        time.sleep(0.5 * (attempt + 1))  # another pipeline's run pushed first: build on top of theirs
    raise LstmopsError(f"could not push {lock} to {STATE_BRANCH} after {PUSH_ATTEMPTS} attempts")
