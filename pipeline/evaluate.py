"""`fervid eval`: a classifier's accuracy on labelled face images, scored by the same Ray Data path as `fervid run`.

The metrics are computed here with numpy, and fine-tuning reuses them for its validation table.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.calibrate import ECE_BINS, ece, fit_temperature, nll, with_temperature, write_temperature
from pipeline.classify import temperature
from pipeline.config import ClassifierConfig
from pipeline.errors import FervidError
from pipeline.executor import connect, graph
from pipeline.imagefolder import labelled_files, match_labels, scan
from pipeline.models import ClassifierSpec, resolve_classifier
from pipeline.schema import score_columns


def metrics(truth: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, cross-entropy, per-label precision/recall/F1 and the confusion matrix (rows: truth).

    Per-label figures and the macro F1 cover the labels that have images; predictions of the
    others still count as errors.
    """
    k = len(labels)
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    hits = np.diag(confusion).astype(np.float64)
    support, claimed = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros(k), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    present = support > 0
    return {
        "images": int(len(truth)),
        "accuracy": float(hits.sum() / len(truth)),
        "loss": nll(truth, probs),
        "ece": ece(truth, probs),
        "macro_f1": float(f1[present].mean()),
        "per_label": {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                  "images": int(support[i])} for i in np.flatnonzero(present)},
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def evaluate(image_dir: str | Path, classifier: ClassifierConfig, pattern: str | None = None,
             ignore_missing: bool = False, address: str | None = None, fit: bool = False) -> dict:
    """Score every image under image_dir/<label>/ and measure the model against the folder labels.

    fit: also fit a softmax temperature to these labels (on top of the one the scores were made with), and
    write it beside a local model's weights, where `fervid run` applies it.
    """
    spec = resolve_classifier(classifier.model, classifier.revision)
    labels = list(spec.labels)
    folders = scan(image_dir, pattern)
    match = match_labels(list(folders), labels)
    if not match.exact and not (ignore_missing and match.index):
        hint = "; --ignore-missing skips them" if match.index else ""
        raise FervidError(match.mismatch(f"model {classifier.model} ({', '.join(labels)})") + hint)
    paths, truth = labelled_files(folders, match.index)
    if not paths:
        raise FervidError(f"the label folders of {image_dir} that match the model hold no images")
    connect.connect(address)
    started = time.monotonic()  # images/s counts the actors starting, not Ray
    columns = score_columns(labels)
    scored_paths, scored_truth, probs = [], [], []
    items = [{"path": p, "label": int(t)} for p, t in zip(paths, truth)]
    for batch in graph.stream_image_scores(items, classifier, spec):
        scored_paths += batch.column("path").to_pylist()
        scored_truth.append(batch.column("label").to_numpy())
        probs.append(np.column_stack([batch.column(c).to_numpy() for c in columns]))
    wall_s = time.monotonic() - started
    if not scored_paths:
        raise FervidError(f"none of the {len(paths)} images in {image_dir} could be read")
    truth_found, probs_found = np.concatenate(scored_truth), np.concatenate(probs)
    report = metrics(truth_found, probs_found, labels)
    if fit:
        report["calibration"] = _calibrate(truth_found, probs_found, temperature(classifier, spec), spec,
                                           {"image_dir": str(image_dir), "filter": pattern})
    unreadable = sorted(set(paths) - set(scored_paths))
    report.update({
        "model": classifier.model, "model_revision": spec.revision, "image_dir": str(image_dir), "filter": pattern,
        "skipped_folders": match.extra_folders, "labels_without_folder": match.missing_labels,
        "unreadable": unreadable, "wall_s": wall_s, "images_per_s": len(scored_paths) / wall_s,
    })
    return report


def _calibrate(truth: np.ndarray, probs: np.ndarray, used: float, spec: ClassifierSpec, fitted_on: dict) -> dict:
    """Fit a temperature to probabilities made with temperature `used`; the new one is their product."""
    factor = fit_temperature(truth, probs)
    scaled = with_temperature(probs, factor)
    result = {"temperature": used * factor, "before": {"temperature": used, "nll": nll(truth, probs),
                                                        "ece": ece(truth, probs)},
              "after": {"nll": nll(truth, scaled), "ece": ece(truth, scaled)}, "written_to": None}
    if Path(spec.source).is_dir():
        result["written_to"] = str(write_temperature(Path(spec.source), result["temperature"], fitted_on))
    return result


def format_report(report: dict) -> str:
    """The report as a plain-text table: per-label figures, the totals, then the confusion matrix."""
    labels = report["labels"]
    width = max(8, *(len(label) for label in labels))
    where = f"{report['image_dir']}" + (f" ({report['filter']})" if report["filter"] else "")
    lines = [f"{report['model']} on {where}: {report['images']} images, {report['images_per_s']:.1f} images/s", ""]
    lines.append(f"{'label':<{width}}  precision  recall     f1  images")
    for label, m in report["per_label"].items():
        lines.append(f"{label:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['images']:6d}")
    lines += ["", f"accuracy {report['accuracy']:.4f}   macro F1 {report['macro_f1']:.4f}   "
              f"cross-entropy loss {report['loss']:.4f}   ECE {report['ece']:.4f} ({ECE_BINS} bins)", "",
              "confusion matrix (rows: true label, columns: predicted)"]
    cell = max(6, *(len(label) for label in labels))
    lines.append(" " * width + "".join(f"  {label:>{cell}}" for label in labels))
    for label, row in zip(labels, report["confusion"]):
        if sum(row):
            lines.append(f"{label:<{width}}" + "".join(f"  {n:>{cell}d}" for n in row))
    for key, what in (("skipped_folders", "folders skipped (no such label)"),
                      ("labels_without_folder", "labels without a folder"), ("unreadable", "unreadable images")):
        if report[key]:
            shown = ", ".join(report[key][:5]) + (", ..." if len(report[key]) > 5 else "")
            lines.append(f"{what}: {len(report[key])}: {shown}")
    if "calibration" in report:
        c = report["calibration"]
        where = (f"written to {c['written_to']}, which fervid run applies" if c["written_to"]
                 else f"for a hub model, run with --set classifier.temperature={c['temperature']:.4f}")
        lines += ["", f"temperature {c['before']['temperature']:.4f} -> {c['temperature']:.4f}: "
                  f"NLL {c['before']['nll']:.4f} -> {c['after']['nll']:.4f}, "
                  f"ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f}; {where}"]
    return "\n".join(lines)
