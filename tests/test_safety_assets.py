"""Nothing silently wrong with the foundation models (issue 23 items 1-3, issue 21 item 5): a
command never replaces a shipped model, a weights file must hold every backbone weight,
make_demo_runs.py checks --tuned before it deletes anything, and glyph-vit's pretraining is
scored on held-out pretraining views only."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdlora import backbone
from sdlora.config import ConfigError
from tests.test_run_safety import main

REPO = Path(__file__).resolve().parent.parent


class Trained(Exception):
    """Training started: what a refusal must come before."""


@pytest.fixture
def no_training(monkeypatch):
    """Any pretraining that gets as far as building its model or loading its data stops here
    (so a refusal that does not come first fails fast and writes nothing)."""
    def trained(*args, **kwargs):
        raise Trained

    monkeypatch.setattr("sdlora.pretrain.create_backbone", trained)  # glyph-vit's start
    monkeypatch.setattr("sdlora.pretrain.load_pretraining_images", trained)  # embedded-vit's


# -- 1. a shipped model is never replaced by a command ---------------------------------------
@pytest.mark.parametrize("model", ["glyph-vit", "embedded-vit"])
def test_pretrain_does_not_replace_the_shipped_model(capsys, no_training, model):
    shipped = backbone.BACKBONES[model].weights
    before = shipped.read_bytes()
    code, _, err = main(capsys, "pretrain", "--model", model, "--steps", "1", "--epochs", "1")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{shipped} exists (the shipped {model} model)" in err
    assert "--out FILE" in err and "--overwrite" in err
    assert shipped.read_bytes() == before


def test_overwrite_is_refused_while_runs_made_with_the_file_exist(tmp_path, capsys,
                                                                  no_training):
    from sdlora.pretrain import pretrain_glyphs
    from sdlora.runs import default_runs_root

    # the shipped glyph-vit: the demo runs were made with it
    code, _, err = main(capsys, "pretrain", "--model", "glyph-vit", "--overwrite")
    assert code == 2 and "pretrain --overwrite: " in err
    assert f"were made with {backbone.GLYPH_WEIGHTS} (the shipped glyph-vit model)" in err
    import re
    demo = sum(1 for p in (REPO / "cache" / "demo").iterdir() if (p / "config.json").exists())
    # at least the demo runs (a machine's own cache/ may hold more made with the same file)
    assert int(re.search(r"(\d+) run folder\(s\) were made", err).group(1)) >= demo > 0
    # a file of one's own, and a run folder whose config loads it
    weights = tmp_path / "mine.safetensors"
    shutil.copy(backbone.GLYPH_WEIGHTS, weights)
    run = default_runs_root() / "made-with-mine"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dict(backbone="glyph-vit", weights=str(weights))))
    with pytest.raises(ConfigError, match=r"--overwrite: 1 run folder\(s\) were made with "
                                          r".*mine.safetensors \(.*made-with-mine\)"):
        pretrain_glyphs(steps=1, out=weights, overwrite=True)
    # a run that recorded another sha256 was made with another file: no reason to refuse
    (run / "backbone.json").write_text(json.dumps(dict(sha256="0" * 64)))
    with pytest.raises(Trained):
        pretrain_glyphs(steps=1, out=weights, overwrite=True)


def test_glyph_pretraining_is_scored_on_held_out_pretraining_views(tmp_path, monkeypatch):
    """Issue 21: the length is reported on held-out views of the pretraining typefaces, never
    on a benchmark's images, and the file's metadata says what it was scored on."""
    import sdlora.data
    from sdlora import glyphs
    from sdlora.pretrain import HELD_OUT, pretrain_glyphs

    def no_benchmark(*args, **kwargs):
        raise AssertionError("pretraining read a benchmark")

    monkeypatch.setattr(sdlora.data, "load_benchmark", no_benchmark)
    faces = glyphs.font_files(glyphs.PRETRAIN_FONTS)[:2]  # two typefaces: a quick atlas
    monkeypatch.setattr(glyphs, "font_files", lambda *args, **kwargs: faces)
    out = tmp_path / "glyph.safetensors"
    result = pretrain_glyphs(steps=4, batch_size=8, held_out=32, eval_every=2, out=out)
    curve = result["held_out_by_step"]
    assert set(curve) == {"2", "4"} and result["pretraining_views"] == curve["4"]
    assert all(0 <= v <= 100 for v in curve.values()) and result["best_step"] in (2, 4)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["scored_on"] == HELD_OUT == result["scored_on"]
    assert json.loads(meta["held_out_by_step"]) == curve and meta["steps"] == "4"
    assert meta["started_from"] == (f"embedded-vit sha256 "
                                    f"{backbone.weights_sha256(backbone.EMBEDDED_WEIGHTS)}")
    assert not any("glyphs40" in k or "glyphs40" in v for k, v in meta.items())
    backbone.create_backbone("glyph-vit", weights=out)  # loads as the backbone
    with pytest.raises(ConfigError, match=f"{out} exists"):  # and is not replaced silently
        pretrain_glyphs(steps=1, out=out)


def test_embedded_pretraining_is_scored_on_held_out_pretraining_images(tmp_path, monkeypatch):
    """embedded-vit's pretraining was scored on Fashion-MNIST's test set, which renditions20's
    Fashion images come from; now on a held-out share of each pretraining class that it never
    trained on, full-resolution and as 8 x 8 renditions, and the metadata says so."""
    import sdlora.data
    import sdlora.pretrain as pretraining
    from sdlora.benchmark import ArrayDataset

    def no_benchmark(*args, **kwargs):
        raise AssertionError("pretraining read a benchmark or Fashion-MNIST's test set")

    monkeypatch.setattr(sdlora.data, "load_benchmark", no_benchmark)
    monkeypatch.setattr(sdlora.data, "load_fashion_mnist", no_benchmark)
    monkeypatch.setattr(pretraining, "load_fashion_mnist", no_benchmark, raising=False)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(20).repeat_interleave(10)  # 20 classes x 10 images
    images = torch.rand(len(labels), 3, 28, 28, generator=g)
    images[:, 1:] = images[:, :1]  # grey, as the real images
    monkeypatch.setattr(pretraining, "load_pretraining_images",
                        lambda: ArrayDataset(images, labels))
    seen = []
    real_augment = pretraining.augment
    monkeypatch.setattr(pretraining, "augment",
                        lambda x, gen: seen.append(x.clone()) or real_augment(x, gen))
    scored = []
    real_accuracy = pretraining._accuracy
    monkeypatch.setattr(pretraining, "_accuracy", lambda model, head, x, y, *a: scored.append(
        (x.clone(), y.clone())) or real_accuracy(model, head, x, y, *a))
    out = tmp_path / "embedded.safetensors"
    result = pretraining.pretrain(epochs=1, batch_size=64, out=out, held_out_fraction=0.2)
    assert result["held_out_images"] == 40  # 2 of each class's 10
    key = lambda x: set(x[:, 0, 5, 5].tolist())  # noqa: E731  (a pixel: distinct per image)
    trained, (held, held_labels) = torch.cat(seen), scored[0]
    assert len(trained) == 160 and len(key(trained)) == 160  # one epoch over 8 of each class
    assert len(held) == 40 and key(held) == key(images) - key(trained)  # the other 2, unseen
    assert torch.bincount(held_labels).tolist() == [2] * 20
    assert all(0 <= result[k] <= 100 for k in ("held_out_full_res", "held_out_8x8_rendition"))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["scored_on"] == result["scored_on"] and "never a benchmark image" in \
        meta["scored_on"] and "0.2 of each class" in meta["scored_on"]
    assert meta["held_out_images"] == "40" and not any("fashion_test" in k for k in meta)
    backbone.create_backbone("embedded-vit", weights=out)  # loads as the backbone
    with pytest.raises(ConfigError, match="held_out_fraction=1.5 is not valid"):
        pretraining.pretrain(epochs=1, out=tmp_path / "other.safetensors",
                             held_out_fraction=1.5)


# -- 2. a weights file must hold every weight of the backbone --------------------------------
def test_weights_file_must_hold_every_backbone_weight(tmp_path, capsys):
    state = load_file(str(backbone.EMBEDDED_WEIGHTS))
    n = len(state)
    other = tmp_path / "other.safetensors"
    save_file({"unrelated": torch.zeros(3)}, str(other))
    with pytest.raises(ConfigError, match=f"weights file {other} matches 0 of the backbone's "
                                          f"{n} weights"):
        backbone.create_backbone("embedded-vit", weights=other)
    partial = tmp_path / "partial.pth"  # a torch state dict without one weight
    torch.save({k: v for k, v in state.items() if k != "blocks.0.attn.qkv.weight"}, partial)
    with pytest.raises(ConfigError, match=rf"weights file {partial} matches {n - 1} of the "
                                          rf"backbone's {n} weights \(1 missing, e\.g\. "
                                          rf"blocks\.0\.attn\.qkv\.weight\)"):
        backbone.create_backbone("embedded-vit", weights=partial)
    extra = tmp_path / "with_head.safetensors"  # extra keys (a classifier head) are fine
    save_file({**state, "head.weight": torch.zeros(5, 192)}, str(extra))
    model, _ = backbone.create_backbone("embedded-vit", weights=extra)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    code, _, err = main(capsys, "train", "--benchmark", "digits", "--tasks", "2", "--weights",
                        other, "--out", tmp_path / "run")
    assert code == 2 and err.startswith("error: ") and f"matches 0 of the backbone's {n}" in err
    assert not (tmp_path / "run").exists()


# -- 3. make_demo_runs.py checks --tuned before deleting anything ----------------------------
@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "cannot be read as JSON"),
    ("[1]", "holds a JSON list"),
    ('{"lora@glyphs40": {"grid": [0.002]}}', "entry 'lora@glyphs40' has chosen_lr None"),
    ('{"lora@glyphs40": {"chosen_lr": 0.002}}', "has no learning rate for sd-lora@glyphs40"),
])
def test_make_demo_runs_checks_tuned_before_deleting(tmp_path, monkeypatch, capsys, content,
                                                     message):
    from sdlora.runs import demo_runs_root

    spec = importlib.util.spec_from_file_location("make_demo_runs",
                                                  REPO / "scripts" / "make_demo_runs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "train", lambda *args, **kwargs: (_ for _ in ()).throw(Trained))
    old = demo_runs_root() / "old-demo"  # a demo folder the script would remove
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    tuned = tmp_path / "tuned.json"
    if content is not None:
        tuned.write_text(content)
    monkeypatch.setattr(sys, "argv", ["make_demo_runs.py", "--tuned", str(tuned)])
    with pytest.raises(SystemExit) as info:
        script.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"error: --tuned {tuned}" in err and message in err, err
    assert (old / "config.json").exists()
