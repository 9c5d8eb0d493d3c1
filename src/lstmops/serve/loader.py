"""The model a server answers with: loaded from a TorchScript file or from the MLflow version an
alias points to, self-checked on a synthetic window before it serves, and swapped atomically
when the alias moves (a new version that fails to load or check leaves the old one serving).

A registry that cannot be reached is an outage, not a verdict on the version: the poll is retried
with back-off, and nothing is pinned as failed. Each version loaded from the registry is kept on
local disk (``ModelCache``), so a server started while the registry is down serves the last
good model (or stays not-ready, without exiting) and keeps trying."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from lstmops.errors import LstmopsError

log = logging.getLogger("lstmops.serve")

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelLoadError(LstmopsError):
    """A model that cannot be fetched, loaded or self-checked."""


class RegistryUnavailable(ModelLoadError):
    """The registry could not be asked or could not deliver: retried, never pinned as failed."""


# MLflow error codes by which a registry that answered says the request itself is wrong: retrying
# will not help. Everything else (connection refused, timeouts, 5xx) is treated as an outage.
PERMANENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED",
                             "UNAUTHENTICATED", "BAD_REQUEST", "NOT_FOUND"})  # fmt: skip


def transient(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) not in PERMANENT_CODES


class Refused(ModelLoadError):
    """A version whose file does not match its recorded sha256 or signature: never served, and
    not pinned as failed (asked again at the next poll, in case the file is put right)."""


class InputError(ValueError):
    """Input the model refuses; the message says what is wrong."""


@dataclass(frozen=True)
class Loaded:
    """A loaded, self-checked model and the interface it declares."""

    module: object  # torch.jit.ScriptModule
    version: str
    features: list[str]
    input_steps: int
    horizon: int
    runner: object = None  # a faster forward pass checked against the file's (serve/fastpath.py), or None

    def check(self, x) -> None:
        """Raise InputError with the artifact's own message for input it refuses. A window that
        plainly fits is let through without the call into TorchScript (a quarter of a
        millisecond per request); the forward pass checks the whole batch again anyway."""
        import numpy as np
        import torch

        if (
            x.dim() == 3 and x.is_floating_point() and x.shape[0] > 0 and x.shape[2] == len(self.features)
            and x.shape[1] >= self.input_steps and bool(np.isfinite(x.numpy()).all())  # numpy: a quarter of torch's cost
        ):  # fmt: skip
            return
        try:
            if hasattr(self.module, "check"):
                self.module.check(x)
            else:
                legacy_check(x, len(self.features), self.input_steps)
        except torch.jit.Error as exc:
            raise InputError(jit_message(exc)) from None

    def predict(self, x):
        import torch

        with torch.inference_mode():
            return (self.runner or self.module)(x)


def jit_message(exc: Exception) -> str:
    """The message a TorchScript ``raise ValueError(msg)`` carries, without the interpreter's
    traceback that precedes it (its last line is ``builtins.ValueError: msg``)."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return last.split(": ", 1)[1] if last.startswith("builtins.") and ": " in last else last


def legacy_check(x, n_features: int, input_steps: int) -> None:
    """For artifacts exported before the model checked its own input: shape and finiteness."""
    import torch

    if x.dim() != 3 or x.shape[2] != n_features or x.shape[0] == 0 or x.shape[1] < input_steps:
        raise InputError(f"expected windows x steps x features with {n_features} features, got shape {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("input contains NaN or infinite values")


def interface(module) -> tuple[list[str], int, int]:
    """Feature names, minimum history and horizon; older artifacts only have the scaler buffers."""
    features = getattr(module, "features", None)
    if features is None:
        features = [f"feature_{i}" for i in range(int(module.mean.shape[0]))]
    horizon = getattr(module, "horizon", None)
    if horizon is None:
        horizon = int(module.core.head.out_features)
    return list(features), int(getattr(module, "input_steps", 1)), int(horizon)


def load_torchscript(path: Path, version: str) -> Loaded | LoadedClassifier:
    """Load a TorchScript file and forecast one synthetic window with it before it may serve."""
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch raises many kinds for a file that is not TorchScript
        raise ModelLoadError(f"{path}: cannot load as TorchScript ({jit_message(exc)})") from None
    # What the server accepts follows from the file's own interface, not from a task's name:
    # a classifier declares its classes; a forecaster its features, window and horizon (interface()).
    if hasattr(module, "classes"):
        return load_classifier(module, path, version)
    if hasattr(module, "task") and not hasattr(module, "horizon"):
        raise ModelLoadError(
            f"{path}: a {module.task} model; lstmops serve answers forecasters and sequence classifiers (use lstmops generate)"
        )
    try:
        features, input_steps, horizon = interface(module)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not an lstmops forecaster ({jit_message(exc)})") from None
    loaded = Loaded(module, version, features, input_steps, horizon)
    self_check(loaded)
    return loaded


def self_check(loaded: Loaded) -> None:
    """A window at the scaler's mean (or zeros) must give one finite forecast of the horizon."""
    import torch

    n = len(loaded.features)
    mean = getattr(loaded.module, "mean", None)
    level = mean if isinstance(mean, torch.Tensor) and mean.shape == (n,) else torch.zeros(n)
    window = level.expand(1, max(1, loaded.input_steps), n).contiguous()
    try:
        loaded.check(window)
        out = loaded.predict(window)
    except Exception as exc:
        raise ModelLoadError(f"version {loaded.version}: self-check failed ({jit_message(exc)})") from None
    if tuple(out.shape) != (1, loaded.horizon) or not bool(torch.isfinite(out).all()):
        raise ModelLoadError(
            f"version {loaded.version}: self-check gave shape {list(out.shape)} (expected [1, {loaded.horizon}]) "
            "or non-finite values"
        )


@dataclass(frozen=True)
class LoadedClassifier:
    """A loaded, self-checked sequence classifier (``task: classify``): padded sequences and
    their lengths in, class probabilities out, the class names in ``classes``."""

    module: object  # torch.jit.ScriptModule
    version: str
    features: list[str]
    classes: list[str]
    min_length: int
    max_length: int

    def check(self, x, lengths) -> None:
        """Raise InputError with the artifact's own message for input it refuses."""
        import torch

        try:
            self.module.check(x, lengths)
        except torch.jit.Error as exc:
            raise InputError(jit_message(exc)) from None

    def predict(self, x, lengths):
        import torch

        with torch.inference_mode():
            return self.module(x, lengths)


def load_classifier(module, path: Path, version: str) -> LoadedClassifier:
    """The classifier's interface from the file's attributes, then one sequence at the scaler's
    mean, of the shortest length it takes, must give probabilities of every class summing to 1."""
    import torch

    try:
        loaded = LoadedClassifier(module, version, list(module.features), list(module.classes),
                                  int(module.min_length), int(module.max_length))  # fmt: skip
    except Exception as exc:
        raise ModelLoadError(f"{path}: not an lstmops classifier ({jit_message(exc)})") from None
    n = len(loaded.features)
    mean = getattr(module, "mean", None)
    level = mean if isinstance(mean, torch.Tensor) and mean.shape == (n,) else torch.zeros(n)
    steps = max(1, loaded.min_length)
    try:
        out = loaded.predict(level.expand(1, steps, n).contiguous(), torch.tensor([steps]))
    except Exception as exc:
        raise ModelLoadError(f"version {version}: self-check failed ({jit_message(exc)})") from None
    sums_to_one = bool(torch.isfinite(out).all()) and abs(float(out.sum()) - 1) <= 1e-4
    if tuple(out.shape) != (1, len(loaded.classes)) or not sums_to_one:
        raise ModelLoadError(
            f"version {version}: self-check gave shape {list(out.shape)} (expected [1, {len(loaded.classes)}]) "
            "or probabilities that are not finite or do not sum to 1"
        )
    return loaded


def file_version(path: Path) -> str:
    """A file has no registry version: its content hash names it."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.name}@sha256:{digest}"


class Source(Protocol):
    def resolve(self) -> str: ...

    def fetch(self, version: str) -> Loaded: ...

    follows: bool  # whether the version can change while serving


class FileSource:
    """A TorchScript file (``--model``, or SageMaker's ``model.pt``). Fixed for the process."""

    follows = False

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        self.path = path

    def resolve(self) -> str:
        return file_version(self.path)

    def fetch(self, version: str) -> Loaded:
        return load_torchscript(self.path, version)


class ModelCache:
    """The last good TorchScript file of one registry source, with its version, on local disk.
    Written atomically (temp file, then rename); read only from a directory this user owns and
    no one else may write, since loading TorchScript runs what the file says."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = root / hashlib.sha256(key.encode()).hexdigest()[:16]

    def save(self, model_file: Path, version: str) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.dir))
            shutil.copyfile(model_file, tmp / "model.ts")
            (tmp / "version.json").write_text(json.dumps({"version": version}))
            for name in ("model.ts", "version.json"):  # the model first: a version never names a missing file
                os.replace(tmp / name, self.dir / name)
            tmp.rmdir()
        except OSError as exc:  # a cache that cannot be written costs resilience, not service
            log.warning("cannot keep the model in %s: %s", self.dir, exc)

    def load(self) -> Loaded | LoadedClassifier | None:
        """The cached model, loaded and self-checked, or None when there is none usable."""
        try:
            if not safe_dir(self.dir):
                return None
            version = json.loads((self.dir / "version.json").read_text())["version"]
            return load_torchscript(self.dir / "model.ts", str(version))
        except (OSError, ValueError, KeyError, TypeError, ModelLoadError) as exc:
            log.warning("no usable cached model in %s: %s", self.dir, exc)
            return None


def safe_dir(path: Path) -> bool:
    """Owned by this user and not writable by group or others (a shared /tmp must not feed us a model)."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def default_cache_root() -> Path:
    return Path(tempfile.gettempdir()) / f"lstmops-serve-cache-{os.getuid()}"


class RegistrySource:
    """A registered model version, by alias (followed) or by number (fixed)."""

    def __init__(self, uri: str, tracking_uri: str | None = None, cache_root: Path | None = None) -> None:
        match = MODEL_URI.match(uri)
        if not match:
            raise ModelLoadError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        self.uri, self.name = uri, match["name"]
        self.alias, self.version = match["alias"], match["version"]
        self.follows = self.alias is not None
        self.tracking_uri = tracking_uri
        self.cache = ModelCache(cache_root or default_cache_root(), f"{tracking_uri}|{uri}")

    def cached(self) -> Loaded | LoadedClassifier | None:
        return self.cache.load()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def resolve(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        try:
            return f"{self.name}/{self.client().get_model_version_by_alias(self.name, self.alias).version}"
        except Exception as exc:
            kind = RegistryUnavailable if transient(exc) else ModelLoadError
            raise kind(f"{self.uri}: cannot resolve the alias ({first_line(exc)})") from None

    def fetch(self, version: str) -> Loaded:
        number = version.rsplit("/", 1)[1]
        with tempfile.TemporaryDirectory(prefix="lstmops-serve-") as tmp:
            model_file = self.download(number, Path(tmp))
            loaded = load_torchscript(model_file, version)
            self.cache.save(model_file, version)  # only a model that loaded and self-checked
            return loaded

    def download(self, number: str, into: Path) -> Path:
        """The version's own TorchScript file, checked against the sha256, size and signature
        the version records (``registry/verify.py``) before anything loads it."""
        from lstmops.errors import ModelRefused
        from lstmops.registry.verify import ArtifactUnavailable, fetch_verified

        try:
            mv = self.client().get_model_version(self.name, number)
        except Exception as exc:
            kind = RegistryUnavailable if transient(exc) else ModelLoadError
            raise kind(f"{self.name}/{number}: {first_line(exc)}") from None
        try:
            return fetch_verified(mv, into, self.tracking_uri)
        except ArtifactUnavailable as exc:  # a download that fails is an outage until shown otherwise
            raise (RegistryUnavailable if transient(exc) else ModelLoadError)(str(exc)) from None
        except ModelRefused as exc:
            raise Refused(str(exc)) from None


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ModelHolder:
    """The current model: one reference, replaced in a single assignment, so a request sees
    either the old model or the new one, never a half-loaded one."""

    FIRST_RETRY_S = 1.0

    def __init__(self, source: Source, on_change: Callable[[ModelHolder], None] | None = None,
                 prepare: Callable[[Loaded], Loaded] = lambda model: model) -> None:  # fmt: skip
        self.source = source
        self.prepare = prepare  # applied to every model before it serves (serve/fastpath.py)
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self.failed_version: str | None = None
        self.from_cache = False  # serving the locally kept model because the registry was down
        self.reloads = 0
        self.reload_failures = 0
        self.outages = 0  # consecutive polls that found the registry unavailable
        self.on_change = on_change or (lambda holder: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> Loaded | None:
        """The first load. A model that cannot load or self-check ends the start (the CLI exits
        with the message); a registry that is down does not: the last good model kept on disk
        serves meanwhile, or none (not ready), and the poller keeps trying."""
        try:
            self.current = self.prepare(self.source.fetch(self.source.resolve()))
        except RegistryUnavailable as exc:
            cached = self.source.cached() if hasattr(self.source, "cached") else None
            cached = self.prepare(cached) if cached is not None else None
            self.current, self.from_cache, self.outages = cached, cached is not None, 1
            self.last_error = str(exc)
            self.reload_failures += 1
            kept = f"serving the kept version {cached.version}" if cached else "no kept model: not ready"
            log.error("registry unavailable at start (%s); %s; retrying", exc, kept)
        self.on_change(self)
        return self.current

    def poll(self) -> None:
        """Follow the source once: load a version it newly points to, or record why not.
        A version that failed to load or self-check is not retried until the alias moves away
        and back; a registry outage is retried (with back-off, by the poller)."""
        version = None  # stays None when the registry cannot be asked
        try:
            version = self.source.resolve()
            if self.current is not None and version == self.current.version and not self.from_cache:
                self.failed_version = self.last_error = None
                self.outages = 0
                return
            if version == self.failed_version:
                return
            if self.current is not None and version == self.current.version:  # the kept copy is that version
                loaded = self.current
            else:
                loaded = self.prepare(self.source.fetch(version))
        except RegistryUnavailable as exc:
            self.reload_failures += 1
            self.outages += 1
            self.last_error = str(exc)
        except Refused as exc:  # the old model keeps serving; /readyz and /metrics show the refusal
            self.reload_failures += 1
            self.outages = 0
            self.last_error = str(exc)
        except Exception as exc:  # the poller must outlive anything a registry or a file throws
            self.reload_failures += 1
            self.outages = 0
            self.failed_version = version
            self.last_error = str(exc) if isinstance(exc, LstmopsError) else f"{type(exc).__name__}: {exc}"
        else:
            if loaded is not self.current:
                self.current = loaded  # the swap: one reference assignment
                self.reloads += 1
            self.from_cache, self.outages = False, 0
            self.last_error = self.failed_version = None
        self.on_change(self)

    def needs_polling(self) -> bool:
        """An alias is followed for good; a fixed version only until it has come from the registry."""
        return self.source.follows or self.current is None or self.from_cache

    def next_wait(self, interval: float) -> float:
        """The poll interval, or during an outage a back-off from one second up to it, with
        jitter so that replicas do not retry in step."""
        if not self.outages:
            return interval
        return min(interval, self.FIRST_RETRY_S * 2 ** (self.outages - 1)) * random.uniform(0.8, 1.0)

    def start(self, interval: float) -> None:
        if not self.needs_polling() or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, args=(interval,), name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _follow(self, interval: float) -> None:
        while self.needs_polling() and not self._stop.wait(self.next_wait(interval)):
            self.poll()
