"""Command line: ``python -m sdlora {train,runs,show,pretrain,analyse} ...``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import METHODS, ConfigError, TrainConfig
from .data import DataError
from .errors import refused_field

log = logging.getLogger("sdlora")


# flag -> TrainConfig field; every flag defaults to None so a preset's values stay unless given
_FLAGS = {"benchmark": str, "backbone": str, "weights": str, "method": str, "variant": str,
          "tasks": int, "epochs": int, "batch_size": int, "lr": float, "optimizer": str,
          "weight_decay": float, "schedule": str, "rank": int, "kd_tau": float,
          "kd_residual": str,
          "new_magnitude_init": float, "seed": int, "device": str, "data_root": str,
          "class_order_seed": int, "amp": str, "num_workers": int, "joint_adapter": str,
          "holdout": str, "val_fraction": float,
          "l2p_variant": str, "prompt_pool": int, "prompt_length": int, "prompt_top_k": int,
          "pull_weight": float, "dualprompt_variant": str, "g_prompt_length": int,
          "ortho_weight": float, "gpm_eps_start": float, "gpm_eps_end": float,
          "grad_clip": float, "head_lr_scale": float,
          "hide_prompt_length": int, "hide_prompt_momentum": float,
          "hide_contrast_weight": float, "hide_centroids": int, "hide_budget": str,
          "hide_tii_epochs": int,
          "hide_tii_lr": float, "hide_ca_lr": float, "hide_tap_lr": float,
          "hide_ca_epochs": int, "hide_oracle_task": bool}


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a class-incremental run (the embedded default "
                                     "when flags are omitted)")
    defaults = TrainConfig()
    helps = {"method": f"one of: {', '.join(METHODS)}",
             "variant": "sd-lora only: 'paper' or 'released' (the authors' code)",
             "lr": "learning rate; without --lr (and --preset) the rate chosen for the method "
                   "on the benchmark's validation split (results/tuned_lr.json) when there is "
                   "one, as the Train page, else the paper's",
             "joint_adapter": "joint only: 'lora', 'sd-lora' or 'full-ft'",
             "holdout": "'test', or 'validation' (train minus a held-out part of the training "
                        "set, evaluated on that part: for choosing hyperparameters)",
             "data_root": "folder of a file benchmark (default $SDLORA_DATA/<benchmark>)",
             "amp": "'none' or 'bf16' (CUDA autocast)", "device": "auto, cpu or cuda",
             "l2p_variant": "l2p only: 'l2p' (prompt tokens) or 'l2p++' (prefix, pool 30 x 20)",
             "prompt_pool": "prompt methods' pool (default: the method's: l2p 10, l2p++ 30; "
                            "dualprompt one E-prompt per task; coda-prompt 100 components)",
             "prompt_length": "tokens per prompt (default: l2p 5, l2p++ 20, dualprompt 20, "
                              "coda-prompt 8)",
             "prompt_top_k": "l2p: prompts chosen per image",
             "pull_weight": "l2p, dualprompt: weight of the key-query pull (default: the "
                            "method's; l2p 0.1, dualprompt 1.0)",
             "dualprompt_variant": "dualprompt only: 'official' (L key + L value tokens, one "
                                   "key per task) or 'coda' (CODA-Prompt's: L/2 + L/2, a key "
                                   "per layer; Table 5's size)",
             "g_prompt_length": "dualprompt: G-prompt length (default: 5; 6 for 'coda')",
             "ortho_weight": "coda-prompt: orthogonality penalty weight (0.0 as the released "
                             "code now; 1e-7 reproduces the paper's runs, whose 0.1 carried "
                             "the early code's hidden factor 1e-6; 0.1 here is 10^6 times "
                             "stronger than what the paper ran)",
             "grad_clip": "clip the gradient norm to this (default: the method's; 1.0 for l2p "
                          "dualprompt and hide-prompt as their released code, none for the "
                          "others)",
             "gpm_eps_start": "inflora: DualGPM threshold after task 1",
             "gpm_eps_end": "inflora: the threshold it rises to by the last task",
             "kd_residual": "sd-lora-kd: 'relative' (scale-free, Eqn. 7) or 'absolute' "
                            "(Algorithm 1 line 11: unnormalised products)",
             "head_lr_scale": "head learning rate = lr x this (default: the method's; 0.1 for "
                              "hide-prompt as its released code, 1 for the others)",
             "hide_prompt_length": "hide-prompt: prefix key tokens (and as many value tokens) "
                                   "of a task's prompt at each of blocks 0-4",
             "hide_prompt_momentum": "hide-prompt: prompt ensemble weight m of the earlier "
                                     "prompts' mean",
             "hide_contrast_weight": "hide-prompt: weight of the contrastive term against "
                                     "the stored class centroids",
             "hide_centroids": "hide-prompt: k-means clusters per class in the statistics",
             "hide_budget": "hide-prompt: 'equal' (its task-identity stage and prompts share "
                            "--epochs passes over a task's images, 20 : 150 as released, the "
                            "alignments scaled alike) or 'released' (20 identity and 30 "
                            "alignment epochs beside --epochs of prompts: an extra budget)",
             "hide_tii_epochs": "hide-prompt, --hide-budget released: epochs of the "
                                "task-identity stage per task",
             "hide_tii_lr": "hide-prompt: its Adam learning rate (default: lr / 60)",
             "hide_ca_epochs": "hide-prompt, --hide-budget released: epochs of each "
                               "classifier alignment",
             "hide_ca_lr": "hide-prompt: SGD learning rate of the task-identity stage's "
                           "classifier alignment (default: lr / 6; released 4.6875e-4 to the "
                           "prompts' 0.0028125)",
             "hide_tap_lr": "hide-prompt: SGD learning rate of the final head's (TAP) "
                            "classifier alignment (default: lr x 0.005 / 0.0028125 = lr x 16 / "
                            "9; released 0.005, not scaled by the batch)",
             "hide_oracle_task": "hide-prompt, analysis only: give each test image its true "
                                 "task's prompt instead of the inferred one"}
    for name, kind in _FLAGS.items():
        default = getattr(defaults, name)
        text = f"{helps.get(name, '')} (default: {default})".strip()
        if kind is bool:  # a switch: given means True
            p.add_argument("--" + name.replace("_", "-"), action="store_const", const=True,
                           default=None, help=text)
            continue
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    p.add_argument("--preset", default=None,
                   help="one of the paper's experiments (`python -m sdlora presets`)")
    p.add_argument("--out", default=None, help="the run folder (exactly this path)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue an interrupted run (a run folder or id); other flags ignored")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="a TrainConfig as JSON (as in a run's config.json); other flags ignored")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_train(args) -> int:
    import signal

    from .runs import resolve_run
    from .train import train

    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled job records 'cancelled' and stops
    if not args.resume:
        from .runs import default_runs_root
        if args.out is not None:
            _check_out(Path(args.out), "--out")
        else:
            _check_out(default_runs_root() / "new-run", "the runs folder")

    if args.resume:
        run = train(resume=resolve_run(args.resume), progress=not args.quiet)
    elif args.config:
        config = TrainConfig.from_dict(_read_config(args.config))
        _check_before_training(config)
        run = train(config, out=args.out, progress=not args.quiet)
    else:
        from .presets import preset_config

        given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
        try:
            config = preset_config(args.preset, **given) if args.preset else TrainConfig(**given)
        except ConfigError as err:
            flag = refused_field(err, given)
            if flag is None:
                raise
            raise ConfigError(f"--{flag.replace('_', '-')} {given[flag]}: {err}") from err
        why = None
        if "lr" not in given and not args.preset:  # the rate the Train page would use
            from dataclasses import replace

            from .tuning import chosen_lr
            lr, why = chosen_lr(config)
            config = replace(config, lr=lr)
        _check_before_training(config)
        if why:
            print(why)
        run = train(config, out=args.out, progress=not args.quiet)
    print(format_run(run.path))
    return 0


def _check_out(out: Path, what: str) -> None:
    """Fast refusals of an --out that cannot be a run folder (the claim in `train` is the
    guard; this answers before the data is loaded)."""
    import os

    from .runs import check_new_folder, nearest_existing

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file; expected a folder for the run (new or "
                          f"empty)")
    probe = nearest_existing(out)
    if not probe.is_dir():
        raise ConfigError(f"{what} {out} is under {probe}, which is a file; expected a folder "
                          f"path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {out.parent if what != '--out' else out}: {probe} is "
                          f"read-only; choose a folder you can write"
                          + (" (--out, or $SDLORA_CACHE)" if what != "--out" else ""))
    if out.is_dir():
        check_new_folder(out)  # a folder holding other files: refused before anything is made


def _read_config(name: str) -> dict:
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; expected a JSON file of TrainConfig "
                          f"fields (as a run's config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path} is not JSON ({err}); expected a JSON object of "
                          f"TrainConfig fields (as a run's config.json)") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} holds a JSON {type(data).__name__}; expected an "
                          f"object of TrainConfig fields (as a run's config.json)")
    return data


def _check_weights(weights: Path) -> None:
    """A weights file must be safetensors (or a torch zip state dict)."""
    from safetensors import safe_open

    if not weights.is_file():
        raise ConfigError(f"weights file {weights} not found" if not weights.exists() else
                          f"--weights {weights} is a folder; expected a safetensors file")
    try:
        with safe_open(str(weights), framework="pt"):
            return
    except Exception as err:  # noqa: BLE001 - any parse failure means: not safetensors
        with open(weights, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # torch.save's zip format
                return
        raise ConfigError(f"--weights {weights} is not a safetensors file "
                          f"({str(err).splitlines()[0][:100]}); expected the backbone's weights "
                          f"as .safetensors") from None


def _check_before_training(config: TrainConfig) -> None:
    """Everything that can fail before training: data, task count, device, weights."""
    from dataclasses import replace

    from .backbone import BACKBONES, create_backbone
    from .train import load_data, resolve_device, split_for

    if resolve_device(config.device).type == "cpu":  # 'auto' here: what applies on a CPU
        replace(config, device="cpu")  # validated: refuses amp='bf16', which does nothing here
    benchmark = load_data(config)
    try:
        split_for(config, benchmark)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    spec = BACKBONES.get(config.backbone)
    weights = config.weights or (spec.weights if spec else None)
    if weights is not None:
        _check_weights(Path(weights))
    try:
        create_backbone(config.backbone, weights=config.weights)
    except ConfigError:  # a weights file without the backbone's keys: named in full
        raise
    except Exception as err:  # noqa: BLE001 - wrong shapes, no hub access, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        source = f"weights {weights}" if weights else "timm's hub weights"
        raise ConfigError(f"backbone {config.backbone!r} could not be built from {source}: "
                          f"{first}") from err


def format_run(path: Path) -> str:
    """The final table: R (percent) per task, then Acc, AAA, forgetting, BWT."""
    from .runs import RunError, RunFolder

    run = RunFolder(path)
    m = run.metrics()
    n = len(m["accuracy_matrix"])
    if n == 0:
        return f"run {run.id}  ({run.path}): no finished task yet"
    m = {"forgetting": float("nan"), "bwt": float("nan"), **m}
    lines = [f"run {run.id}  ({run.path})",
             f"method {m.get('method')}  benchmark {m.get('benchmark')}  seed {m.get('seed')}  "
             f"tasks {n}/{m.get('tasks')}",
             "after task | " + " ".join(f"T{j + 1:>5}" for j in range(n)) + " |  seen"]
    for i, row in enumerate(m["accuracy_matrix"]):
        cells = " ".join(f"{v:6.1f}" for v in row) + "       " * (n - len(row))
        lines.append(f"{i + 1:>10} | {cells} | {m['seen_accuracy'][i]:5.1f}")
    lines.append(f"Acc {m['acc']:.2f}  AAA {m['aaa']:.2f}  forgetting {m['forgetting']:.2f}  "
                 f"BWT {m['bwt']:.2f}")
    try:
        run.check_checkpoints(n)
        run.check_step_logs(n)
    except RunError as err:
        lines.append(f"warning: {err}")
    kd = [t for t in m.get("task_info", []) if isinstance(t, dict) and "absorbed" in t
          and isinstance(t.get("residual"), (int, float))]
    if kd:
        lines.append("KD: " + ", ".join(f"residual {t['residual']:.2e} "
                                        f"{'absorbed' if t['absorbed'] else 'kept'}" for t in kd))
    last = (m.get("task_info") or [{}])[-1]
    identity = last.get("task_identity_accuracy") if isinstance(last, dict) else None
    if isinstance(identity, list) and identity:  # a method that infers the task (hide-prompt)
        oracle = " (evaluated with the oracle task)" if m.get("config", {}).get(
            "hide_oracle_task") else ""
        lines.append("task identity after the last task: " + " ".join(
            f"{v:.1f}" for v in identity) + f"  (mean {sum(identity) / len(identity):.1f})"
            + oracle)
    return "\n".join(lines)


def _cmd_runs(args) -> int:
    from .runs import RunError, list_runs

    if args.root is not None and not Path(args.root).is_dir():
        raise ConfigError(f"--root {args.root} is not a folder; expected a folder of run folders")
    runs = list_runs(args.root)
    if not runs:
        print("no runs yet; start one with `python -m sdlora train`")
        return 0
    print(f"{'run':58} {'method':22} {'state':11} {'tasks':>5} {'Acc':>6} {'AAA':>6}")
    damaged = 0
    for run in runs:
        try:
            s = run.summary()
        except RunError as err:
            damaged += 1
            print(f"{run.id:58} damaged: {err}")
            continue
        acc = f"{s['acc']:.1f}" if s["acc"] is not None else "-"
        aaa = f"{s['aaa']:.1f}" if s["aaa"] is not None else "-"
        print(f"{s['id']:58} {str(s['method']):22} {s['state']:11} "
              f"{s['done']:>2}/{str(s['tasks']):<2} {acc:>6} {aaa:>6}")
    if damaged:
        print(f"{damaged} damaged run folder(s): the message names the file and what is wrong")
    return 0


def _cmd_show(args) -> int:
    from .runs import RunFolder, resolve_run

    path = resolve_run(args.run)
    RunFolder(path).config()  # a damaged config.json is named, not skipped
    if args.json:
        print(json.dumps(RunFolder(path).metrics(), indent=1))
    else:
        print(format_run(path))
    return 0


def _cmd_presets(args) -> int:
    from .presets import PRESETS, preset_config

    for name, (settings, reported) in PRESETS.items():
        config = preset_config(name)
        print(f"{name}: {config.benchmark}, {config.tasks} tasks, {config.epochs} epochs, "
              f"{config.optimizer} lr {config.lr}, batch {config.batch_size}, {config.backbone}")
        for method, (acc, aaa) in reported.items():
            print(f"    paper {method:24} Acc {acc:6.2f}  AAA {aaa:6.2f}")
    return 0


def _cmd_pretrain(args) -> int:
    from .pretrain import pretrain, pretrain_glyphs

    if args.model == "glyph-vit":
        result = pretrain_glyphs(steps=args.steps, seed=args.seed, out=args.out,
                                 overwrite=args.overwrite)
    else:
        result = pretrain(epochs=args.epochs, seed=args.seed, out=args.out,
                          overwrite=args.overwrite)
    print(json.dumps(result, indent=1))
    return 0


IDLE_EXIT_MAX = 7 * 24 * 3600.0  # a week: a worker always ends


def _cmd_worker(args) -> int:
    from .jobs import worker_loop

    if not 0 <= args.idle_exit <= IDLE_EXIT_MAX:  # also nan, which never compares as idle
        raise ConfigError(f"--idle-exit {args.idle_exit} is not valid; give the seconds a "
                          f"worker waits with nothing queued, from 0 to {IDLE_EXIT_MAX:g}")
    worker_loop(idle_exit=args.idle_exit)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--root", default=None)
    p = sub.add_parser("show", help="print one run's results")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    sub.add_parser("presets", help="the paper's experiments with their reported results")
    p = sub.add_parser("worker", help="run the queue of training jobs (the app starts it)")
    p.add_argument("--idle-exit", type=float, default=30.0,
                   help=f"seconds to wait with nothing queued before exiting (0 to "
                        f"{IDLE_EXIT_MAX:g}; default 30)")
    p = sub.add_parser("pretrain", help="pretrain an embedded foundation model")
    p.add_argument("--model", choices=["embedded-vit", "glyph-vit"], default="embedded-vit",
                   help="embedded-vit: the default's (renditions20); glyph-vit: glyphs40's")
    p.add_argument("--steps", type=int, default=600, help="glyph-vit: steps of batch 64")
    p.add_argument("--epochs", type=int, default=3, help="embedded-vit: epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the weights (default: the shipped model's file, which "
                        "exists: pass a new file, then train with --weights FILE)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing file; refused while run folders made with it "
                        "exist (their checkpoints need it)")
    from .analysis.cli import add_parser as add_analyse
    add_analyse(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = dict(train=_cmd_train, runs=_cmd_runs, show=_cmd_show, pretrain=_cmd_pretrain,
                    worker=_cmd_worker, presets=_cmd_presets)
    handler = commands.get(args.command) or args.handler
    try:
        return handler(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except OSError as err:  # a read-only folder, a full disk: what failed, nothing else
        print(f"error: {_os_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        from .runs import RunError
        if isinstance(err, RunError):
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        raise


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _os_message(err: OSError) -> str:
    text = err.strerror or str(err)
    name = err.filename
    if name is not None and str(name) not in text:
        text = f"{name}: {text}"
    return " ".join(text.split())
