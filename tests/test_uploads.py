"""Uploads cannot hurt the server or other users: every malformed checkpoint of issue 12 is
refused at upload with one message naming the file and the field, nothing is written to the
uploads folder, no model is built for a refused one, no dataset is downloaded; a malformed
checkpoint already on disk is listed among the scan's errors (as text) and reaches no page;
every page still renders; user-supplied text is shown as itself, never as markup; the
upload limit is one number (config.toml = the server = the widget)."""
from __future__ import annotations

import copy
import json
import re
import struct
import tomllib
from pathlib import Path

import pytest

from normshape_app import ui, uploads
from _apptest import APP, open_app

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints"
SOURCE = SHIPPED / "moons" / "moons-mlp-pgd-adv-only-eps0.12-s0"
PAGES = [None, "app_pages/train.py", "app_pages/ratios.py", "app_pages/moving_target.py",
         "app_pages/decision_boundaries.py", "app_pages/compare.py",
         "app_pages/confoundings.py"]
INJECTIONS = ["![x](http://example.com/a.png)", "[link](http://evil)",
              "<img src=x onerror=alert(1)>", "**bold**", "www.evil.com a@evil.com"]
# What must never reach Markdown as is (GitHub-flavoured Markdown links bare addresses too)
RAW = ("![x](", "[link](", "<img", "**bold**", "http://", "www.", "a@evil")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A valid moons checkpoint that no folder holds yet: (weights bytes, metadata dict)."""
    import torch

    from normshape_core.training.checkpoints import save_checkpoint
    from normshape_core.blocks.models import build_model

    meta = json.loads((SOURCE / "model.json").read_text())
    torch.manual_seed(123)
    out = tmp_path_factory.mktemp("fresh")
    keep = {k: meta[k] for k in ("config", "input_shape", "num_classes", "classes", "dataset")}
    save_checkpoint(out, build_model("mlp", (2,), 2), {**keep, "run_name": "fresh"})
    return (out / "model.safetensors").read_bytes(), json.loads((out / "model.json").read_text())


def with_weights(meta, weights):
    """The metadata, its SHA-256 and size set to those of ``weights``."""
    import hashlib

    return {**meta, "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "weights_bytes": len(weights)}


def safetensors_with_header(header) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * 16


def mutate(**config):
    def f(meta):
        for k, v in config.items():
            if v is KeyError:
                meta["config"].pop(k)
            else:
                meta["config"][k] = v
    return f


def image_set(name, shape):
    def f(meta):
        meta["config"].update(dataset=name, model="small_cnn")
        meta.update(dataset=name, input_shape=shape, num_classes=10,
                    classes=[str(i) for i in range(10)])
    return f


# (case, change to the metadata, or (weights bytes)) -> the field the message names
MALFORMED = {
    "config missing keys": (mutate(shaping=KeyError, ratio=KeyError), "config.shaping"),
    "shaping sideways": (mutate(shaping="sideways"), "config.shaping"),
    "ratio 1:x": (mutate(ratio="1:x"), "config.ratio"),
    "eps null": (mutate(eps=None), "config.eps"),
    "model_depth 100000": (mutate(model_depth=100000), "config.model_depth"),
    "config a list": (lambda m: m.update(config=[1, 2, 3]), "config"),
    "eps a string": (mutate(eps="0.1"), "config.eps"),
    "eps infinite": (mutate(eps=float("inf")), "config.eps"),
    "wide resnet too large": (lambda m: (image_set("digits", [1, 8, 8])(m), mutate(
        model="wide_resnet", model_depth=994, model_width=1000)(m)), "parameters"),
    "mnist, not on this server": (image_set("mnist", [1, 28, 28]), "config.dataset"),
    "cifar10, not on this server": (image_set("cifar10", [3, 32, 32]), "config.dataset"),
    "input shape of another dataset": (lambda m: m.update(input_shape=[1, 8, 8]),
                                       "input_shape"),
    "header a JSON list": (safetensors_with_header([1, 2, 3]), "model.safetensors"),
    "integer data_offsets": (safetensors_with_header(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": 8}}), "model.safetensors"),
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(SHIPPED))
    monkeypatch.setenv("NORMSHAPE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_WARM_UMAP", "0")
    import torch
    monkeypatch.setenv("NORMSHAPE_APP_THREADS", str(torch.get_num_threads()))
    return tmp_path / "home"


@pytest.fixture
def offline(monkeypatch):
    """MNIST and CIFAR-10 absent whatever this machine holds; a download attempt is recorded
    (the list returned) and fails."""
    from normshape_core.blocks import data

    real = data.locate_files
    monkeypatch.setattr(data, "locate_files", lambda name, root=None, **kw: (
        None, None, []) if name in ("mnist", "cifar10") else real(name, root, **kw))

    attempts = []

    def no_download(*a, **kw):
        attempts.append(a)
        raise AssertionError("a dataset download was attempted")

    monkeypatch.setattr(data, "_download_with_torchvision", no_download)
    return attempts


def open_page(page=None, query=None):
    return open_app(page, query)


def upload(at, weights, meta: bytes, wname="model.safetensors", mname="model.json"):
    at.file_uploader[0].set_value(
        [(wname, weights, "application/octet-stream"), (mname, meta, "application/json")]).run()
    return at


def plain(text: str) -> str:
    """Markdown-escaped text as the reader sees it (escapes read, word joiners invisible)."""
    return re.sub(r"\\(.)", r"\1", str(text)).replace("\u2060", "")


def live_markup(text: str):
    """The sequences of RAW that Markdown would read in ``text``: escaped characters
    (backslash + character) do not count."""
    bare = re.sub(r"\\.", "\0", str(text))
    return [raw for raw in RAW if raw in bare]


def markdown_texts(at):
    """Every element rendered as Markdown: markdown, captions, alerts, tab labels."""
    return ([m.value for m in at.markdown] + [c.value for c in at.caption] +
            [e.value for e in list(at.error) + list(at.warning) + list(at.info) +
             list(at.success)] + [t.label for t in at.tabs])


def stored(home: Path):
    up = home / "uploads"
    return sorted(p.name for p in up.iterdir()) if up.exists() else []


def test_each_malformed_upload_is_refused_with_one_message(home, fresh, offline):
    weights, meta = fresh
    at = open_page("app_pages/compare.py")
    for case, (change, field) in MALFORMED.items():
        if isinstance(change, bytes):
            w, m = change, with_weights(meta, change)
        else:
            w, m = weights, copy.deepcopy(meta)
            change(m)
        upload(at, w, json.dumps(m).encode())
        assert not at.exception, (case, [e.value for e in at.exception])
        errors = [plain(e.value) for e in at.error]
        assert len(errors) == 1 and errors[0].startswith("Not accepted: "), (case, errors)
        assert field in errors[0] and "\n" not in errors[0], (case, errors[0])
        assert "/tmp" not in errors[0] and "Traceback" not in errors[0], (case, errors[0])
        assert stored(home) == [], (case, stored(home))
    assert not at.success and offline == []


def test_a_huge_model_is_refused_before_any_model_is_built(home, fresh, monkeypatch):
    """A 40 KB metadata naming model_depth 100000 (or a wide ResNet of 16 trillion
    parameters) is refused by the schema: no model constructor is ever called."""
    from normshape_core.training import checkpoints
    from normshape_core.blocks import models

    weights, meta = fresh
    built = []

    def spy(name):
        def f(*a, **kw):
            built.append(name)
            raise AssertionError(f"{name} was called")
        return f

    monkeypatch.setattr(checkpoints, "build_from_meta", spy("build_from_meta"))
    monkeypatch.setattr(models, "build_model", spy("build_model"))
    for cls in (models.MLP, models.SmallCNN, models.PreActResNet18, models.WideResNet):
        monkeypatch.setattr(cls, "__init__", spy(cls.__name__))
    for change in (mutate(model_depth=100000), mutate(model_width=10 ** 9),
                   MALFORMED["wide resnet too large"][0]):
        m = copy.deepcopy(meta)
        change(m)
        m["padding"] = "x" * 40_000  # the 40 KB upload of the issue
        with pytest.raises(ValueError, match=r"^model\.json: config"):
            ui.import_checkpoint(weights, json.dumps(m).encode())
    assert built == [] and stored(home) == []


def test_a_malformed_checkpoint_on_disk_reaches_no_page(home, fresh):
    """Checkpoints written before the schema (or by hand) into the uploads folder: the scan
    lists each with its folder and field, as text, and every page renders without them."""
    weights, meta = fresh
    up = home / "uploads"
    for case in ("config missing keys", "shaping sideways", "ratio 1:x", "eps null",
                 "model_depth 100000", "config a list"):
        change, _ = MALFORMED[case]
        m = copy.deepcopy(meta)
        change(m)
        d = up / re.sub(r"\W+", "-", case)
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(weights)
        (d / "model.json").write_text(json.dumps(m))
    bad = sorted(p.name for p in up.iterdir())
    at = open_page()
    assert not at.exception and not at.error
    listing = "\n".join(c.value for c in at.code)
    for name in bad:
        line = next(x for x in listing.splitlines() if f"your uploads: {name}/" in x)
        assert re.search(r"model\.json: (config|input_shape)", line), line
    assert str(home) not in listing
    for page in PAGES[1:]:
        at = open_page(page, {"db_map": "PCA"})
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        for w in list(at.selectbox) + list(at.multiselect):
            assert not set(bad) & set(map(str, w.options)), (page, w.key)


def test_markup_in_uploads_is_shown_as_text(home, fresh):
    weights, meta = fresh
    at = open_page("app_pages/compare.py")
    for text in INJECTIONS:  # refused: the message quotes the value, escaped
        m = copy.deepcopy(meta)
        m["config"]["shaping"] = text
        upload(at, weights, json.dumps(m).encode(), mname=f"{text}.json")
        [error] = [e.value for e in at.error]
        assert text in plain(error), error  # the reader sees the text itself
        assert not live_markup(error), error
    # accepted: markup in the run name, the file names and free metadata strings
    m = copy.deepcopy(meta)
    m.update(run_name=" ".join(INJECTIONS), created=" ".join(INJECTIONS))
    upload(at, weights, json.dumps(m).encode(), wname=f"{INJECTIONS[0]}.safetensors",
           mname=f"{INJECTIONS[1]}.json")
    assert not at.exception and not at.error, [e.value for e in at.error]
    [name] = stored(home)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert any(name in s.value for s in at.success)
    # a checkpoint folder whose metadata carries markup: Home lists it as text
    d = home / "uploads" / "evil"
    d.mkdir()
    (d / "model.safetensors").write_bytes(weights)
    m["config"]["shaping"] = INJECTIONS[2]
    (d / "model.json").write_text(json.dumps(m))
    pages = [open_page(), open_page("app_pages/compare.py", {"cmp": [name, SOURCE.name]})]
    assert any(INJECTIONS[2] in c.value for c in pages[0].code)  # a text element
    for at in pages:
        assert not at.exception
        for text in markdown_texts(at):
            assert not live_markup(text), text


def test_md_escape_leaves_no_markup_and_reads_back_as_the_text():
    for text in INJECTIONS + [" ".join(INJECTIONS), "https://x.org/a_b", "moons-mlp 1:3 0.12"]:
        shown = ui.md_escape(text)
        assert plain(shown) == text
        assert not live_markup(shown), shown
        bare = re.sub(r"\\.", "\0", shown)
        assert "https://" not in bare and "_" not in bare, shown


def test_upload_limit_is_one_number(home, fresh, monkeypatch):
    """config.toml's maxUploadSize is what Streamlit serves with (read as the main script's
    configuration), what the widget states and what import_checkpoint enforces; over it, one
    message."""
    from streamlit import config

    limit = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())[
        "server"]["maxUploadSize"]
    saved = config._main_script_path
    try:
        config._main_script_path = APP
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.maxUploadSize") == limit
        assert ui.max_upload_mb() == limit
    finally:
        config._main_script_path = saved
        config.get_config_options(force_reparse=True)
    at = open_page("app_pages/compare.py")
    [box] = at.get("file_uploader")
    assert box.proto.max_upload_size_mb == ui.max_upload_mb()
    assert any(f"up to {ui.max_upload_mb()} MB per file" in m.value for m in at.markdown)
    weights, meta = fresh
    monkeypatch.setattr(ui, "max_upload_mb", lambda: 1)  # the widget (the page asks ui)
    monkeypatch.setattr(uploads, "max_upload_mb", lambda: 1)  # the check (import_checkpoint)
    at = open_page("app_pages/compare.py")  # a new limit is a new widget
    assert at.get("file_uploader")[0].proto.max_upload_size_mb == 1
    big = weights + b"\0" * (1 << 20)
    upload(at, big, json.dumps(with_weights(meta, big)).encode())
    errors = [plain(e.value) for e in at.error]
    assert errors == ["Not accepted: weights file is larger than 1 MB"], errors
    assert stored(home) == []


# ---------------------------------------------------------------- the schema itself (core)
def test_every_shipped_checkpoint_passes_the_schema():
    from normshape_core.training.checkpoints import find_checkpoints

    infos, errors = find_checkpoints(SHIPPED)
    assert errors == [] and len(infos) == len(list(SHIPPED.glob("*/*/model.json"))) >= 30


def test_each_malformed_metadata_is_one_error_naming_the_file_and_field(tmp_path, fresh):
    """Through read_meta, as the CLI, the pages and the scan load checkpoints."""
    from normshape_core.training.checkpoints import CheckpointError, find_checkpoints, read_meta

    weights, meta = fresh
    for case, (change, field) in MALFORMED.items():
        if isinstance(change, bytes) or case.endswith("not on this server"):
            continue  # weights, and datasets: checked when loading / at upload
        m = copy.deepcopy(meta)
        change(m)
        d = tmp_path / re.sub(r"\W+", "-", case)
        d.mkdir()
        (d / "model.json").write_text(json.dumps(m))
        with pytest.raises(CheckpointError) as e:
            read_meta(d)
        assert str(e.value).startswith(f"checkpoint {d / 'model.json'}: "), e.value
        assert field in e.value.problem and "\n" not in str(e.value), (case, e.value)
    for extra, ok in (({"stopped": {"epoch": 3, "epochs": 30}}, True),
                      ({"stopped": {"epoch": 31, "epochs": 30}}, False),
                      ({"classes": ["upper moon", "<b>x</b>"]}, False),
                      ({"final_metrics": {"test/clean_acc_pn": "0.9"}}, False)):
        d = tmp_path / "extra"
        d.mkdir(exist_ok=True)
        (d / "model.json").write_text(json.dumps({**meta, **extra}))
        if ok:
            assert read_meta(d)["stopped"] == extra["stopped"]
        else:
            with pytest.raises(CheckpointError, match=f"{next(iter(extra))}: "):
                read_meta(d)
    infos, errors = find_checkpoints(tmp_path)
    assert infos == [] and len(errors) == len(list(tmp_path.glob("*/model.json")))


@pytest.mark.parametrize("model,shape,kw", [
    ("mlp", (2,), {}), ("mlp", (2,), dict(width=7, depth=1)), ("mlp", (1, 8, 8), dict(depth=5)),
    ("small_cnn", (1, 8, 8), {}), ("small_cnn", (1, 28, 28), dict(width=16)),
    ("small_cnn", (3, 32, 32), dict(width=5)), ("preact_resnet18", (3, 32, 32), dict(width=8)),
    ("preact_resnet18", (1, 28, 28), dict(width=4)), ("wide_resnet", (3, 32, 32),
                                                       dict(depth=10, width=2)),
    ("wide_resnet", (1, 28, 28), dict(depth=16, width=1))])
def test_parameter_count_from_the_config_equals_the_built_model(model, shape, kw):
    from normshape_core.training.checkpoints import parameter_count
    from normshape_core.settings.config import TrainConfig
    from normshape_core.blocks.models import build_model
    from normshape_core.training.trainer import model_kwargs

    cfg = TrainConfig(model=model, model_width=kw.get("width"), model_depth=kw.get("depth"))
    built = build_model(model, shape, 10, **model_kwargs(cfg))
    assert parameter_count(model, shape, 10, kw.get("width"), kw.get("depth")) == sum(
        p.numel() for p in built.parameters())


def test_dataset_shapes_are_those_of_the_datasets():
    from normshape_core.training.checkpoints import DATASET_SHAPES
    from normshape_core.blocks.data import DATASETS, load_dataset

    assert set(DATASET_SHAPES) == set(DATASETS)
    for name in [n for n, spec in DATASETS.items() if spec.offline]:
        d = load_dataset(name)
        assert DATASET_SHAPES[name] == (tuple(d.input_shape), d.num_classes)


def test_pages_never_download_a_dataset(home, offline):
    """An MNIST checkpoint already in the uploads folder on a server without MNIST's files:
    every page that uses it says the dataset is not available offline (one message), and no
    download is attempted (``offline`` fails the test on any)."""
    import torch

    from normshape_core.training.checkpoints import save_checkpoint
    from normshape_core.blocks.models import build_model

    meta = json.loads((SOURCE / "model.json").read_text())
    cfg = {**meta["config"], "dataset": "mnist", "model": "small_cnn", "eps": 0.3,
           "model_width": 4}
    torch.manual_seed(0)
    save_checkpoint(home / "uploads" / "mnist-run", build_model("small_cnn", (1, 28, 28), 10,
                                                                 channels=4),
                    {"config": cfg, "input_shape": [1, 28, 28], "num_classes": 10,
                     "dataset": "mnist", "run_name": "mnist-run"})
    for page, query in (("app_pages/compare.py", {"cmp": ["mnist-run", SOURCE.name]}),
                        ("app_pages/moving_target.py", {"mt_ckpt": "mnist-run"}),
                        ("app_pages/decision_boundaries.py", {"db_ckpt": "mnist-run",
                                                              "db_map": "PCA"})):
        at = open_page(page, query)
        assert not at.exception, (page, [e.value for e in at.exception])
        errors = [plain(e.value) for e in at.error]
        assert len(errors) == 1 and "not available offline" in errors[0], (page, errors)
    assert offline == []  # no download attempted


def test_weights_that_break_the_reader_give_one_message_on_a_page(home, fresh):
    """A checkpoint on disk whose metadata is valid but whose safetensors header is a JSON
    list (its SHA-256 matching): the page that loads it shows one message, no traceback."""
    _, meta = fresh
    weights = MALFORMED["header a JSON list"][0]
    d = home / "uploads" / "bad-header"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "model.json").write_text(json.dumps(with_weights(meta, weights)))
    at = open_page("app_pages/moving_target.py", {"mt_ckpt": "bad-header"})
    assert not at.exception, [e.value for e in at.exception]
    [error] = [plain(e.value) for e in at.error]
    # (names the folder, or the weights file when the reader itself reports the problem)
    assert error.startswith("This cannot be shown: checkpoint ") and "\n" not in error, error


@pytest.mark.parametrize("kind", ["nan", "inf", "int"])
def test_weights_that_cannot_be_a_trained_model_are_refused(home, fresh, kind):
    """NaN, all-inf or integer-typed weights with matching metadata would evaluate silently
    as a constant classifier (accuracy 0.5 on moons): refused when read, nothing stored."""
    import torch
    from safetensors.torch import load, save

    weights, meta = fresh
    tensors = load(weights)
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = (torch.full_like(t, float(kind)) if kind != "int"
                             else t.round().to(torch.int64))
    bad = save(tensors)
    with pytest.raises(ValueError, match=r"^model\.safetensors: tensor '.*' (holds|is int64)"):
        ui.import_checkpoint(bad, json.dumps(with_weights(meta, bad)).encode(),
                             "model.safetensors")
    assert stored(home) == []


def test_a_checkpoint_folders_three_files_name_the_unexpected_one_and_the_box_clears(home,
                                                                                      fresh):
    """Dropping a whole checkpoint folder (weights, model.json, model.eval.json): the message
    names the file that is not expected, nothing is stored, and the box is empty again (the
    next attempt starts from nothing instead of piling files up)."""
    weights, meta = fresh
    at = open_page("app_pages/compare.py")
    at.file_uploader[0].set_value(
        [("model.safetensors", weights, "application/octet-stream"),
         ("model.json", json.dumps(meta).encode(), "application/json"),
         ("model.eval.json", b'{"format": "normshape-evaluation-cache", "entries": {}}',
          "application/json")]).run()
    assert not at.exception
    [error] = [plain(e.value) for e in at.error]
    assert error.startswith("Not accepted: ") and "model.eval.json is not expected" in error
    assert "model.json is not" not in error and "model.safetensors is not" not in error
    assert stored(home) == []
    [box] = at.file_uploader
    assert not box.value, "the upload box keeps the refused files"
    upload(at, weights, json.dumps(meta).encode())  # the pair alone: accepted
    assert not at.error and any("Accepted and stored" in s.value for s in at.success)
    assert len(stored(home)) == 1 and not at.file_uploader[0].value


def test_upload_pair_picks_the_weights_and_their_metadata():
    assert uploads.upload_pair(["model.safetensors", "model.json"]) == (0, 1, [])
    assert uploads.upload_pair(["model.eval.json", "model.json", "model.safetensors"]) == (
        2, 1, ["model.eval.json"])
    assert uploads.upload_pair(["run.json", "model.safetensors"]) == (1, 0, [])
    w, m, extra = uploads.upload_pair(["a.safetensors", "b.safetensors", "a.json"])
    assert (w, extra) == (None, ["a.safetensors", "b.safetensors"])
    w, m, extra = uploads.upload_pair(["x.safetensors", "a.json", "b.json"])
    assert m is None and extra == ["a.json", "b.json"]
