"""Argument checks the scripts share with the command line (``scripts/*.py``).

Each check takes the script's ``argparse`` parser and, on a bad value, calls ``parser.error``:
one ``error:`` line naming the option, the value and what would be valid, exit status 2, before
anything is trained, written or deleted. TrainConfig's own validation is the one source of what
a value may be (as ``python -m sdlora train`` reports it): ``config`` builds one and names the
option of the field it refuses.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, TrainConfig
from .data import DataError
from .errors import refused_field
from .runs import RunError, RunFolder, check_same_settings, nearest_existing


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def checked(parser: argparse.ArgumentParser, call: Callable, *args, **kwargs) -> Any:
    """``call(*args, **kwargs)``; a ConfigError, DataError, ValueError, OSError or RunError it
    raises (a bad value, missing data, a read-only folder, a damaged run folder) becomes the
    parser's error."""
    try:
        return call(*args, **kwargs)
    except (ValueError, DataError, OSError, RunError) as err:  # ConfigError is a ValueError
        parser.error(_one_line(err))


def config(parser: argparse.ArgumentParser, flags: dict[str, str] | None = None,
           **values) -> TrainConfig:
    """``TrainConfig(**values)``, or the parser's error naming the option of the refused field
    (``flags`` maps a field to its option where the script names it otherwise than
    ``--field-name``; a field no option sets is named as the field)."""
    flags = flags or {}
    try:
        return TrainConfig(**values)
    except ConfigError as err:
        field = refused_field(err, values)
        if field is None:
            parser.error(_one_line(err))
        flag = flags.get(field, "--" + field.replace("_", "-"))
        parser.error(f"{flag} {values[field]}: {_one_line(err)}")


def seeds(parser: argparse.ArgumentParser, values: list[int], flag: str = "--seeds") -> None:
    """Every seed one TrainConfig accepts."""
    for seed in values:
        config(parser, {"seed": flag}, seed=seed)


def shard(parser: argparse.ArgumentParser, text: str, flag: str = "--shard") -> tuple[int, int]:
    """``i/n`` as (i, n) with 0 <= i < n: the shard of the jobs this process trains."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = 0, 0
    if not 0 <= i < n:
        parser.error(f"{flag} {text!r} is not valid; give i/n with 0 <= i < n, e.g. 0/2")
    return i, n


def count(parser: argparse.ArgumentParser, value: int, flag: str, least: int = 1,
          what: str = "") -> None:
    """A whole number of at least ``least`` (grid points, images, ...)."""
    if value < least:
        parser.error(f"{flag} {value} is not valid; give a whole number >= {least}"
                     + (f" ({what})" if what else ""))


def parse_settings(pairs: list[str], flag: str = "--set") -> dict:
    """KEY=VALUE pairs as TrainConfig values of the field's type (``None`` for none); a bad
    pair is a ConfigError naming it."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"{flag} {pair!r} is not valid; give KEY=VALUE with KEY a "
                              f"TrainConfig field, e.g. new_magnitude_init=0")
        current = getattr(defaults, key)
        kind = type(current) if current is not None else float
        if kind not in (int, float, str, bool):
            raise ConfigError(f"{flag} {pair!r}: {key} is not set this way (a "
                              f"{kind.__name__}); give a field that is a number or a name")
        if text == "None":
            out[key] = None
        elif kind is bool:
            if text not in ("True", "False"):
                raise ConfigError(f"{flag} {pair!r}: {key} is True or False")
            out[key] = text == "True"
        else:
            try:
                out[key] = kind(text)
            except ValueError:
                raise ConfigError(f"{flag} {pair!r}: {text!r} is not a valid {kind.__name__} "
                                  f"for {key} (default {current!r})") from None
    return out


def settings(parser: argparse.ArgumentParser, pairs: list[str], flag: str = "--set",
             **values) -> dict:
    """``parse_settings``, each value checked by TrainConfig (with ``values``, the other
    fields the script sets), or the parser's error."""
    parsed = checked(parser, parse_settings, pairs, flag)
    try:
        TrainConfig(**{**values, **parsed})
    except ConfigError as err:
        field = refused_field(err, parsed)
        if field is None:  # one of the script's own options
            config(parser, **values)
            parser.error(_one_line(err))
        pair = next(p for p in pairs if p.partition("=")[0] == field)
        parser.error(f"{flag} {pair}: {_one_line(err)}")
    return parsed


def before_training(parser: argparse.ArgumentParser, config: TrainConfig) -> None:
    """What ``python -m sdlora train`` checks before training: the device, the data (loaded),
    the task count against its classes, the weights file and the backbone built from it."""
    from .cli import _check_before_training

    checked(parser, _check_before_training, config)


def weights(parser: argparse.ArgumentParser, path: str | Path, flag: str = "--weights") -> None:
    """A backbone weights file as ``python -m sdlora train --weights`` accepts it."""
    from .cli import _check_weights

    checked(parser, _check_weights, Path(path))


def json_file(parser: argparse.ArgumentParser, path: str | Path, flag: str,
              kind: type = dict, what: str = "a JSON object") -> Any:
    """The JSON value of an existing, readable file holding ``kind``."""
    path = Path(path)
    if not path.exists():
        parser.error(f"{flag} {path}: no such file; expected {what}")
    if not path.is_file():
        parser.error(f"{flag} {path} is a folder; expected a file holding {what}")
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        parser.error(f"{flag} {path} cannot be read ({err.strerror or err}); expected {what}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        parser.error(f"{flag} {path} is not JSON ({_one_line(err)}); expected {what}")
    if not isinstance(data, kind):
        parser.error(f"{flag} {path} holds a JSON {type(data).__name__}; expected {what}")
    return data


TUNED = "a JSON object of tuned learning rates (as scripts/tune_lr.py writes)"


def tuned_file(parser: argparse.ArgumentParser, path: str | Path, flag: str,
               required: bool = True) -> dict:
    """A learning-rate summary of scripts/tune_lr.py: key -> {chosen_lr, validation_acc, ...}.
    A missing file is {} when not ``required`` (nothing tuned yet)."""
    if not required and not Path(path).exists():
        return {}
    data = json_file(parser, path, flag, dict, TUNED)
    for key, entry in data.items():
        lr = entry.get("chosen_lr") if isinstance(entry, dict) else None
        acc = entry.get("validation_acc", {}) if isinstance(entry, dict) else None
        if (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                or lr <= 0 or not isinstance(acc, dict)):
            parser.error(f"{flag} {path}: entry {key!r} has no positive chosen_lr and "
                         f"validation_acc object; expected {TUNED}")
    return data


def _writable_ancestor(parser, path: Path, flag: str, folder: Path | None = None) -> None:
    """``folder`` (default ``path``) or its nearest existing ancestor is a writable folder."""
    probe = nearest_existing(path if folder is None else folder)
    if not probe.is_dir():
        parser.error(f"{flag} {path} is under {probe}, which is a file; expected a path in a "
                     f"folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: {probe} is read-only; choose a folder you can write")


def output_file(parser: argparse.ArgumentParser, path: str | Path, flag: str) -> Path:
    """A file the script will write at the end: not a folder, in a folder it can write (or
    create), checked before the work that leads to it."""
    path = Path(path)
    if path.is_dir():
        parser.error(f"{flag} {path} is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        parser.error(f"{flag} {path} is read-only; choose a file you can write")
    _writable_ancestor(parser, path, flag, path.parent)
    return path


def output_folder(parser: argparse.ArgumentParser, path: str | Path, flag: str) -> Path:
    """A folder the script writes into (existing or new): not a file, nor under one, and
    writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        parser.error(f"{flag} {path} is a file; expected a folder")
    _writable_ancestor(parser, path, flag)
    return path


def run_config(parser: argparse.ArgumentParser, path: str | Path,
               flag: str) -> TrainConfig | None:
    """The config of the run folder at ``path``, None where nothing is there yet; a folder that
    is not a readable run folder is the parser's error (the script never writes into it)."""
    path = Path(path)
    if not path.exists():
        return None
    run = RunFolder(path)
    if not path.is_dir() or (not run.exists() and any(path.iterdir())):
        parser.error(f"{flag} {path} exists and is not a run folder (no config.json); expected "
                     f"a run folder or a new path")
    if not run.exists():
        return None
    return checked(parser, lambda: TrainConfig.from_dict(run.config()))


def run_matches(parser: argparse.ArgumentParser, path: str | Path, wanted: TrainConfig,
                flag: str) -> None:
    """The run folder at ``path``, if there is one, was made with ``wanted``'s settings (a
    folder made otherwise is never reused or resumed)."""
    if run_config(parser, path, flag) is None:
        return
    checked(parser, check_same_settings, RunFolder(path), wanted)


def quiet_on_closed_pipe(main: Callable[[], Any]) -> None:
    """Run a script's ``main()`` and exit with what it returns; a reader that closes the pipe
    early (``script.py | head -1``) ends it quietly, as a shell tool does (status 141, SIGPIPE),
    instead of with a BrokenPipeError traceback."""
    try:
        code = main()
        sys.stdout.flush()  # a table still buffered meets the closed pipe here
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that one is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code)
