"""Which of the 40 CelebA attributes the latent space encodes: a linear probe on the latent means."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from celeba_vae.celeba_files import CELEBA_ATTRIBUTE_NAMES
from helper_plotting import save_figure


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def attribute_probe(
    z_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    z_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    names: Sequence[str] = CELEBA_ATTRIBUTE_NAMES,
    max_iter: int = 2000,
) -> list[dict[str, Any]]:
    """One standardized logistic regression per attribute, fitted on training codes and scored on held-out codes.

    The regression weighs both classes equally (``class_weight="balanced"``), as balanced accuracy scores them:
    unweighted, a rare attribute's probe minimizes its loss by mostly answering "no".

    Returns per attribute: ``attribute``, ``probeable`` (False when the training codes hold a single class; the
    scores are then NaN), ``accuracy``, ``balanced_accuracy`` (mean recall over the classes in the test labels;
    0.5 is chance), ``majority_accuracy`` (test accuracy of always predicting the training majority) and
    ``positive_rate`` (share of test labels that are 1).
    """
    from sklearn.linear_model import LogisticRegression  # scikit-learn loads here, when a probe is fitted
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z_train, y_train, z_test, y_test = (_numpy(v) for v in (z_train, y_train, z_test, y_test))
    if y_train.ndim != 2 or y_train.shape[1] != len(names) or y_test.shape[1:] != y_train.shape[1:]:
        raise ValueError(f"labels of shapes {y_train.shape} (train) and {y_test.shape} (test) do not match "
                         f"{len(names)} attribute names")
    results = []
    for j, name in enumerate(names):
        train_labels, test_labels = y_train[:, j], y_test[:, j]
        classes, counts = np.unique(train_labels, return_counts=True)
        result: dict[str, Any] = {"attribute": name, "probeable": len(classes) > 1,
                                  "positive_rate": float(np.mean(test_labels == 1))}
        if not result["probeable"]:
            results.append({**result, "accuracy": math.nan, "balanced_accuracy": math.nan,
                            "majority_accuracy": math.nan})
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, class_weight="balanced"))
        predicted = probe.fit(z_train, train_labels).predict(z_test)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            balanced = balanced_accuracy_score(test_labels, predicted)
        results.append({**result, "accuracy": float(np.mean(predicted == test_labels)),
                        "balanced_accuracy": float(balanced),
                        "majority_accuracy": float(np.mean(test_labels == classes[np.argmax(counts)]))})
    return results


def plot_probe(
    results: Sequence[Mapping[str, Any]], title: str | None = None, save_path: str | Path | None = None
) -> Figure:
    """Horizontal bars of balanced accuracy per attribute, with the 0.5 chance line; unprobeable ones are labelled."""
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(results) + 1.2))
    positions = np.arange(len(results))[::-1]
    scores = [r["balanced_accuracy"] if r["probeable"] else 0.0 for r in results]
    ax.barh(positions, scores, color=["tab:blue" if r["probeable"] else "lightgrey" for r in results])
    for y, r in zip(positions, results, strict=True):
        if not r["probeable"]:
            ax.text(0.01, y, "not probeable", va="center", fontsize=7)
    ax.axvline(0.5, color="tab:red", ls="--", lw=1, label="chance (0.5)")
    ax.set_yticks(positions, [r["attribute"] for r in results], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy of a linear probe on the latent means (held-out codes)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, save_path, title)

