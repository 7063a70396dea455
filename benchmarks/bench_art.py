"""The project's STRIP, Spectral Signatures and Activation Clustering beside IBM ART 1.20.1's, in one run on
the same model and inputs: a badnet-mnist model trained here (seed 0, 2 epochs) on 10,000 MNIST training
images of which 3% carry a 4x4 white square and the label 7. Filters (Spectral, AC) screen that poisoned
training set; STRIP screens 1,908 test inputs (954 clean, 954 triggered, none of label 7) after fitting on
1,000 other clean test images (ART: its x_val, which is both its overlay pool and its threshold set; the
project: 100 overlays and 900 threshold inputs from the same 1,000). ART's STRIP takes the entropy of
its classifier's outputs as they are, so it is given the model followed by a softmax (the model returns
logits; on logits ART's entropies are NaN). Both STRIPs use N = 100 overlays,
a linear blend at alpha 0.5 (ART's only mode) and a threshold from a normal fit at 1% false rejection.
Throughput is screened inputs (or training samples) per second of the call, wall clock, best of the
repeats, with torch and numpy's BLAS both at BACKDOOR_ARENA_THREADS threads; `vs_art` is the project's rate over ART's as-is rate for the same method. Agreement is the share
of inputs (samples) on which a row's verdict equals the project's.

How the project's filters reach their rate: the representations come from `penultimate_features(...,
optimise=True)`, a traced, frozen TorchScript graph of the model up to its last Linear layer (oneDNN
layout end to end: about 2x the eager rate of this model on one thread; checked against the eager model,
which it falls back to); each class's top principal axes come from subspace iteration (Rayleigh-Ritz, to
a residual of 1e-9) instead of a full eigendecomposition, on the units that fire in that class; Activation
Clustering runs 2-means on the whitened projections, which FastICA's orthogonal unmixing only rotates
(the same clusters, silhouettes and scores, so the unmixing iteration is skipped), with its ten restarts
as one batch. tests/unit/test_filter_speed_equivalence.py pins the results to the former implementations
(eager features, full eigendecompositions, FastICA components, one restart at a time). The filter rows
are best of 3 calls, STRIP rows best of 2.

ART defects this run shows (file and line under site-packages/art, version 1.20.1):
- STRIP entropy over the wrong axis: estimators/poison_mitigation/strip/strip.py lines 92 (predict) and 116
  (mitigate) compute `entropy(perturbed_predictions, base=2, axis=0)`, i.e. for each class the entropy of
  that class's probability across the N overlays, summed over classes, instead of each overlay's entropy
  over the classes (axis=1) averaged over overlays, the paper's H. Row "ART, entropy axis fixed" reruns
  ART with scipy's entropy forced to axis=1 (only that changed).
- Spectral Signatures and Activation Clustering analyse the model's output layer, not the last hidden
  layer: both take `get_activations(..., layer=nb_layers - 1)` (defences/detector/poison/
  spectral_signature_defense.py line 118, activation_defence.py line 673), and a PyTorchClassifier's layers
  are the model's top-level children, the last of which produces the logits (10 values per sample; AC then
  skips its 10-dimension reduction, activation_defence.py line 800). Rows "ART, last hidden layer" give ART
  a model whose only layer returns the last Linear layer's input, the representation the project uses.
- ART's Activation Clustering analyses crash when a class has a small cluster that the analysis then
  clears: "silhouette-scores" (clustering_analyzer.py line 331 stores np.array([[]]), a float array, that
  line 341 uses as an index: IndexError) and "relative-size" (line 245 tests `cluster_id in
  poison_clusters` on a tuple of arrays: ValueError). The rows then fall back to ART's default analysis,
  "smaller", which flags the smaller cluster of every class whatever its size or separation.
- ART's Spectral Signatures scores the uncentred representations (|R_i . v|, line 181) while the paper's
  Algorithm 1 centres them: it is compared with the project's `projection=uncentred`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from backdoor_arena.attacks import make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.defenses.activation_clustering import ActivationClustering
from backdoor_arena.defenses.spectral import SpectralSignatures
from backdoor_arena.defenses.strip import Strip
from backdoor_arena.detection_metrics import auroc, precision_recall
from backdoor_arena.nn_tools import capture_inputs, last_linear
from backdoor_arena.train import TrainConfig, create_model, fit

COLUMNS = ["method", "implementation", "n", "best_s", "per_s", "vs_art", "flagged", "tpr", "fpr", "precision",
           "recall", "auroc", "agree_with_project", "note"]
FORMATS = {"best_s": ".2f", "per_s": ".0f", "vs_art": ".2f", "tpr": ".3f", "fpr": ".3f", "precision": ".3f",
           "recall": ".3f", "auroc": ".3f", "agree_with_project": ".3f"}

ART_VERSION = "1.20.1"
# where ART's cluster analyses fail when a class has a small cluster that is not suspicious enough
ART_CRASHES = {
    "silhouette-scores": "clustering_analyzer.py line 331 stores np.array([[]]), a float array, that line 341 "
                         "uses as an index",
    "relative-size": "clustering_analyzer.py line 245 tests `cluster_id in poison_clusters`, a tuple of arrays",
    "smaller": "",
}
TARGET = 7


def _require_art() -> Any:
    try:
        import art
    except ImportError:
        raise SystemExit("bench_art needs IBM ART, a benchmark-only dependency (not a runtime or test one): "
                         f".venv/bin/pip install adversarial-robustness-toolbox=={ART_VERSION}") from None
    if art.__version__ != ART_VERSION:
        print(f"note: ART {art.__version__} installed; the defect line numbers cited are for {ART_VERSION}")
    return art


class LastHidden(nn.Module):
    """The input of the model's last Linear layer as the output: ART's only layer, for the fair rows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture_inputs(last_linear(self.model)) as inputs:
            self.model(x)
        return inputs[0].flatten(1)


def _art_classifier(model: nn.Module, nb_classes: int = 10) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                             nb_classes=nb_classes, clip_values=(0.0, 1.0))


def _best(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


@contextlib.contextmanager
def _art_entropy_axis_fixed():
    """ART's STRIP with scipy's entropy taken over the classes (axis=1) of each overlay's prediction."""
    # the module itself (its package's `strip` name is rebound, so `import ... as` does not reach it)
    art_strip = importlib.import_module("art.estimators.poison_mitigation.strip.strip")

    original = art_strip.entropy
    art_strip.entropy = lambda p, base=None, axis=0: original(p, base=base, axis=1)
    try:
        yield
    finally:
        art_strip.entropy = original


def _setup(quick: bool) -> dict[str, Any]:
    root = None  # the data folder: $BACKDOOR_ARENA_DATA, else the cache
    n_train = 4000 if quick else 10_000
    train = load_dataset("mnist", "train", root).subset(torch.arange(n_train))
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="square",
                      trigger_options={"size": 4}, target=TARGET, poison_rate=0.03, seed=0)
    p = atk.poison(train, torch.Generator().manual_seed(0))
    model, _ = create_model("badnet-mnist", train.info, seed=0)
    fit(model, p.dataset, TrainConfig(epochs=2, progress=False, seed=0))
    model.eval()
    test = load_dataset("mnist", "test", root)
    others = torch.nonzero(test.labels != TARGET).flatten()
    n_in = 300 if quick else 954
    x_clean = test.float_images()[others[:n_in]]
    x_trig = atk.apply_trigger(test.float_images()[others[n_in : 2 * n_in]])
    clean_fit = test.subset(others[2 * n_in : 2 * n_in + (400 if quick else 1000)])
    with torch.no_grad():
        asr = float((model(x_trig).argmax(1) == TARGET).float().mean())
        acc = float((model(x_clean).argmax(1) == test.labels[others[:n_in]]).float().mean())
    print(f"model: clean accuracy {acc:.3f} (non-target test inputs), attack success {asr:.3f}", flush=True)
    return {"model": model, "data": p.dataset, "truth": p.poisoned_mask, "x": torch.cat([x_clean, x_trig]),
            "is_trig": torch.cat([torch.zeros(n_in, dtype=torch.bool), torch.ones(n_in, dtype=torch.bool)]),
            "clean_fit": clean_fit, "asr": asr, "acc": acc}


def _strip_rows(s: dict[str, Any], repeats: int) -> list[dict]:
    from art.defences.transformer.poisoning import STRIP

    x, is_trig, n_over = s["x"], s["is_trig"], 100
    rows = []
    ours = Strip(n_overlays=n_over, frr=0.01, mode="blend", alpha=0.5, threshold_method="normal",
                 n_fit=len(s["clean_fit"]) - n_over)
    fit_s, _ = _best(lambda: ours.fit(s["model"], s["clean_fit"]), 1)
    t, scores = _best(lambda: ours.score(x), repeats)
    verdict = scores > ours.threshold
    fixed = Strip(**{**ours.params(), "chunk": 20}).fit(s["model"], s["clean_fit"])
    t_fixed, scores_fixed = _best(lambda: fixed.score(x), repeats)
    chunk = ours.pass_sizes.chunk_for(ours.model, ours.overlays, len(x))  # measured during fit: cached
    rows.append(_strip_row("project (auto pass size)", t, x, verdict, is_trig, scores, verdict, fit_s=fit_s,
                           chunk=chunk, note=f"chunk {chunk} ({chunk * n_over}-image passes) measured; fit "
                           f"{fit_s:.1f} s including the calibration"))
    diff = float((scores_fixed - scores).abs().max())
    rows.append(_strip_row("project (chunk=20: 2,000-image passes)", t_fixed, x, scores_fixed > fixed.threshold,
                           is_trig, scores_fixed, verdict, max_score_diff=diff,
                           note=f"the old default; largest score difference from auto's: {diff:.1e}"))
    x_np, val_np = x.numpy(), s["clean_fit"].float_images().numpy()
    for label, ctx in (("ART", contextlib.nullcontext()), ("ART, entropy axis fixed", _art_entropy_axis_fixed())):
        with ctx:
            np.random.seed(0)  # ART draws its overlays from numpy's global generator
            # ART's STRIP takes the entropy of predict()'s output as is: it needs probabilities, not logits
            probs = nn.Sequential(s["model"], nn.Softmax(dim=1)).eval()
            clf = STRIP(_art_classifier(probs))(num_samples=n_over, false_acceptance_rate=0.01)
            fit_s, _ = _best(lambda clf=clf: clf.mitigate(val_np), 1)
            t, pred = _best(lambda clf=clf: clf.predict(x_np), repeats if label == "ART" else 1)
        art_verdict = torch.from_numpy(~pred.any(1))  # ART abstains with an all-zero row
        rows.append(_strip_row(label, t, x, art_verdict, is_trig, None, verdict, fit_s=fit_s,
                               note=f"mitigate() (its fit) {fit_s:.1f} s"))
    base = next(r["per_s"] for r in rows if r["implementation"] == "ART")
    for r in rows:
        r["vs_art"] = r["per_s"] / base
    return rows


def _strip_row(label: str, t: float, x: torch.Tensor, verdict: torch.Tensor, is_trig: torch.Tensor,
               scores: torch.Tensor | None, project: torch.Tensor, **extra: Any) -> dict:
    return {"method": "strip", "implementation": label, "n": len(x), "best_s": t, "per_s": len(x) / t,
            "flagged": int(verdict.sum()), "tpr": float(verdict[is_trig].float().mean()),
            "fpr": float(verdict[~is_trig].float().mean()),
            "auroc": auroc(is_trig.long(), scores) if scores is not None else None,
            "agree_with_project": float((verdict == project).float().mean()), **extra}


def _filter_row(method: str, label: str, t: float, flagged: torch.Tensor, truth: torch.Tensor,
                scores: torch.Tensor | None, project: torch.Tensor, **extra: Any) -> dict:
    precision, recall = precision_recall(flagged, truth)
    return {"method": method, "implementation": label, "n": len(truth), "best_s": t, "per_s": len(truth) / t,
            "flagged": int(flagged.sum()), "precision": precision, "recall": recall,
            "auroc": auroc(truth.long(), scores) if scores is not None else None,
            "agree_with_project": float((flagged == project).float().mean()), **extra}


def _art_report_scores(report: dict, n: int) -> torch.Tensor:
    """ART's spectral report holds a score only for removed samples: the rest get 0 (for AUROC, a lower bound)."""
    out = torch.zeros(n, dtype=torch.float64)
    for idx, value in report.items():
        out[int(idx)] = float(np.asarray(value).ravel()[0])
    return out


def _filter_rows(s: dict[str, Any], repeats: int) -> list[dict]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    model, data, truth = s["model"], s["data"], s["truth"]
    x_np = data.float_images().numpy()
    y_np = np.eye(10, dtype=np.float32)[data.labels.numpy()]
    rows = []
    for method, ours_params in (("spectral", {"projection": "uncentred"}), ("spectral", {}),
                                ("activation-clustering", {})):
        cls = SpectralSignatures if method == "spectral" else ActivationClustering
        flt = cls(**ours_params)

        def ours(flt=flt):
            scores = flt.score(model, data)
            return scores, flt.flag(model, data, scores)

        t, (scores, flagged) = _best(ours, repeats)
        setting = ", ".join(f"{k}={v}" for k, v in ours_params.items()) or "defaults"
        rows.append(_filter_row(method, f"project ({setting})", t, flagged, truth, scores, flagged))
        print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
        if method == "spectral" and not ours_params:
            continue  # ART's spectral is the uncentred variant: its rows are compared with that one
        # ART reads the output of the model's last top-level child: a one-child Sequential makes it LastHidden's
        last_hidden = nn.Sequential(LastHidden(model)).eval()
        for label, net in (("ART", model), ("ART, last hidden layer", last_hidden)):
            clf = _art_classifier(net)
            if method == "spectral":
                defence = SpectralSignatureDefense(clf, x_np, y_np, batch_size=128, eps_multiplier=1.5,
                                                   expected_pp_poison=0.1)
                t, (report, is_clean) = _best(defence.detect_poison, repeats)
                art_scores = _art_report_scores(report, len(data))
            else:
                def run_ac(clf=clf, analysis="silhouette-scores"):
                    # the paper's setting: 10 independent components, 2-means
                    defence = ActivationDefence(clf, x_np, y_np)
                    return defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="FastICA",
                                                 cluster_analysis=analysis)

                # the paper's analyses first; ART's crash on this model, so its default ("smaller") follows
                for analysis in ("silhouette-scores", "relative-size", "smaller"):
                    np.random.seed(0)
                    try:
                        t, (_report, is_clean) = _best(lambda run_ac=run_ac, a=analysis: run_ac(analysis=a), repeats)
                        break
                    except (IndexError, ValueError) as exc:
                        rows.append({"method": method, "implementation": f"{label} ({analysis} analysis)",
                                     "n": len(truth), "note": f"crashed: {type(exc).__name__}: {exc} "
                                     f"({ART_CRASHES[analysis]})"})
                else:
                    continue  # every analysis crashed: the rows above say how
                label = f"{label} ({analysis} analysis)"
                art_scores = None
            art_flagged = torch.tensor(is_clean) == 0
            rows.append(_filter_row(method, label, t, art_flagged, truth, art_scores, flagged))
            print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
    for r in rows:
        base = [a["per_s"] for a in rows if a["method"] == r["method"] and "per_s" in a
                and a["implementation"].startswith("ART") and "last hidden" not in a["implementation"]]
        if "per_s" in r and base:
            r["vs_art"] = r["per_s"] / base[0]
    return rows


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("TQDM_DISABLE", "1")  # ART's STRIP draws a progress bar per call
    _require_art()
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # ART's linear algebra runs in numpy/scikit-learn, whose BLAS threads torch's setting does not bound:
    # both sides get the same number of threads
    with threadpool_limits(limits=torch.get_num_threads()):
        return _run(quick)


def _run(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    s = _setup(quick)
    repeats = 1 if quick else 2
    context = {"threads": torch.get_num_threads(), "blas_threads": torch.get_num_threads(), "clean_accuracy": s["acc"], "attack_success": s["asr"]}
    rows = _filter_rows(s, 1 if quick else 3)  # a filter call takes seconds: one more repeat against the noise
    strip_rows = _strip_rows(s, repeats)
    for r in strip_rows:
        print({k: r.get(k) for k in COLUMNS}, flush=True)
    return [{**r, **context} for r in rows + strip_rows]

