"""Named settings: per-dataset defaults that train in about a minute on two CPU cores, and
the paper's CIFAR-10 setting (Madry et al.'s config, batch 64, 80,000 steps)."""
from __future__ import annotations

from typing import Any, Dict

# Per-dataset defaults for every TrainConfig field left as None.
DATASET_PRESETS: Dict[str, Dict[str, Any]] = {
    "moons": dict(model="mlp", eps=0.12, steps=10, batch_size=64, epochs=30, optimizer="adam",
                  lr=0.01, weight_decay=0.0, lr_schedule="cosine"),
    "spirals": dict(model="mlp", eps=0.04, steps=10, batch_size=64, epochs=40, optimizer="adam",
                    lr=0.01, weight_decay=0.0, lr_schedule="cosine"),
    **{name: dict(model="mlp", eps=0.08, steps=10, batch_size=64, epochs=30, optimizer="adam",
                  lr=0.01, weight_decay=0.0, lr_schedule="cosine")
       for name in ("circles", "xor", "blobs")},
    "digits": dict(model="small_cnn", eps=0.3, steps=7, batch_size=64, epochs=30,
                   optimizer="adam", lr=0.002, weight_decay=0.0, lr_schedule="cosine"),
    "fashion_mnist": dict(model="small_cnn", model_width=16, eps=0.1, steps=7, batch_size=64,
                          epochs=3, n_train=10000, optimizer="adam", lr=0.002, weight_decay=0.0,
                          lr_schedule="cosine"),
    "mnist": dict(model="small_cnn", eps=0.3, steps=10, batch_size=64, epochs=5,
                  optimizer="adam", lr=0.002, weight_decay=0.0, lr_schedule="cosine"),
    "cifar10": dict(model="wide_resnet", eps=8 / 255, step_size=2 / 255, steps=10,
                    batch_size=64, epochs=None, max_steps=80000, optimizer="sgd", lr=0.1,
                    weight_decay=2e-4, lr_schedule="multistep"),
}

# The paper's CIFAR-10 setting (section VI): Madry et al.'s wide ResNet, eps 8/255, step
# 2/255, 10 attack steps, batch 64, 80,000 steps, ratio 1:3; FGSM is evaluated at 16/255.
PAPER_CIFAR10 = dict(dataset="cifar10", model="wide_resnet", model_depth=34, model_width=10,
                     method="pgd", shaping="attack+train", ratio="1:3", eps=8 / 255,
                     step_size=2 / 255, steps=10, batch_size=64, max_steps=80000,
                     optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4,
                     lr_schedule="multistep")

TRAIN_PRESETS: Dict[str, Dict[str, Any]] = {"cifar10-paper": PAPER_CIFAR10}
