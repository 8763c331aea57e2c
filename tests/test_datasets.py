"""The paper's benchmarks, read from small files generated here in their real on-disk formats."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sdlora.config import TrainConfig
from sdlora.data import DataError, make_task_split
from sdlora.datasets import load_file_benchmark
from sdlora.presets import PRESETS, preset_config


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)


def _class_folders(root, classes=200, per_class=3):
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"n{c:08d}" / f"{i}.jpg", c * 10 + i)


def test_imagenet_r_folder_split_by_code(tmp_path):
    _class_folders(tmp_path / "r", per_class=5)
    a = load_file_benchmark("imagenet-r", tmp_path / "r", 28, split_seed=0)
    b = load_file_benchmark("imagenet-r", tmp_path / "r", 28, split_seed=0)
    assert a.num_classes == 200 and len(a.train) == 800 and len(a.test) == 200
    assert a.test.items == b.test.items  # seeded: the same split every time
    assert load_file_benchmark("imagenet-r", tmp_path / "r", 28, split_seed=1).test.items != a.test.items
    x, y = a.train[0]
    assert x.shape == (3, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1 and y == 0
    assert sorted(p.name for p in (tmp_path / "r" / "n00000000").iterdir()) == [
        f"{i}.jpg" for i in range(5)]  # never moves files


def test_imagenet_a_pre_split_layout(tmp_path):
    _class_folders(tmp_path / "a" / "train", per_class=2)
    _class_folders(tmp_path / "a" / "test", per_class=1)
    bench = load_file_benchmark("imagenet-a", tmp_path / "a", 28)
    assert (bench.num_classes, len(bench.train), len(bench.test)) == (200, 400, 200)


def test_missing_or_malformed_folder_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"one folder per class .* published at https://github.com/hendrycks/imagenet-r"):
        load_file_benchmark("imagenet-r", tmp_path / "nowhere", 28)
    _class_folders(tmp_path / "few", classes=3)
    with pytest.raises(DataError, match="found 3 folders"):
        load_file_benchmark("imagenet-a", tmp_path / "few", 28)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_file_benchmark("cifar100", tmp_path, 28)
    with pytest.raises(DataError, match="SDLORA_DATA"):
        load_file_benchmark("cub200", None, 28)


def test_cifar100_torchvision_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 500), ("test", 100)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    bench = load_file_benchmark("cifar100", tmp_path, 32)
    assert (bench.num_classes, len(bench.train), len(bench.test)) == (100, 500, 100)
    split = make_task_split(100, 10, 1993)
    assert len(split.task_data(bench.train, 3)) == 50  # 10 classes x 5 images


def test_domainnet_split_lists(tmp_path):
    domains = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
    for d in domains:
        for split, count in (("train", 2), ("test", 1)):
            lines = []
            for c in range(5):
                for i in range(count):
                    rel = f"{d}/class{c}/{split}{i}.jpg"
                    _png(tmp_path / rel, c)
                    lines.append(f"{rel} {c}")
            (tmp_path / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n")
    bench = load_file_benchmark("domainnet", tmp_path, 28)
    assert (bench.num_classes, len(bench.train), len(bench.test)) == (5, 60, 30)
    (tmp_path / "sketch_test.txt").unlink()
    with pytest.raises(DataError, match="sketch_test.txt missing"):
        load_file_benchmark("domainnet", tmp_path, 28)


def test_cub200_official_files(tmp_path):
    images, labels, splits = [], [], []
    for i in range(1, 13):
        c = (i - 1) % 4 + 1
        rel = f"{c:03d}.Bird_{c}/img_{i}.jpg"
        _png(tmp_path / "images" / rel, i)
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c}")
        splits.append(f"{i} {1 if i <= 8 else 0}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", splits),
                        ("classes.txt", [f"{c} {c:03d}.Bird_{c}" for c in range(1, 5)])):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    bench = load_file_benchmark("cub200", tmp_path, 28)
    assert (bench.num_classes, len(bench.train), len(bench.test)) == (4, 8, 4)
    assert sorted(bench.train.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_every_preset_builds():
    from sdlora.presets import EMBEDDED_PRESETS

    for name in EMBEDDED_PRESETS:  # the embedded benchmark's own: glyph-vit, 8 classes a task
        config = preset_config(name, method="sd-lora")
        assert config.backbone == "glyph-vit" and config.seed == 0
        assert {"glyphs40-5": 40, "glyphs80-10": 80}[name] // config.tasks == 8
    for name, (settings, reported) in PRESETS.items():
        if name in EMBEDDED_PRESETS:
            continue
        config = preset_config(name, method="sd-lora-kd", seed=1995)
        assert config.benchmark == settings["benchmark"] and config.tasks == settings["tasks"]
        assert config.backbone == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
        assert config.lr == 0.008 and config.batch_size == 128 and "sd-lora" in reported


def test_training_on_a_file_benchmark(tmp_path):
    from sdlora.train import train

    _class_folders(tmp_path / "r", per_class=3)
    cfg = TrainConfig(benchmark="imagenet-r", data_root=str(tmp_path / "r"), tasks=100,
                      epochs=1, batch_size=16, num_workers=0)
    from sdlora.train import load_data
    bench = load_data(cfg)
    trained = []

    class Stop(Exception):
        pass

    def stop_after_two(task, metrics):
        trained.append(metrics["accuracy_matrix"][-1])
        if task == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, out=tmp_path / "run", progress=False, benchmark=bench,
              on_task_end=stop_after_two)
    assert [len(r) for r in trained] == [1, 2]
    assert all(0 <= v <= 100 for r in trained for v in r)


def test_gpu_check_inputs_load_through_the_real_paths(tmp_path, monkeypatch):
    """scripts/gpu_check.py's generated weights and ImageNet-R folder load the way a GPU run
    loads them (timm's local-file path with the hub offline; the ImageNet-R folder loader)."""
    import importlib.util
    from pathlib import Path

    from sdlora.backbone import create_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    weights = gpu_check.make_weights("vit_tiny_patch16_224", tmp_path / "w.safetensors")
    model, _ = create_backbone("vit_tiny_patch16_224", weights=weights)
    from safetensors.torch import load_file
    saved = load_file(str(weights))
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    root = gpu_check.make_imagenet_r(tmp_path / "r", classes=200, per_class=3, size=32)
    bench = load_file_benchmark("imagenet-r", root, 28, split_seed=0)
    assert len(set(bench.train.labels.tolist()) | set(bench.test.labels.tolist())) == 200


@pytest.mark.parametrize("method", ["inflora", "l2p", "dualprompt", "coda-prompt",
                                    "hide-prompt"])
def test_baselines_train_through_a_preset_with_local_weights(tmp_path, method):
    """A preset's path for the baselines: ImageNet-R folder, local weights file, the timm tag's
    224-pixel input; stopped after the first task (one step of batch 128)."""
    import importlib.util
    from pathlib import Path

    from sdlora.train import load_data, load_model, train

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    weights = gpu_check.make_weights("vit_tiny_patch16_224", tmp_path / "w.safetensors")
    _class_folders(tmp_path / "r", per_class=2)
    cfg = preset_config("imagenet-r-20", method=method, backbone="vit_tiny_patch16_224",
                        weights=str(weights), data_root=str(tmp_path / "r"),
                        epochs=2 if method == "hide-prompt" else 1,  # its equal budget: 1 + 1
                        num_workers=0, device="cpu")
    assert (cfg.tasks, cfg.lr, cfg.batch_size) == (20, 0.008, 128)

    class Stop(Exception):
        pass

    def stop(task, metrics):
        raise Stop

    with pytest.raises(Stop):
        train(cfg, out=tmp_path / "run", progress=False, benchmark=load_data(cfg),
              on_task_end=stop)
    model = load_model(tmp_path / "run", 0)
    assert model.head.num_classes == 10 and type(model).__name__ == {
        "inflora": "InfLoRA", "l2p": "L2P", "dualprompt": "DualPrompt",
        "coda-prompt": "CODAPrompt", "hide-prompt": "HiDePrompt"}[method]
    from safetensors.torch import load_file
    saved = load_file(str(weights))["blocks.0.attn.qkv.weight"]
    if method != "inflora":  # prompt methods: a frozen backbone: the local weights as loaded
        assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, saved)
    else:  # InfLoRA merged task 1's B A into the k and v rows only
        q = slice(0, 192)
        assert torch.equal(model.backbone.blocks[0].attn.qkv.weight[q], saved[q])
        assert not torch.equal(model.backbone.blocks[0].attn.qkv.weight, saved)


# --- glyphs40 (sdlora.glyphs) --------------------------------------------------------------

def test_glyphs40_classes_sizes_and_tasks():
    from sdlora import glyphs
    from sdlora.data import load_benchmark

    bench = load_benchmark("glyphs40")
    assert bench.name == "glyphs40"
    assert bench.num_classes == 40 == len(set(bench.class_names))
    assert len({c for c, _ in glyphs.CLASSES}) == 80  # 80 different characters to choose from
    kept = [glyphs.CLASS_NAMES[i] for i in glyphs.class_subset(40).tolist()]
    assert bench.class_names == kept
    assert {n.split()[0] for n in kept} == {"Latin", "digit", "Greek", "Cyrillic"}
    assert bench.train.images.shape == (40 * 100, 3, 28, 28)
    assert bench.test.images.shape == (40 * 25, 3, 28, 28)
    assert torch.bincount(bench.train.labels).tolist() == [100] * 40
    assert torch.bincount(bench.test.labels).tolist() == [25] * 40
    assert 0 <= float(bench.train.images.min()) and float(bench.train.images.max()) <= 1
    split = make_task_split(bench.num_classes, 5, 0)
    assert split.classes_per_task == 8
    assert len(split.task_data(bench.test, 4)) == 8 * 25
    with pytest.raises(ValueError, match="classes=81 is not valid"):
        glyphs.class_subset(81)


def test_glyphs80_has_every_class_for_ten_tasks_of_eight():
    from sdlora import glyphs
    from sdlora.data import BENCHMARKS

    bench = BENCHMARKS["glyphs80"](per_class_train=2, per_class_test=1)  # small: the shape only
    assert bench.name == "glyphs80" and bench.class_names == list(glyphs.CLASS_NAMES)
    assert torch.bincount(bench.train.labels).tolist() == [2] * 80
    assert make_task_split(bench.num_classes, 10, 0).classes_per_task == 8


def test_glyphs_generation_is_deterministic_and_seeded():
    from sdlora import glyphs
    from sdlora.data import _glyphs

    small = dict(per_class_train=3, per_class_test=2)
    a, b = _glyphs(**small), _glyphs(**small)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    glyphs._atlas.cache_clear()  # drawn again from the font files: the same pixels
    c = _glyphs(**small)
    assert torch.equal(a.train.images, c.train.images)
    other = _glyphs(**small, seed=1)
    assert not torch.equal(a.train.images, other.train.images)
    one_style = _glyphs(**small, layers=1, styles=("outline",), classes=None)
    assert one_style.num_classes == 80 and one_style.name == "glyphs80"
    # train and test are different draws, not copies
    assert not any(torch.equal(a.test.images[i], a.train.images[j])
                   for i in range(0, len(a.test), 7) for j in range(len(a.train)))


def test_glyph_typefaces_pretraining_and_renditions_are_disjoint():
    from sdlora import glyphs

    pre = glyphs.font_files(glyphs.PRETRAIN_FONTS)
    ren = glyphs.font_files(glyphs.RENDITION_FONTS)
    assert len(pre) >= 30 and len(ren) >= 30
    assert not {p.stem for p in pre} & {p.stem for p in ren}
    atlas = glyphs.glyph_atlas(ren)
    assert atlas.shape == (len(ren), 80, 56, 56)
    ink = atlas.sum(dim=(2, 3))
    assert bool((ink > 20).all())  # every face draws every class (no empty glyph)
    # no two classes are drawn identically in any face
    flat = atlas.flatten(2)
    for f in range(0, len(ren), 9):
        d = torch.cdist(flat[f], flat[f]) + torch.eye(80) * 1e9
        assert float(d.min()) > 1.0


def test_glyph_styles_change_the_image_and_stay_in_range():
    from sdlora import glyphs

    atlas = glyphs.glyph_atlas(glyphs.font_files(glyphs.RENDITION_FONTS))
    g = torch.Generator().manual_seed(0)
    clean = glyphs.sample_views(atlas, torch.zeros(4, dtype=torch.long), torch.arange(4), g)
    for k, name in enumerate(glyphs.STYLES):
        out = glyphs.stylise(clean, torch.full((4,), k), g)
        assert out.shape == clean.shape and 0 <= float(out.min()) and float(out.max()) <= 1
        assert float((out - clean).abs().mean()) > 0.01, name


def test_missing_font_folder_names_the_package(tmp_path):
    from sdlora import glyphs

    with pytest.raises(glyphs.FontError, match="fonts-freefont-ttf"):
        glyphs.font_files(glyphs.RENDITION_FONTS, root=tmp_path)


def test_glyph_vit_ships_and_loads():
    from sdlora.backbone import BACKBONES, create_backbone, image_size

    assert BACKBONES["glyph-vit"].weights.exists() and image_size("glyph-vit") == 28
    model, _ = create_backbone("glyph-vit")
    embedded, _ = create_backbone("embedded-vit")  # glyph-vit is embedded-vit trained further
    assert not torch.equal(model.blocks[0].attn.qkv.weight, embedded.blocks[0].attn.qkv.weight)



def test_default_is_glyphs40_with_each_benchmark_its_own_foundation_model():
    assert (TrainConfig().benchmark, TrainConfig().backbone) == ("glyphs40", "glyph-vit")
    assert TrainConfig(benchmark="renditions20").backbone == "embedded-vit"
    assert TrainConfig(benchmark="digits").backbone == "embedded-vit"
    # an explicit backbone is kept, and the saved config holds the resolved name
    assert TrainConfig(benchmark="glyphs40", backbone="embedded-vit").backbone == "embedded-vit"
    assert TrainConfig.from_dict(TrainConfig(benchmark="renditions20").to_dict()).backbone \
        == "embedded-vit"
