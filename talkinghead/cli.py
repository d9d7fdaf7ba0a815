"""The one entry wrapper every script uses: Hydra composition with ``key=value`` overrides, and
errors turned into a single line on stderr with a non-zero exit (a traceback only with
``verbose=true``).

Scripts stay thin::

    from talkinghead.cli import run_cli

    def main(cfg):
        from talkinghead.pipeline.infer import infer_from_config  # local: --help, --cfg and bad keys stay fast
        return infer_from_config(cfg)

    if __name__ == "__main__":
        run_cli("infer", main)

We use Hydra's compose API rather than ``@hydra.main`` so that (a) config errors can be
reported as one line, (b) no output directory or working-directory change is imposed, and
(c) tests call exactly the same function (:func:`compose_config`) the scripts do. The one
exception is :func:`run_hydra_cli` (``scripts/preprocess_corpus.py``): work that fans out over
Hydra's ``--multirun`` launcher plugins needs ``@hydra.main``; it reports errors the same way.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from talkinghead.errors import ConfigError, TalkingHeadError
from talkinghead.instantiate import CONFIG_DIR, to_plain  # noqa: F401 -- re-exported: scripts take it from here


_TRUE = {"true", "1", "yes", "on"}


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides; bad keys raise :class:`ConfigError`."""
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise ConfigError(f"config {config_name!r} not found in {CONFIG_DIR}; set TALKINGHEAD_CONFIG_DIR to the repo's configs/")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_config_error_line(config_name, err)) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def _config_error_line(config_name: str, err: Exception) -> str:
    text = " ".join(str(err).split())
    m = re.search(r"Key '([^']+)' is not in struct", text) or re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        return (f"unknown config key '{key}' for {config_name}; see configs/{config_name}.yaml "
                f"(run with --cfg to print all keys)")
    m = re.search(r"Missing mandatory value: ([\w.]+)", text)
    if m:
        return f"{m.group(1)}= is required for {config_name}; see configs/{config_name}.yaml"
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        return f"unknown config choice '{m.group(1)}' for {config_name}; see the folders under configs/"
    return f"bad configuration for {config_name}: {text[:300]}"


def _wants_verbose(overrides: Sequence[str]) -> bool:
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "verbose" and value.lower() in _TRUE:
            return True
    return False


def run_cli(config_name: str, main: Callable[[DictConfig], Any], argv: Sequence[str] | None = None) -> None:
    """Compose the config from ``argv`` (default ``sys.argv[1:]``), call ``main(cfg)`` and exit.

    ``--cfg`` prints the composed config; ``-h/--help`` prints usage. A
    :class:`TalkingHeadError` becomes ``error: <one line>`` on stderr and exit code 2;
    an unexpected exception exits 1 with one line unless ``verbose=true``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _wants_verbose(args)
    if any(a in ("-h", "--help") for a in args):
        print(f"usage: python scripts/{config_name}.py [key=value ...] [--cfg]\n"
              f"config: {CONFIG_DIR / (config_name + '.yaml')}; --cfg prints every key.")
        sys.exit(0)
    show_cfg = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    bad = [a for a in args if "=" not in a]

    def run() -> None:
        if bad:
            raise ConfigError(f"arguments must be key=value, got {bad[0]!r} (e.g. out=outputs/run)")
        cfg = compose_config(config_name, args)
        if show_cfg:
            print(OmegaConf.to_yaml(cfg))
            sys.exit(0)
        main(cfg)

    _run_reporting_errors(run, verbose)


class SweepAborted(BaseException):
    """Raised by a Hydra callback to stop a ``--multirun`` sweep with ``error`` (Hydra turns an
    ordinary exception in a callback into a warning and goes on); :func:`run_hydra_cli` reports
    ``error`` as one line."""

    def __init__(self, error: TalkingHeadError):
        super().__init__(str(error))
        self.error = error


def run_hydra_cli(config_name: str, main: Callable[[DictConfig], Any], argv: Sequence[str] | None = None) -> None:
    """Like :func:`run_cli`, but through ``@hydra.main``, for scripts whose work fans out over
    Hydra's ``--multirun`` and its launcher plugins (``hydra/launcher=joblib|submitit_slurm``):
    Hydra's own flags (``--multirun``, ``--cfg job``, ``--help``) apply, and Hydra writes its run
    folder (the config's ``hydra.run.dir`` / ``hydra.sweep.dir``). Errors are the same one line
    and exit code as :func:`run_cli`, also when they come back from a launched job."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _wants_verbose(args)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a traceback; we print one line
    failed: list[TalkingHeadError] = []

    def task(cfg: DictConfig) -> Any:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return main(cfg)  # a launched job: its error comes back to the sweep, which names the job
        try:
            return main(cfg)
        except TalkingHeadError as err:  # one process: reported below as one line, without Hydra's preamble
            failed.append(err)

    app = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)

    def run() -> None:
        saved = sys.argv
        sys.argv = [saved[0], *args]
        try:
            app()
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_config_error_line(config_name, err)) from err
        except SweepAborted as stop:
            raise stop.error from None
        finally:
            sys.argv = saved
        if failed:
            raise failed[0]

    _run_reporting_errors(run, verbose)


def _run_reporting_errors(run: Callable[[], None], verbose: bool) -> None:
    """Call ``run()``; a :class:`TalkingHeadError` becomes ``error: <one line>`` on stderr and its
    exit code, anything else one line and exit 1 (tracebacks only with ``verbose``)."""
    try:
        run()
    except TalkingHeadError as err:
        if verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into one line
        if verbose:
            raise
        msg = " ".join(str(err).split())[:300]
        print(f"error: {type(err).__name__}: {msg} (rerun with verbose=true for the traceback)", file=sys.stderr)
        sys.exit(1)


def cfg_get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``OmegaConf.select`` with a default (for optional keys)."""
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


