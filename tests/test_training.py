"""Training: the three shaping modes build the batches the paper describes; adversarial
training buys robustness on moons; natural training learns digits; seeds reproduce."""
import pytest
import torch

import normshape_core.training.trainer as training
from normshape_core.settings.config import ConfigError, TrainConfig
from normshape_core.blocks.norms import running_stats
from normshape_core.training.trainer import Trainer, train

EPS = 0.12


def _trainer(moons, **kw):
    cfg = dict(dataset="moons", method="pgd", eps=EPS, steps=5, epochs=1, batch_size=64)
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg), dataset=moons)


def _record_pgd_calls(monkeypatch):
    calls = []
    real = training.pgd_linf

    def spy(logits_fn, x, y, **kw):
        calls.append({"rows": len(x), "x": x.clone()})
        return real(logits_fn, x, y, **kw)

    monkeypatch.setattr(training, "pgd_linf", spy)
    return calls


def test_attack_train_step_perturbs_exactly_the_adversarial_part(moons, monkeypatch):
    tr = _trainer(moons, shaping="attack+train", ratio="1:3")
    calls = _record_pgd_calls(monkeypatch)
    x, y = moons.x_train[:64], moons.y_train[:64]
    stats_before = running_stats(tr.model)
    batch = tr.craft(x, y)
    assert [c["rows"] for c in calls] == [16], "only B/(n+1) = 16 samples are crafted"
    assert batch.n_clean == 48
    assert torch.equal(batch.x[:48], x[:48]), "clean parts must be untouched"
    delta = (batch.x[48:] - x[48:]).abs()
    assert (delta.amax(dim=1) > 0).all(), "every adversarial sample moved"
    assert delta.max() <= EPS + 1e-6
    assert batch.x.min() >= 0 and batch.x.max() <= 1
    for k, v in running_stats(tr.model).items():
        assert torch.equal(v, stats_before[k]), f"crafting changed {k}"


def test_attack_train_gradient_flows_only_to_adversarial_part(moons, monkeypatch):
    """Each attack step forwards the whole mixed batch, but differentiates only w.r.t. the
    adversarial rows: the clean rows are constants, and they do shape the logits (BN)."""
    tr = _trainer(moons, shaping="attack+train", ratio="1:3")
    seen = {}

    def probe(logits_fn, x, y, **kw):
        xa = x.clone().requires_grad_(True)
        out = logits_fn(xa)
        assert out.shape[0] == len(x)
        leaves = []

        def walk(fn, seen_fns=set()):
            if fn is None or fn in seen_fns:
                return
            seen_fns.add(fn)
            if hasattr(fn, "variable"):
                leaves.append(fn.variable)
            for nxt, _ in fn.next_functions:
                walk(nxt)

        walk(out.grad_fn)
        params = list(tr.model.parameters())
        seen["input_leaves"] = [v for v in leaves if not any(v is p for p in params)]
        seen["leaf_is_adv_part"] = len(seen["input_leaves"]) == 1 and seen["input_leaves"][0] is xa
        (g,) = torch.autograd.grad(out.sum(), xa)
        seen["grad_nonzero"] = bool(g.abs().sum() > 0)
        with torch.no_grad():
            alone = tr.model(x)  # same rows without the clean parts in the batch
        seen["clean_parts_matter"] = not torch.allclose(out.detach(), alone, atol=1e-4)
        return x

    monkeypatch.setattr(training, "pgd_linf", probe)
    tr.craft(moons.x_train[:64], moons.y_train[:64])
    assert seen["leaf_is_adv_part"], "the only differentiable input is the adversarial part"
    assert seen["input_leaves"][0].shape[0] == 16
    assert seen["grad_nonzero"] and seen["clean_parts_matter"]


def test_train_mode_crafts_whole_batch_and_trains_on_stated_ratio(moons, monkeypatch):
    tr = _trainer(moons, shaping="train", ratio="1:3")
    calls = _record_pgd_calls(monkeypatch)
    x, y = moons.x_train[:64], moons.y_train[:64]
    batch = tr.craft(x, y)
    assert [c["rows"] for c in calls] == [64], "shaping in training attacks the whole batch"
    assert batch.n_clean == 48 and len(batch.x) == 64
    assert torch.equal(batch.x[:48], x[:48])
    assert ((batch.x[48:] - x[48:]).abs().amax(dim=1) > 0).all()


def test_adv_only_mode_trains_on_a_fully_adversarial_batch(moons, monkeypatch):
    tr = _trainer(moons, shaping="none")
    calls = _record_pgd_calls(monkeypatch)
    batch = tr.craft(moons.x_train[:64], moons.y_train[:64])
    assert [c["rows"] for c in calls] == [64] and batch.n_clean == 0


def test_polluted_switch_lets_attack_steps_update_running_stats(moons):
    tr = _trainer(moons, shaping="attack+train", polluted_running_stats=True)
    before = running_stats(tr.model)
    tr.craft(moons.x_train[:64], moons.y_train[:64])
    after = running_stats(tr.model)
    moments = [k for k in before if k.endswith(("running_mean", "running_var"))]
    # every BN layer's mean and variance moved, once per attack step (num_batches_tracked)
    assert moments and all(not torch.equal(before[k], after[k]) for k in moments), \
        [k for k in moments if torch.equal(before[k], after[k])]
    counters = [k for k in before if k.endswith("num_batches_tracked")]
    assert counters and all(int(after[k]) - int(before[k]) == tr.cfg.steps for k in counters)


@pytest.mark.parametrize("method,shaping", [("pgd", "none"), ("pgd", "train"),
                                            ("trades", "none"), ("trades", "attack+train")])
def test_every_training_mode_runs_and_changes_weights(moons, method, shaping):
    tr = _trainer(moons, method=method, shaping=shaping, max_steps=3)
    w0 = [p.detach().clone() for p in tr.model.parameters()]
    tr.fit()
    assert tr.step == 3
    assert any(not torch.equal(a, b) for a, b in zip(w0, tr.model.parameters()))


def test_adversarial_training_is_much_more_robust_than_natural_on_moons(moons):
    res = {}
    for name, kw in {"natural": dict(method="natural"), "pgd": dict(method="pgd"),
                     "pgd+shaping": dict(method="pgd", shaping="attack+train")}.items():
        r = train(TrainConfig(dataset="moons", eps=EPS, **kw), dataset=moons)
        res[name] = r.final_metrics
    key = "test/robust_acc_pgd10_pn_pn"
    figures = {k: (round(v["test/clean_acc_pn"], 3), round(v[key], 3)) for k, v in res.items()}
    msg = f"(clean acc PN, PGD-10 robust acc crafted PN / classified PN) at eps {EPS}: {figures}"
    assert res["natural"]["test/clean_acc_pn"] >= 0.95, msg
    assert res["pgd"][key] >= res["natural"][key] + 0.2, msg
    assert res["pgd+shaping"][key] >= res["natural"][key] + 0.2, msg


def test_natural_training_reaches_95_percent_on_digits(digits):
    r = train(TrainConfig(dataset="digits", method="natural", epochs=10), dataset=digits)
    acc = r.final_metrics["test/clean_acc_pn"]
    assert acc >= 0.95, f"natural small_cnn on digits: clean accuracy (PN) {acc:.3f} < 0.95"


def test_same_seed_same_weights(moons):
    cfg = TrainConfig(dataset="moons", method="pgd", shaping="attack+train", epochs=2, steps=3)
    a = train(cfg, dataset=moons).model.state_dict()
    b = train(cfg, dataset=moons).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two runs with the same seed"
    c = train(TrainConfig(**{**cfg.to_dict(), "seed": 1}), dataset=moons).model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kw,match", [
    (dict(ratio="0:3", shaping="attack+train"), "no adversarial part"),
    (dict(ratio="3:1:2", shaping="attack+train"), "ADV:CLEAN"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(batch_size=2, shaping="attack+train"), "smaller than the 4 parts"),
    (dict(batch_size=66, shaping="attack+train"), "multiple of 4"),
    (dict(method="natural", shaping="train"), "no attack to shape"),
    (dict(method="sgd"), "unknown method"),
])
def test_invalid_settings_are_clear_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw).resolved()


def test_channels_last_is_an_opt_in_recorded_setting(digits):
    plain = Trainer(TrainConfig(dataset="digits", method="natural", max_steps=1), dataset=digits)
    fast = Trainer(TrainConfig(dataset="digits", method="natural", max_steps=1,
                               channels_last=True), dataset=digits)
    conv = lambda m: next(p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert not conv(plain.model).is_contiguous(memory_format=torch.channels_last)
    assert conv(fast.model).is_contiguous(memory_format=torch.channels_last)
    assert plain.cfg.fingerprint() != fast.cfg.fingerprint()
    # off is the default, and leaves the fingerprint of runs made before the setting existed
    d = plain.cfg.to_dict()
    d.pop("channels_last")
    assert TrainConfig.from_dict(d).resolved().fingerprint() == plain.cfg.fingerprint()


def test_every_method_and_shaping_mode_is_a_unit_of_the_loop():
    from normshape_core.settings.config import METHODS, SHAPING_MODES
    from normshape_core.training.objectives import CRAFTING_RULES, OBJECTIVES

    assert set(OBJECTIVES) == set(METHODS)
    assert set(CRAFTING_RULES) == set(SHAPING_MODES)
    assert [o.attack_loss for o in OBJECTIVES.values() if o.adversarial] == ["ce", "kl"]
