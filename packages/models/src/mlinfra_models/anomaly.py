"""The anomaly detector: a small PyTorch autoencoder over per-account-day activity, on Ray Train.

Inputs are the ``anomaly_detector_v1`` features: the raw daily activity metrics (``api_calls``,
``logins``, ``spend``, ``errors``, ``data_volume_mb``) and their robust z-scores (``*_z``). Raw
metrics are compressed with a signed ``log1p``; every column is then standardised with the mean
and standard deviation of the training rows (stored with the model) and nulls become 0 (the
training mean). The score of a row is its mean squared reconstruction error; the threshold is a
quantile of the training scores.

Training runs ``train_loop_per_worker`` under a ``TorchTrainer`` (DDP through
``ray.train.torch.prepare_model``). It is spot-safe and deterministic:

- The data order of an epoch is a function of ``(seed, epoch)`` only; step ``s`` of an epoch
  takes rows ``order[s*B:(s+1)*B]`` and worker ``r`` of ``W`` takes every ``W``-th of them. A
  resumed run skips straight to its saved step and ends with the same weights as a run that
  was never interrupted.
- Every ``checkpoint_every_steps`` steps, every ``checkpoint_every_seconds`` of training and at
  each epoch end, rank 0 writes model, optimizer, RNG states and data position to a temporary
  directory, ``COMPLETE`` last, and reports it with ``ray.train.report``; Ray persists it under
  ``storage_path/run_name``. A directory without ``COMPLETE`` is never loaded. The time
  interval is the default: a step interval that suits a CPU is a hundred times too frequent on
  a GPU. Workers agree on it at the step boundary (the per-step flag reduction), so they
  checkpoint together.
- A report waits until Ray Train's controller has collected the previous one, and the
  controller collects every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default): two
  checkpoints 1 s apart cost a second of idle workers. ``train_anomaly`` runs the controller
  at ``controller_poll_s`` (0.1 s) unless that variable is set, which brings a checkpoint to
  milliseconds.
- On start the worker resumes from ``ray.train.get_checkpoint()`` (the latest checkpoint of a
  failed attempt, or of an earlier job with the same ``storage_path`` and ``run_name``).
- A spot notice makes every worker write a checkpoint at the next step boundary and return
  cleanly; ``train_anomaly`` then raises :class:`TrainingStopped` and a rerun with the same run
  name continues. Under Ray Train the notice is Ray's preemption signal
  (``ray.train.get_preemption_info()``: the node hosting a worker is being drained, which is
  how Ray surfaces a cloud's spot-termination notice); where the loop runs on a process's main
  thread, SIGTERM also counts; ``stop_at_step`` rehearses it.
- Each checkpoint's meta carries this attempt's timing (``compute_seconds``,
  ``checkpoint_seconds``, ``samples``), so the checkpoint overhead is measured, not guessed.

The caller starts Ray; this module never calls ``ray.init``. torch and ray are imported inside
the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score

__all__ = [
    "ANOMALY_FEATURES",
    "FORMAT_VERSION",
    "AnomalyEvaluation",
    "AnomalyModel",
    "AnomalySettings",
    "TrainingStopped",
    "evaluate_anomaly",
    "latest_checkpoint",
    "train_anomaly",
    "train_loop_per_worker",
]

#: Version of the checkpoint layout; a checkpoint of another version is refused.
FORMAT_VERSION = 1
ACTIVITY_METRICS = ("api_calls", "logins", "spend", "errors", "data_volume_mb")
#: The ``anomaly_detector_v1`` feature service: raw metrics, then their robust z-scores.
ANOMALY_FEATURES = (*ACTIVITY_METRICS, *(f"{m}_z" for m in ACTIVITY_METRICS))
COMPLETE_MARKER = "COMPLETE"
_META = "meta.json"
_MODEL = "model.pt"
_OPTIMIZER = "optimizer.pt"
_RNG = "rng.pt"


@dataclass(frozen=True)
class AnomalySettings:
    """Training settings of the anomaly detector (a Hydra config instantiates this)."""

    features: list[str] = field(default_factory=lambda: list(ANOMALY_FEATURES))
    hidden_sizes: list[int] = field(default_factory=lambda: [8, 3])
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0
    threshold_quantile: float = 0.99
    #: Checkpoint every this many global steps (None: by time and at epoch ends only).
    checkpoint_every_steps: int | None = None
    #: Checkpoint after this much training time since the last checkpoint (None: by steps).
    #: At most one interval of work is lost to an interruption. 30 s is close to Young/Daly's
    #: optimum sqrt(2 * checkpoint cost * mean time between interruptions) for a checkpoint of
    #: ~10 ms and spot interruptions hours apart, with a margin for slower storage.
    checkpoint_every_seconds: float | None = 30.0
    #: How often Ray Train's controller collects reports (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
    #: for this run, unless that is set): a checkpoint waits for the previous one's collection.
    controller_poll_s: float = 0.1
    keep_checkpoints: int = 3
    num_workers: int = 2
    use_gpu: bool = False
    storage_path: str = ".mlinfra/checkpoints"
    run_name: str = "anomaly_detector"
    max_failures: int = 1
    #: Every this many steps the workers combine their flags (spot notice, time interval due) in
    #: one collective, so a notice or a due time checkpoint is acted on within this many steps.
    #: Every step would add a collective to each step: a quarter of a CPU step's time here.
    notice_poll_steps: int = 10
    #: Drills: raise in every worker at this global step, once per run (spot-loss rehearsal).
    fail_at_step: int | None = None
    #: Drills: checkpoint and stop cleanly at this global step, as on SIGTERM.
    stop_at_step: int | None = None

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("AnomalySettings.features is empty; expected feature names")
        if not 0 < self.threshold_quantile < 1:
            raise ValueError(
                f"AnomalySettings.threshold_quantile must be in (0, 1), got "
                f"{self.threshold_quantile}"
            )
        for name in ("epochs", "batch_size", "keep_checkpoints", "notice_poll_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"AnomalySettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every_steps is None and self.checkpoint_every_seconds is None:
            raise ValueError(
                "AnomalySettings: set checkpoint_every_steps or checkpoint_every_seconds (or "
                "both); with neither, a long epoch would have no checkpoint to resume from"
            )
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ValueError(
                f"AnomalySettings.checkpoint_every_steps must be >= 1 or None, got "
                f"{self.checkpoint_every_steps}"
            )
        for name in ("checkpoint_every_seconds", "controller_poll_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"AnomalySettings.{name} must be > 0, got {value}")
        if self.num_workers < 1:
            raise ValueError(f"AnomalySettings.num_workers must be >= 1, got {self.num_workers}")

    @property
    def is_remote(self) -> bool:
        """Whether checkpoints go to a URI (``s3://``, ``gs://``, ...) rather than a local path."""
        return "://" in self.storage_path and not self.storage_path.startswith("file://")

    @property
    def storage(self) -> str:
        """The storage path as Ray Train takes it: an absolute local path or a URI."""
        if self.is_remote:
            return self.storage_path.rstrip("/")
        return str(Path(self.storage_path.removeprefix("file://")).absolute())

    @property
    def run_dir(self) -> Path:
        """The local directory of this run's checkpoints (local storage only)."""
        if self.is_remote:
            raise ValueError(
                f"storage_path {self.storage_path!r} is remote; it has no local run_dir"
            )
        return Path(self.storage) / self.run_name


class TrainingStopped(RuntimeError):  # noqa: N818 - it is a state, not an error
    """Training stopped cleanly before its last step (SIGTERM or ``stop_at_step``).

    ``checkpoint`` is the directory to resume from; rerun with the same ``storage_path`` and
    ``run_name`` to continue.
    """

    def __init__(self, checkpoint: Path, step: int, total_steps: int) -> None:
        super().__init__(
            f"anomaly training stopped at step {step} of {total_steps}; checkpoint {checkpoint}. "
            "Rerun with the same storage_path and run_name to resume."
        )
        self.checkpoint = checkpoint
        self.step = step
        self.total_steps = total_steps


# --- features ------------------------------------------------------------------------------------


def _is_raw(feature: str) -> bool:
    """Raw metrics get a signed log1p; robust z-scores (``*_z``) are only standardised."""
    return not feature.endswith("_z")


def _feature_matrix(frame: pl.DataFrame, features: Sequence[str], name: str) -> np.ndarray:
    """Float64 matrix of ``features`` (nulls as NaN, raw metrics log1p'd); bad input raises."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks feature column(s) {missing}; expected {list(features)}")
    if frame.is_empty():
        raise ValueError(f"{name} is empty; expected account-day rows with {list(features)}")
    bad_types = {f: str(frame.schema[f]) for f in features if not frame.schema[f].is_numeric()}
    if bad_types:
        raise ValueError(f"{name} has non-numeric feature column(s) {bad_types}")
    floats = [f for f in features if frame.schema[f].is_float()]
    if floats:
        counts = frame.select(
            [(pl.col(f).is_nan() | pl.col(f).is_infinite()).sum().alias(f) for f in floats]
        ).row(0, named=True)
        non_finite = {f: n for f, n in counts.items() if n}
        if non_finite:
            raise ValueError(
                f"{name} has NaN or infinite values in {non_finite} (column: rows); expected "
                "finite numbers or nulls"
            )
    x = frame.select([pl.col(f).cast(pl.Float64) for f in features]).to_numpy()
    x = np.array(x, dtype=np.float64)  # nulls are NaN here
    raw = [i for i, f in enumerate(features) if _is_raw(f)]
    x[:, raw] = np.sign(x[:, raw]) * np.log1p(np.abs(x[:, raw]))
    return x


def _fit_standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean, std


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean) / std
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _fingerprint(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


# --- network -------------------------------------------------------------------------------------


def _network(n_features: int, hidden_sizes: Sequence[int]) -> Any:
    """Symmetric MLP autoencoder ``n -> h1 -> ... -> hk -> ... -> h1 -> n``."""
    import torch

    sizes = [n_features, *hidden_sizes]
    layers: list[Any] = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    back = sizes[::-1]
    for i, (a, b) in enumerate(itertools.pairwise(back)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(back) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _row_errors(network: Any, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Mean squared reconstruction error per row."""
    import torch

    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            xb = torch.tensor(x[start : start + batch])
            out.append(((network(xb) - xb) ** 2).mean(dim=1).numpy())
    return np.concatenate(out).astype(np.float64)


# --- checkpoints ---------------------------------------------------------------------------------


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / _META).is_file()


def _read_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory")
    if not _is_complete(path):
        raise ValueError(
            f"checkpoint {path} is incomplete (no {COMPLETE_MARKER} marker): it was not fully "
            "written and is never loaded"
        )
    meta: dict[str, Any] = json.loads((path / _META).read_text())
    return meta


def _check_compatible(meta: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> None:
    """ValueError naming each field where a checkpoint differs from what the caller expects."""
    diffs = {
        key: (meta.get(key), value) for key, value in expected.items() if meta.get(key) != value
    }
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {a!r}, expected {b!r}" for k, (a, b) in diffs.items())
        raise ValueError(f"checkpoint {path} is incompatible: {detail}")


def _write_checkpoint(directory: Path, meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Write ``tensors`` (file name -> object for ``torch.save``), meta, then ``COMPLETE``."""
    import torch

    for name, obj in tensors.items():
        torch.save(obj, directory / name)
    (directory / _META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    (directory / COMPLETE_MARKER).write_text("")


def _checkpoint_step(path: Path) -> int:
    return int(_read_meta(path)["global_step"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``run_dir``; partial ones are skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    complete = [p for p in run_dir.iterdir() if p.is_dir() and _is_complete(p)]
    return max(complete, key=lambda p: (_checkpoint_step(p), p.name), default=None)


# --- the model -----------------------------------------------------------------------------------


@dataclass
class AnomalyModel:
    """A trained autoencoder with its features, standardisation and threshold."""

    network: Any  # torch.nn.Module
    features: list[str]
    hidden_sizes: list[int]
    mean: np.ndarray
    std: np.ndarray
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def matrix(self, frame: pl.DataFrame, name: str = "frame") -> np.ndarray:
        """The standardised float32 input the network sees."""
        return _standardise(_feature_matrix(frame, self.features, name), self.mean, self.std)

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """Reconstruction error per row: higher is more anomalous."""
        return _row_errors(self.network, self.matrix(frame))

    def flags(self, frame: pl.DataFrame) -> np.ndarray:
        """True where the score exceeds the threshold."""
        return self.score(frame) > self.threshold

    def state_dict(self) -> dict[str, Any]:
        return dict(self.network.state_dict())

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | Any, *, features: Sequence[str] | None = None
    ) -> AnomalyModel:
        """Load a finished model from a checkpoint directory (or a ``ray.train.Checkpoint``).

        Raises ValueError for a partial directory (no ``COMPLETE``), a training checkpoint that
        is not the final one, another ``format_version`` or, when ``features`` is given, a
        different feature list.
        """
        import torch

        path = Path(getattr(path, "path", path))
        meta = _read_meta(path)
        expected: dict[str, Any] = {"format_version": FORMAT_VERSION}
        if features is not None:
            expected["features"] = list(features)
        _check_compatible(meta, expected, path)
        if not meta.get("final"):
            raise ValueError(
                f"checkpoint {path} is from step {meta.get('global_step')} of "
                f"{meta.get('total_steps')}, not a finished model; resume training first"
            )
        network = _network(len(meta["features"]), meta["hidden_sizes"])
        network.load_state_dict(torch.load(path / _MODEL, weights_only=True))
        network.eval()
        return cls(
            network=network,
            features=list(meta["features"]),
            hidden_sizes=list(meta["hidden_sizes"]),
            mean=np.asarray(meta["mean"], dtype=np.float64),
            std=np.asarray(meta["std"], dtype=np.float64),
            threshold=float(meta["threshold"]),
            meta=meta,
        )

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` atomically: a sibling temp dir, then a rename."""
        directory = Path(directory).absolute()
        directory.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "features": self.features,
            "hidden_sizes": self.hidden_sizes,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "threshold": self.threshold,
            "final": True,
        }
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            _write_checkpoint(tmp, meta, {_MODEL: self.state_dict()})
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            if directory.exists():
                directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory


# --- training ------------------------------------------------------------------------------------


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of an epoch: a function of (seed, epoch) only, so a resume can skip ahead."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set on SIGTERM; the previous handler is restored on exit.

    Python installs signal handlers only from the main thread. Ray Train V2 runs the training
    function in a worker thread, where this is a no-op and Ray's own preemption handling applies.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _preemption_notice() -> Callable[[], bool]:
    """``() -> whether Ray says this worker's node is being preempted``.

    Ray Train stores the notice on each worker as it arrives; reading it there is free. Where
    that worker-local notice is not reachable, Ray's public ``ray.train.get_preemption_info()``
    answers; it is a collective over the workers, which is fine because the loop asks at the
    same steps on every worker (every ``notice_poll_steps``).
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context().preemption_context  # noqa: B018 - probe the attribute once
    except (ImportError, AttributeError, RuntimeError):
        import ray.train

        return lambda: ray.train.get_preemption_info() is not None
    return lambda: get_train_context().preemption_context.preemption_info is not None


def _any_worker(flags: tuple[bool, ...], world_size: int) -> tuple[bool, ...]:
    """Each flag OR-ed over the workers, in one collective (all workers call this together)."""
    if world_size == 1:
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0 for flag in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: resume, train over this worker's shard, checkpoint, stop on request.

    ``config``: ``settings`` (an ``AnomalySettings`` as a dict), ``data`` (the standardised
    float32 matrix or an ObjectRef to it), ``mean``/``std`` and ``fingerprint`` of the data.
    """
    import random

    import ray
    import ray.train
    import ray.train.torch
    import torch

    settings = AnomalySettings(**config["settings"])
    data = config["data"]
    x: np.ndarray = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    n = x.shape[0]
    batch = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = settings.epochs * steps_per_epoch
    identity = {
        "format_version": FORMAT_VERSION,
        "features": list(settings.features),
        "hidden_sizes": list(settings.hidden_sizes),
        "data_fingerprint": config["fingerprint"],
        "total_steps": total_steps,
    }

    torch.manual_seed(settings.seed)
    network = _network(x.shape[1], settings.hidden_sizes)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    step = 0
    resumed_from: list[int] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            path = Path(directory)
            meta = _read_meta(path)
            _check_compatible(meta, identity, path)
            if meta.get("final"):
                return  # already finished: nothing to train, the final checkpoint stands
            network.load_state_dict(torch.load(path / _MODEL, weights_only=True))
            optimizer.load_state_dict(torch.load(path / _OPTIMIZER, weights_only=True))
            rng = torch.load(path / _RNG, weights_only=False)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            step = int(meta["global_step"])
            resumed_from = [*meta.get("resumed_from", []), step]
    model = ray.train.torch.prepare_model(network)
    device = next(model.parameters()).device
    inject_failure = (
        settings.fail_at_step is not None
        and not settings.is_remote
        and not (settings.run_dir / ".fault_injected").exists()
    )

    def report(global_step: int, loss: float, final: bool) -> None:
        metrics = {"global_step": global_step, "loss": loss, "final": final}
        with tempfile.TemporaryDirectory(prefix="anomaly-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                module = getattr(model, "module", model)
                meta = {
                    **identity,
                    "global_step": global_step,
                    "epoch": global_step // steps_per_epoch,
                    "step_in_epoch": global_step % steps_per_epoch,
                    "final": final,
                    "mean": config["mean"],
                    "std": config["std"],
                    "seed": settings.seed,
                    "world_size": world,
                    "resumed_from": resumed_from,
                    "loss": loss,
                    **clock,
                }
                state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                tensors: dict[str, Any] = {_MODEL: state}
                if final:
                    module.cpu()
                    scores = _row_errors(module, x)
                    module.to(device)
                    meta["threshold"] = float(np.quantile(scores, settings.threshold_quantile))
                else:
                    tensors[_OPTIMIZER] = optimizer.state_dict()
                    tensors[_RNG] = {
                        "torch": torch.get_rng_state(),
                        "numpy": np.random.get_state(),
                        "python": random.getstate(),
                    }
                _write_checkpoint(Path(tmp), meta, tensors)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{global_step:08d}"
            )

    preempted = _preemption_notice()
    order, order_epoch = np.empty(0, dtype=np.int64), -1
    loss_value = float("nan")
    clock = {"compute_seconds": 0.0, "checkpoint_seconds": 0.0, "samples": 0, "checkpoints": 0}
    every_steps, every_seconds = settings.checkpoint_every_steps, settings.checkpoint_every_seconds
    last_checkpoint = time.monotonic()
    with _sigterm_flag() as sigterm:
        while step < total_steps:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if inject_failure and step == settings.fail_at_step:
                settings.run_dir.mkdir(parents=True, exist_ok=True)
                (settings.run_dir / ".fault_injected").touch()
                raise RuntimeError(f"injected failure at step {step} (fail_at_step drill)")
            started = time.perf_counter()
            if order_epoch != epoch:
                order, order_epoch = _epoch_order(n, settings.seed, epoch), epoch
            rows = order[in_epoch * batch : (in_epoch + 1) * batch]
            xb = torch.from_numpy(x[np.sort(rows[rank::world])]).to(device)
            model.train()
            optimizer.zero_grad()
            loss = ((model(xb) - xb) ** 2).mean()
            loss.backward()
            optimizer.step()
            loss_value = float(loss.item())
            step += 1
            done = step == total_steps
            notice = timely = False
            if step % settings.notice_poll_steps == 0:
                notice = sigterm.is_set() or preempted()
                timely = every_seconds is not None and (
                    time.monotonic() - last_checkpoint >= every_seconds
                )
                notice, timely = _any_worker((notice, timely), world)
            stop = (notice or step == settings.stop_at_step) and not done
            clock["samples"] += len(rows)  # the global batch: every worker's share
            clock["compute_seconds"] += time.perf_counter() - started
            if (
                done
                or stop
                or timely
                or (every_steps is not None and step % every_steps == 0)
                or in_epoch + 1 == steps_per_epoch
            ):
                started = time.perf_counter()
                clock["checkpoints"] += 1
                report(step, loss_value, final=done)
                clock["checkpoint_seconds"] += time.perf_counter() - started
                last_checkpoint = time.monotonic()
            if stop:
                return


_CONTROLLER_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextlib.contextmanager
def _controller_poll(seconds: float) -> Iterator[None]:
    """Run the Ray Train controller that ``fit`` starts at this poll interval.

    Ray Train propagates this variable from the driver to the run's controller (and documents
    it as the way to set it); a value the user set wins. Restored on exit.
    """
    if _CONTROLLER_POLL_ENV in os.environ:
        yield
        return
    os.environ[_CONTROLLER_POLL_ENV] = repr(float(seconds))
    try:
        yield
    finally:
        os.environ.pop(_CONTROLLER_POLL_ENV, None)


def train_anomaly(frame: pl.DataFrame, settings: AnomalySettings) -> AnomalyModel:
    """Train the detector on ``frame`` with Ray Train and return the final model.

    Resumes from the latest checkpoint under ``settings.storage_path / settings.run_name``
    when one exists. The caller has started Ray. Raises :class:`TrainingStopped` when the run
    stopped early (SIGTERM, ``stop_at_step``); ValueError for bad input.
    """
    raw = _feature_matrix(frame, settings.features, "the training frame")
    if raw.shape[0] < settings.num_workers:
        raise ValueError(
            f"the training frame has {raw.shape[0]} row(s); expected at least one per worker "
            f"({settings.num_workers})"
        )
    mean, std = _fit_standardisation(raw)
    x = _standardise(raw, mean, std)
    try:
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise ImportError(
            "train_anomaly needs ray[train] and torch: `uv add 'ray[train]' torch`"
        ) from e
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call ray.init() before train_anomaly")

    config = {
        "settings": asdict(settings),
        "data": ray.put(x),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "fingerprint": _fingerprint(x),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": 1},
        ),
        run_config=RunConfig(
            name=settings.run_name,
            storage_path=settings.storage,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
        ),
    )
    with _controller_poll(settings.controller_poll_s):
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    if settings.is_remote:
        if result.checkpoint is None:
            raise RuntimeError(
                f"anomaly training under {settings.storage}/{settings.run_name} reported no "
                "checkpoint"
            )
        with result.checkpoint.as_directory() as directory:
            return _finished_model(Path(directory), settings)
    path = Path(result.checkpoint.path) if result.checkpoint is not None else None
    if path is None or not _is_complete(path):
        path = latest_checkpoint(settings.run_dir)
    if path is None:
        raise RuntimeError(
            f"anomaly training under {settings.run_dir} reported no complete checkpoint"
        )
    return _finished_model(path, settings)


def _finished_model(path: Path, settings: AnomalySettings) -> AnomalyModel:
    """The final model at ``path``, or :class:`TrainingStopped` if training stopped early."""
    meta = _read_meta(path)
    if not meta.get("final"):
        raise TrainingStopped(path, int(meta["global_step"]), int(meta["total_steps"]))
    return AnomalyModel.from_checkpoint(path, features=settings.features)


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnomalyEvaluation:
    """Ranking and thresholded quality of anomaly scores against known anomalies."""

    n: int
    positives: int
    pr_auc: float
    base_rate: float
    precision_at_k: float
    k: int
    recall_at_threshold: float
    precision_at_threshold: float
    flagged: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def evaluate_anomaly(
    truth_flags: np.ndarray, scores: np.ndarray, threshold: float, k: int
) -> AnomalyEvaluation:
    """PR-AUC (average precision), precision among the ``k`` highest scores, recall at threshold."""
    y = np.asarray(truth_flags).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"truth_flags and scores must be 1-D of the same length, got {y.shape} and {s.shape}"
        )
    if y.size == 0:
        raise ValueError("truth_flags is empty; expected one flag per scored row")
    if not np.isfinite(s).all():
        raise ValueError("scores has NaN or infinite values; expected finite scores")
    if not y.any():
        raise ValueError("truth_flags has no anomaly; PR-AUC and recall need at least one")
    if not 1 <= k <= y.size:
        raise ValueError(f"k must be in [1, {y.size}], got {k}")
    top = np.argsort(-s, kind="stable")[:k]
    flagged = s > threshold
    return AnomalyEvaluation(
        n=int(y.size),
        positives=int(y.sum()),
        pr_auc=float(average_precision_score(y, s)),
        base_rate=float(y.mean()),
        precision_at_k=float(y[top].mean()),
        k=k,
        recall_at_threshold=float((flagged & y).sum() / y.sum()),
        precision_at_threshold=float((flagged & y).sum() / flagged.sum()) if flagged.any() else 0.0,
        flagged=int(flagged.sum()),
    )
