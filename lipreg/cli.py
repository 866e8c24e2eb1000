"""The ``lipreg`` command: a LightningCLI over lipreg's methods and data modules."""

import os
import shlex
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter, Checkpoint, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback

import lipreg.callbacks  # noqa: F401  (registers callback classes for short names in YAML)
import lipreg.data  # noqa: F401  (registers data modules for --data NAME)
import lipreg.methods  # noqa: F401  (registers methods for --model NAME)
import lipreg.nets  # noqa: F401  (registers networks for class_path: NAME)
from lipreg.callbacks import (
    DivergenceGuard,
    LatestCheckpoint,
    PredictionWriter,
    ProgressLine,
    RobustnessEvaluation,
    StopOnRequest,
    TestProgress,
)
from lipreg.cli_parser import LipRegArgumentParser, raise_from_chain
from lipreg.devices import use_exact_float32
from lipreg.errors import LipregError
from lipreg.methods.base import LipRegModule
from lipreg.runs import AtomicCheckpointIO, claimed_logger, placed_logger, resume_logger, run_directory
from lipreg.stopping import clear as clear_stop_request
from lipreg.stopping import is_interrupt, request_stop

# Two warnings of the installed Lightning that say nothing to a lipreg user: its pytree helper uses
# an API that torch 2.14 deprecates, and lipreg logs training metrics once an epoch, so the advice
# to lower `log_every_n_steps` when an epoch has fewer batches than that does not apply.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")

DESCRIPTION = (
    "Lipschitz-regularised training (CLIP, SumFLIP, TV, pTV, …) and robustness evaluation. "
    "`lipreg compare DIR` tabulates the `lipreg test` results found below DIR."
)
#: ``ckpt_path`` values Lightning resolves itself rather than as files.
SPECIAL_CHECKPOINTS = ("best", "last", "hpc", "registry")


class RunConfigSaver(SaveConfigCallback):
    """Lightning's ``config.yaml`` of a run, written into the run's log directory; a run without a
    logger (``--trainer.logger false``) has none and writes nothing (not a ``config.yaml`` in the
    working directory)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.loggers:
            super().setup(trainer, pl_module, stage)


class LipRegCLI(LightningCLI):
    """LightningCLI with lipreg's defaults and guarantees.

    - subclass mode for model and data; ``trainer.inference_mode`` off (attacks and pair ascent
      need input gradients during validation and testing), Lightning's progress bar off;
    - ``fit`` prints one line per epoch (``ProgressLine``; ``--quiet true`` for none) and a
      summary, stops at divergence (``DivergenceGuard``), always leaves a ``latest-…`` checkpoint
      (``LatestCheckpoint``), and a resumed run continues in its own directory;
    - ``test`` and ``predict`` refuse to evaluate untrained weights unless ``--untrained true``,
      write beside the checkpoint's run (``<run>/test/<checkpoint>/``); ``test`` prints its
      progress (``TestProgress``) and one table;
    - a checkpoint that is missing, damaged or of another method than the config is a one-line error;
    - float32 means float32 on a GPU too: TF32 is off unless ``--tf32 true``.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        #: the command-line words, to tell what the user named from what a config file says
        self.words = [str(a) for a in (sys.argv[1:] if args is None else args if isinstance(args, list) else [])]
        super().__init__(
            LipRegModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lipreg", "description": DESCRIPTION},
            parser_class=LipRegArgumentParser,
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.inference_mode": False, "trainer.enable_progress_bar": False})
        # the attack suite of `lipreg test`, configured under `evaluation:` (a callback in every run)
        parser.add_lightning_class_args(RobustnessEvaluation, "evaluation")
        parser.add_argument("--quiet", type=bool, default=False,
                            help="fit: no per-epoch lines and no closing summary; test: no progress lines")
        parser.add_argument("--tf32", type=bool, default=False,
                            help="let float32 matrix products and convolutions on a CUDA GPU run in TF32 (faster, "
                                 "10-bit mantissa); off by default, so attacks, bounds and certificates are float32")
        parser.add_argument("--untrained", type=bool, default=False,
                            help="test/validate/predict: evaluate freshly initialised weights when no --ckpt_path "
                                 "is given (otherwise that is an error)")

    # ----------------------------------------------------------------- before anything is built
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        for config_file in named_configs(self.words):
            check_config_file(config_file)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        checkpoint = config.get("ckpt_path")
        if checkpoint is None:
            if subcommand != "fit" and not config.get("untrained"):
                raise LipregError(
                    f"lipreg {subcommand} needs --ckpt_path CHECKPOINT (e.g. a best-…ckpt of a fit run); "
                    "without one it would evaluate untrained weights (add --untrained true if that is what you want)"
                )
            return
        if checkpoint in SPECIAL_CHECKPOINTS:
            return
        model = config.get("model")
        data = config.get("data")
        check_checkpoint(Path(checkpoint), model.class_path if model else None,
                         data.class_path if data else None,
                         (model.get("init_args") or {}).get("task", "classification") if model else None)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        use_exact_float32(allow_tf32=bool(config.get("tf32")))
        trainer = config.trainer
        checkpoint = config.get("ckpt_path")
        user_placed = any(w.startswith(("--trainer.default_root_dir", "--trainer.logger")) for w in self.words)
        if checkpoint and checkpoint not in SPECIAL_CHECKPOINTS and not user_placed and trainer.logger is not False:
            if self.subcommand == "fit" and run_directory(checkpoint) is not None:
                trainer.logger = resume_logger(checkpoint, trainer.logger)
                # resuming writes into the run's own checkpoint folder on purpose
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            elif self.subcommand in ("test", "validate", "predict") and run_directory(checkpoint) is not None:
                trainer.logger = placed_logger(trainer.logger, run_directory(checkpoint), self.subcommand,
                                               Path(checkpoint).stem)
        check_writable(Path(trainer.default_root_dir or "."))
        # a new run claims its version folder now: two runs started at once never share one
        trainer.logger = claimed_logger(trainer.logger, trainer.default_root_dir) or trainer.logger

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise_from_chain(error)
            raise

    # ----------------------------------------------------------------- subcommands
    def _stop_on_request(self) -> None:
        """Every run takes a SIGTERM's stop at its next batch boundary (``StopOnRequest``)."""
        if not any(isinstance(c, StopOnRequest) for c in self.trainer.callbacks):
            self.trainer.callbacks.insert(0, StopOnRequest())

    def before_fit(self) -> None:
        self._stop_on_request()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make every checkpoint write atomic
            strategy.checkpoint_io = AtomicCheckpointIO()
        callbacks = self.trainer.callbacks
        if not any(isinstance(c, DivergenceGuard) for c in callbacks):
            callbacks.insert(0, DivergenceGuard())
        if not any(isinstance(c, LatestCheckpoint) for c in callbacks) and self.trainer.checkpoint_callback:
            every = self.trainer.check_val_every_n_epoch or 1
            callbacks.append(LatestCheckpoint(every_n_epochs=every))
            # Lightning's default checkpoint (when the config names none) would duplicate it
            callbacks[:] = [c for c in callbacks if type(c) is not ModelCheckpoint or c.monitor is not None
                            or c.filename is not None]
        if not self.config.fit.quiet and not any(isinstance(c, ProgressLine) for c in callbacks):
            callbacks.append(ProgressLine())
        if not self.trainer.loggers:  # --trainer.logger false: a config's learning-rate monitor has nothing to log to
            callbacks[:] = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]

    def after_fit(self) -> None:
        if self.config.fit.quiet:
            return
        log_dir = self.trainer.log_dir  # a collective under DDP: every process asks, rank 0 prints
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, log_dir, self.config.fit.get("config")))

    def before_test(self) -> None:
        self._stop_on_request()
        self._drop_checkpointing()
        if not self.config.test.quiet and not any(isinstance(c, TestProgress) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(TestProgress())

    def before_validate(self) -> None:
        self._stop_on_request()
        self._drop_checkpointing()

    def test(self, **kwargs: Any) -> None:
        """``trainer.test`` without Lightning's own table: ``RobustnessEvaluation`` prints lipreg's."""
        self.trainer.test(**{**kwargs, "verbose": False})

    def before_predict(self) -> None:
        """``lipreg predict`` writes ``predictions.pt`` unless the config brings its own writer."""
        self._stop_on_request()
        self._drop_checkpointing()
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def _drop_checkpointing(self) -> None:
        # evaluation writes no checkpoints; left in, they would only warn that their directory moved,
        # and the training callbacks' saved states are of no use to it
        self.trainer.callbacks[:] = [c for c in self.trainer.callbacks if not isinstance(c, Checkpoint)]
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")


def named_configs(words: list[str]) -> list[Path]:
    """The files given as ``--config FILE`` or ``--config=FILE`` on a command line."""
    found = []
    for index, word in enumerate(words):
        if word == "--config" and index + 1 < len(words):
            found.append(Path(words[index + 1]))
        elif word.startswith("--config="):
            found.append(Path(word.split("=", 1)[1]))
    return found


def check_config_file(path: Path) -> None:
    """A one-line error naming ``path`` when it is empty, not YAML (with the line that is wrong) or not a mapping.

    jsonargparse reports these as ``Unexpected config:`` with the file's text, or with a position
    ``in "<unicode string>"``; a missing file is left to it (it says so already).
    """
    if not path.is_file():
        return
    text = path.read_text()
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise LipregError(f"config {path} is not valid YAML at {where}: {detail}") from None
    if loaded is None:
        raise LipregError(f"config {path} is empty (no options, only comments or blank lines)")
    if not isinstance(loaded, dict):
        raise LipregError(f"config {path} is a YAML {type(loaded).__name__}, not a mapping of options "
                          "such as `trainer:`, `model:`, `data:`")


def check_checkpoint(path: Path, config_class: str | None, config_data: str | None = None,
                     config_task: str | None = None) -> None:
    """A one-line error unless ``path`` is a readable lipreg checkpoint of the config's method, task and data."""
    if path.is_dir():
        inside = sorted(path.glob("*.ckpt"))
        listed = f"checkpoints in it: {', '.join(p.name for p in inside[:5])}" if inside else "it holds no checkpoints"
        raise LipregError(f"--ckpt_path {path} is a folder; {listed}")
    if not path.is_file():
        near = sorted(path.parent.glob("*.ckpt"))[:3] if path.parent.is_dir() else []
        hint = f"; checkpoints there: {', '.join(p.name for p in near)}" if near else ""
        raise LipregError(f"--ckpt_path {path} does not exist{hint}")
    try:
        # memory-mapped: the tensors are not read, only the file's structure and its hyper-parameters
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        hyperparameters = checkpoint.get("hyper_parameters", {})
    except Exception as error:  # noqa: BLE001  (any failure to read the file is the same problem to the user)
        size = path.stat().st_size
        raise LipregError(
            f"checkpoint {path} ({size} bytes) is damaged or not a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); use another one, e.g. the best-… or latest-… beside it"
        ) from None
    run = run_directory(path)
    own = run / "config.yaml" if run is not None and (run / "config.yaml").is_file() else None
    trained = hyperparameters.get("_class_path")
    if config_class and trained and trained != config_class:
        fix = f"use its run's config: --config {shown(own)}" if own else f"use a config whose model is {trained}"
        raise LipregError(
            f"checkpoint {path.name} was trained with {trained.rsplit('.', 1)[-1]} but the config trains "
            f"{config_class.rsplit('.', 1)[-1]}; {fix}"
        )
    trained_task = hyperparameters.get("task")
    trained_data = (checkpoint.get("lipreg") or {}).get("data_class_path")
    # by class name: a config says lipreg.data.MNISTDataModule, a checkpoint lipreg.data.mnist.MNISTDataModule
    trained_name, config_name = (c.rsplit(".", 1)[-1] if c else None for c in (trained_data, config_data))
    if trained_name and config_name and trained_name != config_name:
        mismatch = f"was trained on {trained_name} but the config's data is {config_name}"
    elif config_task and trained_task and trained_task != config_task:
        mismatch = f"is a {trained_task} network but the config is for {config_task}"
    else:
        return
    fix = f"use its run's config: --config {shown(own)}" if own else "use the config it was trained with"
    raise LipregError(f"checkpoint {path.name} {mismatch}; {fix}")


def check_writable(directory: Path) -> None:
    """A one-line error unless ``directory`` exists or can be created, and can be written to."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):  # a file of its own: processes may probe at once
            pass
    except OSError as error:
        raise LipregError(
            f"cannot write run outputs to {directory.resolve()} ({error.strerror}); "
            "choose a writable directory with --trainer.default_root_dir DIR"
        ) from None


def shown(path: str | Path) -> str:
    """A path as a user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def fit_summary(trainer: L.Trainer, log_dir: str | None, configs: list | None) -> str:
    """Where the run is (``log_dir``), which checkpoints it wrote, and the command that evaluates the best one."""
    lines = [f"run directory: {shown(log_dir or '.')}"]
    best = None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
            continue
        if isinstance(callback, LatestCheckpoint):
            lines.append(f"latest checkpoint: {shown(callback.best_model_path)}")
        elif callback.monitor is not None:
            score = callback.best_model_score
            value = "" if score is None else f" ({callback.monitor} {float(score):.4g})"
            lines.append(f"best checkpoint: {shown(callback.best_model_path)}{value}")
            best = best or callback.best_model_path
        else:
            lines.append(f"checkpoint: {shown(callback.best_model_path)}")
    target = best or next((c.best_model_path for c in trainer.checkpoint_callbacks
                           if isinstance(c, ModelCheckpoint) and c.best_model_path), None)
    run_config = Path(log_dir or ".") / "config.yaml"
    if target:
        config = shown(run_config) if run_config.is_file() else " ".join(str(c) for c in configs or [])
        quoted = shlex.quote(shown(target))
        lines.append(f"evaluate it: lipreg test --config {shlex.quote(config)} --ckpt_path {quoted}")
    return "\n".join(lines)


def run(args: ArgsType = None) -> LipRegCLI | None:
    """Run ``lipreg`` with ``args`` (default: the command line) and return the CLI object.

    ``lipreg compare DIR`` tabulates and plots the ``lipreg test`` results below DIR and returns
    ``None``. Otherwise the returned CLI's ``trainer.callback_metrics`` hold the run's results.
    Bad input ends the process with one line, ``lipreg: error: …``.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["compare"]:
        from lipreg.report import compare

        compare(argv[1:])
        return None
    try:
        return LipRegCLI(args=args)
    except LipregError as error:
        sys.exit(f"lipreg: error: {error}")
    except Exception as error:
        try:
            raise_from_chain(error)
        except LipregError as cause:
            sys.exit(f"lipreg: error: {cause}")
        raise


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lipreg`` command and ``python -m lipreg``.

    After a successful distributed run the process group is destroyed before the interpreter
    exits: otherwise gloo's worker threads may still hold tensors during finalisation and the
    process aborts (``terminate called without an active exception``) after finishing its work.
    After an error it is left alone, since destroying it while other processes still wait in a
    collective can hang. The working directory is importable (as under ``python -m lipreg``), and
    SIGTERM stops a run as Ctrl-C does (:func:`stop_on_sigterm`).
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        # `python -m lipreg` finds a user's own module (`class_path: my_regularisers.LogitSquare`) in the
        # working directory; the console script would not
        sys.path.insert(0, os.getcwd())
    clear_stop_request()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        run(args)
    except (KeyboardInterrupt, SystemExit) as exception:
        if not is_interrupt(exception):  # argument errors and the like keep their own message and status
            raise
        sys.exit("lipreg: interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (what ``timeout`` and batch schedulers send) stops a run as Ctrl-C does.

    Lightning's own handler only notes the signal and stops at the end of the epoch or the test
    batch (a test batch takes minutes); this one asks for a stop (:mod:`lipreg.stopping`) that the
    run takes at its next safe point (a batch boundary, a step of an attack), by raising
    ``KeyboardInterrupt`` there, so ``fit`` saves its resumable ``latest-…`` checkpoint and ``test``
    marks its folder incomplete. Lightning keeps it in its chain of handlers. A second SIGTERM
    during that shutdown is ignored.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("lipreg: received SIGTERM, stopping as on Ctrl-C", file=sys.stderr, flush=True)
    request_stop("SIGTERM")
