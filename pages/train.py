"""Train: queue runs outside the page, watch them live, cancel them."""
import streamlit as st

import ui

ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Train")
st.markdown(
    "Runs train in a separate worker process, one after another, so this page never blocks: "
    "switch pages or reload the browser and the progress is still here. The embedded "
    "default (glyphs40: 40 classes, 5 tasks of 8) takes about three minutes a run on a CPU. Start with "
    "**vanilla LoRA vs SD-LoRA**: same settings, same seed, the stability-plasticity "
    "trade-off side by side.")

# After the first paint: these imports load torch (seconds on a fresh server).
from dataclasses import replace  # noqa: E402

from sdlora import jobs  # noqa: E402
from sdlora.backbone import BACKBONES  # noqa: E402
from sdlora.config import (BENCHMARK_BACKBONES, DEFAULT_BACKBONE, METHODS,  # noqa: E402
                           ConfigError, TrainConfig)
from sdlora.data import BENCHMARKS, DataError, benchmark_names  # noqa: E402
from sdlora.presets import PRESETS, preset_config  # noqa: E402
from sdlora.train import load_data, split_for  # noqa: E402
from sdlora.tuning import chosen_lr, load_tuned, tuned_path  # noqa: E402

cuda = ui.cuda_device() is not None
default = TrainConfig()
lesson_settings = st.session_state.get(ui.TRAIN_SUGGESTION)  # from the Trade-off lesson
if lesson_settings:
    default = replace(default, lr=lesson_settings["lr"], epochs=lesson_settings["epochs"])
    st.info(f"Settings from the Trade-off lesson: {' and '.join(lesson_settings['methods'])} "
            f"at lr {lesson_settings['lr']:g}, {lesson_settings['epochs']} epochs a task, seed "
            f"{lesson_settings['seed']}. Queue them below (the validation-chosen rate is "
            "unticked so that this rate is used).")
    st.button("Back to the defaults", key="train-clear-suggestion",
              on_click=lambda: st.session_state.pop(ui.TRAIN_SUGGESTION, None))
# Preset and benchmark outside the form: the data folder (and the suggested backbone) follow
# them as soon as they change, not at the next submit.
options = ["(none: the settings below)"] + list(PRESETS)
preset = ui.url_control(
    st.selectbox, "Preset", name="preset", options=options, default=options[0],
    fmt=lambda o: "none" if o == options[0] else o,
    help="One of the paper's experiments (ViT-B/16, its data set, epochs, optimiser), or the "
         "embedded benchmark's own: glyphs40-5 (the default) and glyphs80-10 (80 classes, 10 "
         "tasks of 8). With a preset only method, seed, device and the data folder below are "
         "used.")
names = benchmark_names()
benchmark = ui.url_control(
    st.selectbox, "Benchmark", name="benchmark", options=names, default=default.benchmark,
    help="glyphs40 (the default): glyph classes in typefaces and styles its foundation model "
         "never saw, where adapting the backbone pays. renditions20: Fashion-MNIST and digit "
         "renditions, where the frozen features already suffice.")
# The lesson's settings start fresh widgets (and "Back to the defaults" fresh ones again).
lesson = "-lesson" if lesson_settings else ""
embedded = (preset_config(preset).benchmark if preset in PRESETS else benchmark) in BENCHMARKS
with st.form("train"):
    c1, c2, c3 = st.columns(3)
    data_root = c1.text_input("Data folder (the paper's benchmarks)", value="",
                              disabled=embedded,
                              help="Not used by the embedded benchmarks (glyphs40, "
                                   "renditions20, ...): they are made in memory." if embedded
                              else "The benchmark's folder (default $SDLORA_DATA/<name>).")
    data_root = "" if embedded else data_root
    # Each embedded benchmark with the foundation model made for it (changeable).
    suggested = BENCHMARK_BACKBONES.get(benchmark, DEFAULT_BACKBONE)
    # (a key per benchmark: a new benchmark starts at its own backbone, as before)
    backbone = ui.url_control(
        c1.selectbox, "Backbone", name="backbone", options=list(BACKBONES), default=suggested,
        key=f"url-backbone-{benchmark}",
        help="embedded-vit (renditions20's) and glyph-vit (glyphs40's) ship with the repo; "
             "ViT-B/16 needs its weights (hub or local file) and a GPU.")
    chosen = ui.url_control(c1.multiselect, "Method(s)", name="methods", many=True,
                            options=list(METHODS), key=f"url-methods{lesson}",
                            default=(lesson_settings or {}).get("methods", ["sd-lora"]),
                            help="\n".join(f"{k}: {v}" for k, v in METHODS.items()))
    tasks = ui.url_control(c2.number_input, "Tasks", name="tasks", default=default.tasks,
                           parse=ui.number(int, 1), step=1)
    epochs = ui.url_control(c2.number_input, "Epochs per task", name="epochs",
                            key=f"url-epochs{lesson}", default=default.epochs,
                            parse=ui.number(int, 1), step=1)
    lr = ui.url_control(c2.number_input, "Learning rate", name="lr", key=f"url-lr{lesson}",
                        default=default.lr, parse=ui.number(float, 0.0), format="%.4f",
                        step=0.001)
    use_tuned = ui.url_control(
        c2.checkbox, "Each method's validation-chosen rate", name="tuned",
        key=f"url-tuned{lesson}", default=not lesson_settings,
        help="Where scripts/tune_lr.py chose a learning rate for the method on this benchmark "
             "(on a validation split of the training data, results/tuned_lr.json), use it "
             "instead of the number above; the README's tables are trained that way.")
    rank = ui.url_control(c3.number_input, "Rank r", name="rank", default=default.rank,
                          parse=ui.number(int, 1), step=1,
                          help="Of each LoRA direction (and InfLoRA's). Methods without "
                               "low-rank adapters (full-ft, frozen, simplecil, the prompt "
                               "methods, joint with a full-ft adapter) have none and ignore "
                               "it; sd-lora-rr follows its own schedule (rr_ranks).")
    seed = ui.url_control(c3.number_input, "Seed", name="seed", key=f"url-seed{lesson}",
                          default=lesson_settings["seed"] if lesson_settings else 0,
                          parse=ui.number(int, 0), step=1)
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    device = ui.url_control(c3.selectbox, "Device", name="device", options=devices,
                            default=devices[0], help="CUDA when a GPU is present, else the CPU.")
    b1, b2 = st.columns(2)
    queue_selected = b1.form_submit_button("Queue selected method(s)", type="primary")
    compare = b2.form_submit_button("Vanilla LoRA vs SD-LoRA (one click)")


def submit(methods: list[str]) -> None:
    try:
        common = dict(method=None, seed=int(seed), device=device, data_root=data_root or None)
        if preset in PRESETS:
            configs = [preset_config(preset, **{**common, "method": m}) for m in methods]
        else:
            # the rank where the method has one (with_options: not for full-ft, frozen, prompts)
            configs = [TrainConfig(benchmark=benchmark, backbone=backbone, tasks=int(tasks),
                                   epochs=int(epochs), lr=float(lr), **{**common, "method": m}
                                   ).with_options(rank=int(rank)) for m in methods]
            if use_tuned:  # the same rate as `python -m sdlora train` without --lr
                tuned = load_tuned(tuned_path())
                configs = [replace(c, lr=chosen_lr(c, fallback=c.lr, results=tuned)[0])
                           for c in configs]

        split_for(configs[0], load_data(configs[0]))  # data present, task count possible
    except (ConfigError, DataError, ValueError) as err:
        st.error(f"Not queued: {err}")
        return
    for config in configs:
        try:
            job = jobs.submit(config)
        except (OSError, ValueError) as err:
            st.error(f"Not queued: {err}")
            return
        st.success(f"Queued {job['id']}")


if queue_selected:
    if not chosen:
        st.error("Not queued: choose at least one method.")
    else:
        submit(chosen)
if compare:
    submit(["lora", "sd-lora"])


@st.fragment(run_every=2)
def progress() -> None:
    st.subheader("Queue")
    ui.guarded(_queue)


def _queue() -> None:
    all_jobs = jobs.reconcile()  # also replaces a worker that died with jobs still queued
    if not all_jobs:
        st.caption("Nothing queued yet.")
        return
    from sdlora.runs import RunError, RunFolder

    for job in reversed(all_jobs[-12:]):
        try:
            status = RunFolder(job["run"]).status() or {}
        except RunError as err:
            status = {}
            st.warning(f"{job['id']}: {err}")
        with st.container(border=True):
            top = st.columns([4, 1])
            top[0].markdown(f"**{job['id']}** · {job['config']['method']} · *{job['state']}*")
            if job["state"] in ("queued", "running"):
                if top[1].button("Cancel", key=f"cancel-{job['id']}"):
                    jobs.cancel(job["id"])
                    st.rerun()
            elif job["state"] in ("interrupted", "cancelled", "failed"):
                if top[1].button("Resume", key=f"resume-{job['id']}"):
                    jobs.resume(job["id"])
                    st.rerun()
            if job["state"] == "running" and status:
                total = max(status.get("total_steps", 1), 1)
                done = status.get("global_step", 0)
                eta = status.get("eta_seconds")
                st.progress(min(done / total, 1.0), text=(
                    f"task {status.get('task', 0) + 1} of {status.get('tasks', '?')}, epoch "
                    f"{status.get('epoch', 0) + 1}, step {status.get('step', 0)}/"
                    f"{status.get('steps', '?')}, loss {status.get('loss', float('nan')):.3f}"
                    + (f", about {eta:.0f} s left" if eta else "")))
                mags = status.get("magnitudes") or {}
                if mags:
                    st.caption("magnitudes: " + ", ".join(f"α{k} = {v:.3f}" for k, v in mags.items()))
            elif job["state"] == "failed":
                st.caption(f"see {job.get('log') or job['run'] + '/worker.log'}"
                           + (f": {job['error']}" if job.get("error") else ""))


progress()
