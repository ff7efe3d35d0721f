"""The paper's figures as PNG bytes (matplotlib, an optional extra: ``pip install onnxprune[plot]``).

Every function takes plain numbers (the same numbers that are written to JSON/CSV beside the
image) and returns the PNG file's bytes:

* :func:`sensitivity_png` — Fig. 6: top-1 accuracy against the fraction of one layer's
  weights pruned, every other layer dense; conv and fc layers in separate panels.
* :func:`mask_png` — Fig. 4: the spy plot of a layer's mask ``[W ≠ 0]`` with one row per
  output unit and one column per input connection.  For a fully connected layer fed by a
  flattened H×W image the columns are the pixels in row-major order, so pixel (r, c) is column
  ``r·W + c``: LeNet-300-100's fc1 shows H bands, one per image row, dense in the middle
  where the digits are written.  Conv weights (M, C, k…) become M rows of C·k… columns.
* :func:`histogram_png` — Fig. 7: the distribution of a layer's weights before pruning and of
  the surviving (non-zero) weights after pruning and retraining.
* :func:`tradeoff_png` — Fig. 5: accuracy loss (percentage points) against the share of
  parameters pruned away, one line per method.

Determinism: figures are drawn on a bare ``matplotlib.figure.Figure`` rendered by the Agg
canvas (no pyplot, so no global backend or interactive state is touched), with a fixed size,
dpi, font and style, and saved with ``metadata={"Software": None}`` so that matplotlib's
version string is not written: the same numbers give byte-identical files.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from onnxprune.core.errors import UsageError

EXTRA_HINT = "install the plotting extra: pip install 'onnxprune[plot]' (matplotlib>=3.7)"

DPI = 100
# The style is pinned here rather than taken from the user's matplotlibrc: a user's rc file
# must not change our output bytes.
_RC = {
    "font.family": "DejaVu Sans",  # ships inside matplotlib: the same glyphs everywhere
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.0,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "path.simplify": False,
    "text.hinting": "default",
    "text.antialiased": True,
}


def require_matplotlib():
    """Import matplotlib (Agg canvas only) or raise a UsageError naming the extra."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise UsageError(f"figures need matplotlib, which is not installed; {EXTRA_HINT}") from None
    return matplotlib


def available() -> bool:
    try:
        require_matplotlib()
    except UsageError:
        return False
    return True


@contextlib.contextmanager
def _figure(width_in: float, height_in: float):
    """A bare Figure on the Agg canvas, drawn and saved under the pinned style."""
    mpl = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Text is laid out at draw time, so saving must happen inside the same rc context.
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width_in, height_in), dpi=DPI)
        FigureCanvasAgg(fig)
        yield fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- Fig. 6


def sensitivity_png(layers: list[dict], dense_top1: float, *, title: str | None = None) -> bytes:
    """Fig. 6.  ``layers``: ``[{"name", "kind", "points": [{"sparsity", "top1"}, …]}, …]``."""
    kinds = [k for k in ("conv", "fc") if any(layer["kind"] == k for layer in layers)]
    if not kinds:
        raise UsageError("no sensitivity curves to plot")
    markers = "osD^v<>pP*Xh"
    with _figure(4.2 * len(kinds) + 0.6, 3.6) as fig:
        axes = fig.subplots(1, len(kinds), squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            for i, layer in enumerate(x for x in layers if x["kind"] == kind):
                pts = sorted(layer["points"], key=lambda p: p["sparsity"])
                ax.plot([100 * p["sparsity"] for p in pts], [100 * p["top1"] for p in pts],
                        marker=markers[i % len(markers)], label=layer["name"])
            ax.axhline(100 * dense_top1, color="0.4", linestyle="--", linewidth=0.9,
                       label="dense")
            ax.set_xlabel("weights pruned away in this layer (%)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title("CONV layers" if kind == "conv" else "FC layers")
            ax.set_xlim(-2, 102)
            ax.legend(loc="lower left", frameon=False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _png(fig)


# --------------------------------------------------------------------------- Fig. 4


def mask_matrix(w: np.ndarray, out_axis: int) -> np.ndarray:
    """``[W ≠ 0]`` as a 2-D (outputs, inputs) array in the layout of :func:`mask_png`.

    The output axis is moved first and the remaining axes are flattened in their stored
    order: a Gemm/MatMul weight's input axis keeps the row-major pixel order of a flattened
    image, a conv weight (M, C, kh, kw) gives C·kh·kw columns per output channel.
    """
    w = np.asarray(w)
    if w.ndim < 2:
        raise UsageError(f"a mask plot needs a weight of rank >= 2, got shape {w.shape}")
    moved = np.moveaxis(w, out_axis, 0)
    return moved.reshape(moved.shape[0], -1) != 0


def _block_density(mask: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, int, int]:
    """Share of kept weights per block when the mask is larger than the image.

    Each image pixel then shows a block of fr × fc weights (integer factors, so the map is an
    exact average, not a resampling).
    """
    fr = max(1, math.ceil(mask.shape[0] / max_rows))
    fc = max(1, math.ceil(mask.shape[1] / max_cols))
    if fr == 1 and fc == 1:
        return mask.astype(np.float32), 1, 1
    r = math.ceil(mask.shape[0] / fr) * fr
    col = math.ceil(mask.shape[1] / fc) * fc
    padded = np.zeros((r, col), dtype=np.float32)
    counts = np.zeros((r, col), dtype=np.float32)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    counts[:mask.shape[0], :mask.shape[1]] = 1
    s = padded.reshape(r // fr, fr, col // fc, fc).sum(axis=(1, 3))
    n = counts.reshape(r // fr, fr, col // fc, fc).sum(axis=(1, 3))
    return s / np.maximum(n, 1), fr, fc


def mask_png(mask: np.ndarray, *, title: str, max_pixels: tuple[int, int] = (600, 1200)) -> bytes:
    """Fig. 4: a spy plot, one image pixel per weight (kept = black) up to ``max_pixels``.

    The axes are sized in whole pixels so that every weight maps to a whole number of
    pixels: the 28 bands of LeNet-300-100's fc1 are not blurred by resampling.  Larger masks
    are shown as block densities (grey = share kept in the block).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.size:
        raise UsageError(f"a mask plot needs a non-empty 2-D mask, got shape {mask.shape}")
    img, fr, fc = _block_density(mask, *max_pixels)
    h, w = img.shape
    # Small masks are magnified by an integer factor (up to 4) so they stay readable.
    scale = max(1, min(4, 400 // w, 200 // h))
    left, right, bottom, top = 60, 20, 45, 35  # margins in pixels for labels and title
    width = w * scale + left + right
    height = h * scale + bottom + top
    with _figure(width / DPI, height / DPI) as fig:
        ax = fig.add_axes((left / width, bottom / height, w * scale / width, h * scale / height))
        ax.grid(False)
        ax.imshow(1.0 - img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                  aspect="auto", extent=(0, mask.shape[1], mask.shape[0], 0))
        density = float(mask.mean())
        block = "" if fr == fc == 1 else f", {fr}x{fc} weights per pixel"
        ax.set_title(f"{title}: {mask.shape[0]}x{mask.shape[1]}, {100 * density:.1f}% kept{block}",
                     fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        return _png(fig)


# --------------------------------------------------------------------------- Fig. 7


def histogram_counts(values: np.ndarray, bins: int = 80, nonzero_only: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of ``values`` on a range symmetric about 0; with ``nonzero_only`` the
    pruned zeros are left out (they would be one spike hiding the survivors)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if nonzero_only:
        v = v[v != 0]
    if v.size == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(-1.0, 1.0, bins + 1)
    lim = float(np.max(np.abs(v))) or 1.0
    counts, edges = np.histogram(v, bins=bins, range=(-lim, lim))
    return counts, edges


def histogram_png(before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray], *,
                  title: str) -> bytes:
    """Fig. 7: (counts, edges) of the weights before pruning, and of the non-zero weights
    after pruning (and retraining)."""
    with _figure(8.4, 3.2) as fig:
        axes = fig.subplots(1, 2)
        for ax, (counts, edges), label in ((axes[0], before, "before pruning"),
                                           (axes[1], after, "after pruning (non-zero weights)")):
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#3465a4",
                   edgecolor="none")
            ax.set_title(label)
            ax.set_xlabel("weight value")
            ax.set_ylabel("count")
        fig.suptitle(title)
        fig.tight_layout()
        return _png(fig)


# --------------------------------------------------------------------------- Fig. 5


def tradeoff_png(series: list[dict], *, title: str | None = None,
                 ylim: tuple[float, float] | None = None,
                 xlim: tuple[float, float] | None = None, measure: str = "top-1") -> bytes:
    """Fig. 5.  ``series``: ``[{"label", "points": [{"pruned", "drop_pp"}, …]}, …]`` where
    ``pruned`` is a share in [0, 1] and ``drop_pp`` = top-1 before − after, in points
    (positive = worse, as everywhere in onnxprune).  The y axis is the drop, pointing down as
    in the paper, where a worse model sits lower.

    ``ylim``/``xlim`` (drop in points / percent pruned) zoom in as the paper does (its axis
    stops at a 4.5-point loss); curves leaving the window are cut at its edge. ``measure`` names
    what dropped: ``top-1`` (labels), or a label-free run's ``agreement`` / ``1 - rel. error``.
    """
    if not series or not any(s["points"] for s in series):
        raise UsageError("no trade-off points to plot")
    markers = "osD^v<>pP*Xh"
    with _figure(6.0, 3.8) as fig:
        ax = fig.subplots()
        for i, s in enumerate(series):
            pts = sorted(s["points"], key=lambda p: p["pruned"])
            ax.plot([100 * p["pruned"] for p in pts], [p["drop_pp"] for p in pts],
                    marker=markers[i % len(markers)], label=s["label"])
        ax.axhline(0.0, color="0.4", linewidth=0.8)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.invert_yaxis()  # the paper draws the drop downwards
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.set_xlabel("parameters pruned away (%)")
        ax.set_ylabel(f"{measure} drop (points; dense − pruned)")
        ax.legend(loc="lower left", frameon=False)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return _png(fig)
