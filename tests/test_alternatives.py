"""The other BN fixes as units of the training loop and as classifier views: dual BN routes
clean rows through the clean set and adversarial rows through the adversarial set (its
statistics after one step checked against a hand computation), models without batch
statistics give PN = BN = shaped logits, test-time statistics change only the statistics,
every view equals its inference forward row for row, and training repeats bit for bit."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normshape_core.inference import alternatives as alt
from normshape_core.training.checkpoints import (CheckpointError, load_checkpoint, parameter_count,
                                                 validate_meta)
from normshape_core.settings.config import ConfigError, TrainConfig, model_kwargs
from normshape_core.blocks.models import DualBatchNorm, build_model
from normshape_core.blocks.norms import (ADV, CLEAN, NormMode, bn_modules, dual_route, norm_mode)
from normshape_core.training.objectives import adaptive_gradient_clip_
from normshape_core.inference.shaping import make_reference_pool, parse_classifier
from normshape_core.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
MOONS_PGD = ROOT / "checkpoints" / "moons" / "moons-mlp-pgd-adv-only-eps0.12-s0"


def _cfg(dataset="moons", **kw):
    base = dict(dataset=dataset, epochs=1, eval_samples=0, seed=0)
    if dataset == "digits":
        base.update(n_train=256, batch_size=32, steps=2)
    return TrainConfig(**{**base, **kw})


# ====================================================================== dual BN in training
def _hand_dual_step(state, x_rows, k, depth):
    """Running statistics of each dual-BN layer of the MLP after one training forward of
    ``x_rows`` (first k rows clean), computed by hand from the weights before the step:
    {layer index: {"clean": (mean, var), "adv": (mean, var)}} (momentum 0.1, unbiased var)."""
    h = (x_rows.flatten(1) - state["norm.mean"]) / state["norm.std"]
    out = {}
    for i in range(depth):
        z = h @ state[f"features.{3 * i}.weight"].T
        parts, stats = [], {}
        for name, rows in ((CLEAN, z[:k]), (ADV, z[k:])):
            p = f"features.{3 * i + 1}.{name}."
            stats[name] = (0.9 * state[p + "running_mean"] + 0.1 * rows.mean(0),
                           0.9 * state[p + "running_var"] + 0.1 * rows.var(0, unbiased=True))
            parts.append(F.batch_norm(rows, None, None, state[p + "weight"], state[p + "bias"],
                                      True, 0.0, 1e-5))
        out[i] = stats
        h = F.relu(torch.cat(parts))
    return out


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_dual_bn_step_routes_clean_rows_to_the_clean_set(moons, method):
    trainer = Trainer(_cfg(norm="dual_bn", method=method, model_depth=2, batch_size=16,
                           steps=3, max_steps=1), moons)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    crafted = []
    craft = trainer.craft
    trainer.craft = lambda x, y: crafted.append(craft(x, y)) or crafted[-1]
    calls = {CLEAN: 0, ADV: 0}
    duals = [m for m in trainer.model.modules() if isinstance(m, DualBatchNorm)]
    for name in calls:  # forwards seen by each set of the first layer, in crafting
        getattr(duals[0], name).register_forward_pre_hook(
            lambda m, a, name=name: calls.__setitem__(name, calls[name] + 1))
    x, y = moons.x_train[:16], moons.y_train[:16]
    trainer.train_step(x, y)
    batch = crafted[0]
    assert batch.n_clean == 16 and len(batch.x) == 32
    assert torch.equal(batch.x[:16], x) and torch.equal(batch.y, torch.cat([y, y]))
    assert (batch.x[16:] - x).abs().max() > 0  # the adversarial version follows
    # crafting: the attack (3 steps) through the adversarial set; TRADES' target through the
    # clean set once; the training forward through both
    assert calls[ADV] == 3 + 1
    assert calls[CLEAN] == (1 if method == "trades" else 0) + 1
    expected = _hand_dual_step(before, batch.x, 16, depth=2)
    sd = trainer.model.state_dict()
    for i, stats in expected.items():
        for name, (mean, var) in stats.items():
            p = f"features.{3 * i + 1}.{name}."
            assert torch.allclose(sd[p + "running_mean"], mean, atol=1e-5), (i, name)
            assert torch.allclose(sd[p + "running_var"], var, atol=1e-5), (i, name)
            assert int(sd[p + "num_batches_tracked"]) == 1  # attack steps update nothing
    # the routing matters: the clean set's statistics are not those of the whole batch
    whole = batch.x.flatten(1)
    z = ((whole - before["norm.mean"]) / before["norm.std"]) @ before["features.0.weight"].T
    assert not torch.allclose(sd["features.1.clean.running_mean"], 0.1 * z.mean(0), atol=1e-4)


def test_dual_route_is_scoped_and_routes_rows(moons):
    model = build_model("mlp", (2,), 2, norm="dual_bn").eval()
    with torch.no_grad():  # two different sets
        for m in model.modules():
            if isinstance(m, DualBatchNorm):
                m.clean.weight.mul_(2.0)
                m.clean.running_mean.add_(0.3)
    x = moons.x_test[:8]
    with norm_mode(model, NormMode.PN):
        with dual_route(model, CLEAN):
            clean = model(x)
        with dual_route(model, ADV):
            adv = model(x)
        with dual_route(model, 3):  # rows 0-2 clean, 3-7 adversarial; PN: rows independent
            split = model(x)
        default = model(x)
    assert not torch.allclose(clean, adv)
    assert torch.equal(split[:3], clean[:3]) and torch.equal(split[3:], adv[3:])
    assert torch.equal(default, adv)  # outside a block: the adversarial set
    assert all(m.route == ADV for m in model.modules() if isinstance(m, DualBatchNorm))
    with pytest.raises(ValueError):
        with dual_route(model, "sideways"):
            pass


# ====================================================================== no batch statistics
@pytest.mark.parametrize("dataset,model,norm", [("moons", "mlp", "ln"),
                                                ("digits", "small_cnn", "gn"),
                                                ("digits", "small_cnn", "nf")])
def test_models_without_batch_statistics_give_pn_equal_bn_equal_shaped(
        dataset, model, norm, moons, digits):
    data = moons if dataset == "moons" else digits
    extra = {"agc_clip": 0.01} if norm == "nf" else {}
    result = train(_cfg(dataset, norm=norm, max_steps=2, **extra), dataset=data)
    net = result.model
    assert not bn_modules(net)
    assert not [n for n, _ in net.named_buffers() if "running" in n or "batches" in n]
    pool = make_reference_pool(data, 100, 0)
    x = data.x_test[:40]
    with torch.no_grad():
        plain = net.eval()(x)
        outs = {spec: parse_classifier(spec, net, pool)(x) for spec in ("pn", "bn", "shaped:1:9")}
        outs["own"] = alt.make_classifier("own", net, pool)(x)
    for spec, out in outs.items():
        assert torch.allclose(out, plain, atol=1e-5), spec
        assert torch.equal(out.argmax(1), plain.argmax(1)), spec
    with pytest.raises(ConfigError, match="no batch statistics|dual BN"):
        alt.make_classifier("tts", net, pool)


# ====================================================================== test-time statistics
def test_test_time_statistics_change_only_the_statistics(moons):
    model, _ = load_checkpoint(MOONS_PGD)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pool = make_reference_pool(moons, 64, 0)
    view = alt.make_classifier("tts", model, pool)
    after = view.model.state_dict()
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k  # the trained model is untouched
        if k.endswith(("running_mean", "running_var")):
            assert not torch.equal(after[k], v), k
        else:
            assert torch.equal(after[k], v), k
    # the statistics are PyTorch's own re-estimation on the 32 samples (one batch, momentum
    # None: the cumulative average of one batch)
    ref = copy.deepcopy(model)
    for bn in bn_modules(ref):
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad(), norm_mode(ref, NormMode.BN_UPDATE):
        ref(pool[:32])
    for k, v in ref.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(after[k], v, atol=1e-5), k
    mixed = alt.make_classifier("tts:mix=0.5", model, pool).model.state_dict()
    for k in after:
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(mixed[k], 0.5 * after[k] + 0.5 * before[k], atol=1e-5), k


def test_poisoned_re_estimation_set_replaces_its_last_rows(moons):
    model, _ = load_checkpoint(MOONS_PGD)
    pool = make_reference_pool(moons, 64, 0)
    view = alt.make_classifier("tts:n=8:poison=0.25", model, pool)
    assert view.n_poison == 2 and "2 poisoned" in view.describe()
    assert torch.equal(view.samples[:6], pool[:6])
    assert not torch.equal(view.samples[6:], pool[6:8])
    assert view.samples.min() >= 0 and view.samples.max() <= 1
    clean = alt.make_classifier("tts:n=8", model, pool).model.state_dict()
    poisoned = view.model.state_dict()
    assert not torch.equal(clean["features.1.running_mean"], poisoned["features.1.running_mean"])
    again = alt.make_classifier("tts:n=8:poison=0.25", model, pool)  # deterministic
    assert torch.equal(again.samples, view.samples)


# ====================================================================== views = forwards
def test_each_view_equals_its_inference_forward_row_for_row(moons):
    x = moons.x_test[:30]
    pool = make_reference_pool(moons, 128, 0)
    dual = train(_cfg(norm="dual_bn", max_steps=3)).model
    ln = train(_cfg(norm="ln", max_steps=3)).model
    bn_model, _ = load_checkpoint(MOONS_PGD)
    tts = alt.make_classifier("tts", bn_model, pool)
    cases = []
    for branch in (CLEAN, ADV):
        view = alt.make_classifier(f"dual:{branch}", dual, pool)
        with torch.no_grad(), dual_route(dual, branch), norm_mode(dual, NormMode.PN):
            cases.append((view, dual(x)))
    with torch.no_grad():
        cases.append((alt.make_classifier("own", ln, pool), ln.eval()(x)))
        cases.append((tts, tts.model.eval()(x)))
    for view, expected in cases:
        assert view.rows_independent
        with torch.no_grad():
            got = view(x)
            rows = torch.cat([view(x[i:i + 1]) for i in range(len(x))])
        assert torch.equal(got, expected), view.describe()
        assert torch.allclose(rows, got, atol=1e-6), view.describe()
        assert view.describe() == alt.describe_spec(
            {"dual BN [clean norms]": "dual:clean", "dual BN [adv norms]": "dual:adv"}.get(
                view.describe(), "own" if isinstance(view, alt.OwnNormsClassifier) else "tts"),
            "ln")
    clean, adv = (alt.make_classifier(f"dual:{b}", dual, pool) for b in (CLEAN, ADV))
    assert clean.transfer_from == ("dual:adv",) and adv.transfer_from == ("dual:clean",)
    assert tts.transfer_from == ("pn",)
    assert alt.make_classifier("own", ln, pool).transfer_from == ()
    assert [alt.make_classifier(s, bn_model, pool).transfer_from for s in
            ("pn", "bn", "shaped:1:9")] == [(), ("pn",), ("pn", "bn")]
    with torch.no_grad():
        assert not torch.equal(clean(x), adv(x))  # two classifiers


# ====================================================================== bit for bit
@pytest.mark.parametrize("dataset,norm,method", [("moons", "dual_bn", "pgd"),
                                                 ("moons", "ln", "pgd"),
                                                 ("digits", "dual_bn", "trades"),
                                                 ("digits", "gn", "pgd"),
                                                 ("digits", "nf", "pgd")])
def test_training_repeats_bit_for_bit(dataset, norm, method, moons, digits):
    data = moons if dataset == "moons" else digits
    cfg = _cfg(dataset, norm=norm, method=method, max_steps=4,
               agc_clip=0.01 if norm == "nf" else None)
    a, b = train(cfg, dataset=data).model, train(cfg, dataset=data).model
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_adaptive_gradient_clip_scales_only_units_above_the_threshold():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # unit norms 5, 1
    w.grad = torch.tensor([[0.3, 0.4], [0.0, 0.001]])  # 0.5 > 0.1 * 5; 0.001 < 0.1 * 1
    b = torch.nn.Parameter(torch.tensor([0.0, 0.0]))  # norm 0: the floor 1e-3 applies
    b.grad = torch.tensor([1.0, 0.0])
    adaptive_gradient_clip_([w, b], 0.1)
    assert torch.allclose(w.grad[0], torch.tensor([0.3, 0.4]) * (0.5 / 0.5))
    assert torch.allclose(w.grad[0].norm(), torch.tensor(0.5))
    assert torch.equal(w.grad[1], torch.tensor([0.0, 0.001]))
    assert torch.allclose(b.grad.norm(), torch.tensor(1e-4))
    w.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norm 5 > 0.1 * 5 -> scaled to 0.5
    adaptive_gradient_clip_([w], 0.1)
    assert torch.allclose(w.grad[0].norm(), torch.tensor(0.5))


# ====================================================================== settings and schema
def test_settings_refuse_what_does_not_fit():
    for kw, message in ((dict(norm="dual_bn", shaping="attack+train"), "shaping none"),
                        (dict(norm="dual_bn", method="natural"), "adversarial method"),
                        (dict(norm="nf"), "no nf variant"), (dict(norm="gn"), "no gn variant"),
                        (dict(norm="sideways"), "unknown norm"),
                        (dict(agc_clip=0.0), "agc-clip must be > 0"),
                        (dict(agc_clip=-1.0), "agc-clip")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(dataset="moons", **kw).resolved()
    bn = TrainConfig(dataset="moons").resolved()
    assert "norm" not in bn.run_name() and "agc" not in bn.run_name()
    assert TrainConfig(dataset="moons", norm="dual_bn").resolved().run_name() == \
        "moons-mlp-dualbn-pgd-clean-adv-eps0.12-s0"
    assert bn.fingerprint() != TrainConfig(dataset="moons", norm="ln").resolved().fingerprint()


@pytest.mark.parametrize("model,shape,norm", [("mlp", (2,), "dual_bn"), ("mlp", (2,), "ln"),
                                              ("small_cnn", (1, 8, 8), "dual_bn"),
                                              ("small_cnn", (1, 28, 28), "gn"),
                                              ("small_cnn", (1, 28, 28), "nf")])
def test_parameter_count_of_each_norm_equals_the_built_model(model, shape, norm):
    cfg = TrainConfig(model=model, norm=norm)
    built = build_model(model, shape, 10, **model_kwargs(cfg))
    assert parameter_count(model, shape, 10, norm=norm) == sum(
        p.numel() for p in built.parameters())


def test_the_schema_checks_the_norm():
    import json

    meta = json.loads((MOONS_PGD / "model.json").read_text())
    ok = copy.deepcopy(meta)
    ok["config"].update(norm="ln")
    assert validate_meta(ok)["config"]["norm"] == "ln"
    for change, field in ((dict(norm="sideways"), "config.norm"), (dict(norm="nf"), "config.norm"),
                          (dict(norm=3), "config.norm"), (dict(agc_clip="x"), "config.agc_clip"),
                          (dict(agc_clip=-0.5), "config"),
                          (dict(norm="dual_bn", shaping="train", ratio="1:3"), "config")):
        bad = copy.deepcopy(meta)
        bad["config"].update(change)
        with pytest.raises(CheckpointError, match=field):
            validate_meta(bad)


# ====================================================================== specs
def test_specs_are_checked_and_canonical():
    assert alt.parse_classify("PN, dual:adv,tts:n=32:mix=1, tts:poison=0.125,own,shaped:1:9") == \
        ["pn", "dual:adv", "tts", "tts:poison=0.125", "own", "shaped:1:9"]
    for bad in ("dual:both", "tts:n=1", "tts:mix=0", "tts:poison=1", "tts:x=3", "shaped:0:1",
                "sideways"):
        with pytest.raises(ConfigError):
            alt.check_spec(bad)
    assert alt.describe_spec("shaped:1:9") == "shaped 1:9 (g=10)"
    assert alt.describe_spec("tts:mix=0.5:poison=0.125") == \
        "test-time statistics (32 samples, 4 poisoned, mixed 0.5 with PN)"
    assert alt.describe_spec("own", "gn") == "GroupNorm (no batch statistics)"


def test_views_refuse_models_they_do_not_fit(moons):
    model, _ = load_checkpoint(MOONS_PGD)
    pool = make_reference_pool(moons, 64, 0)
    for spec in ("dual:clean", "own"):
        with pytest.raises(ConfigError):
            alt.make_classifier(spec, model, pool)
    with pytest.raises(ConfigError, match="samples"):
        alt.make_classifier("tts:n=100", model, pool)
    with pytest.raises(ConfigError, match="needs clean samples"):
        alt.make_classifier("tts", model, None)
