"""Masked retraining of a pruned ONNX graph (Han et al. 2015, §3) and the torchrun/DDP path.

Invariants and maths:

* **Masks.** For every prunable weight W (Conv/ConvTranspose/Gemm/MatMul, LSTM/GRU/RNN W and R) the mask is
  M = (W ≠ 0) at the start.  After each backward pass ∇W ← ∇W ⊙ M, and after each optimizer
  step W ← W ⊙ M (written as a fill with +0.0).  Masking the gradient keeps momentum / Adam
  moments of pruned connections at zero; re-applying the mask makes "stays exactly zero" hold
  whatever the optimizer does (weight decay included).  Surviving weights start from their
  pruned-network values — no re-initialisation.  Checked again at the end.  With ``regrow``
  (Dynamic Network Surgery) the mask may change but never its count of ones (``_Regrow``).
* **Loss.** Cross-entropy on the logits: the first graph output, or the input of the
  ``Softmax``/``LogSoftmax`` that produces it.  Plus ``l1 · Σ|W|`` over prunable weights
  when ``l1 > 0``; L2 is the optimizer's ``weight_decay`` on the same tensors only.
  With ``distill = α > 0`` the cross-entropy becomes ``(1 − α)·CE + α·T²·KL(p_t ‖ p_s)``,
  p = softmax(logits / T), the teacher's logits taken the same way from the teacher graph
  (rebuilt once, evaluation mode, no gradients); the T² keeps the soft term's gradient on
  the scale of the hard one (Hinton et al. 2015).  The history's ``train_loss`` is this
  mixed objective (per sample).
* **Label-free (objective match).** The teacher (``compress``: the dense input model) is the
  target: every floating-point graph output takes part with weight 1 (integer/bool outputs
  are left out, and reported so).  A class-score output (the rule of
  :func:`onnxprune.runtime.datasets.output_kinds`) contributes ``T²·KL(p_t ‖ p_s)`` on its
  logits (the input of the Softmax/LogSoftmax producing it, else the output itself); every
  other output ``mean((s − t)²) / var_t`` per sample, ``var_t`` the variance of the teacher's
  output over all its elements and the whole training set, measured once before training
  (1 for a constant output), so each output weighs about the same whatever its scale.
  ``mixed`` adds the labels' cross-entropy.  Validation then measures fidelity to the
  teacher (top-1 agreement, relative error: :func:`onnxprune.runtime.evaluate.fidelity`).
* **Fixed batch.** A model whose inputs fix the batch at B (often 1) is fed in micro-batches
  of B; their gradients accumulate into one optimizer step per ``batch_size`` samples, the
  same mean-over-the-batch gradient as a model with a free batch axis.  BatchNormalization
  then normalises with its running statistics (kept): a micro-batch's are not the batch's.
* **BatchNormalization statistics** are also kept when following a teacher (objective
  match/mixed): the teacher normalises with them; otherwise training mode updates them.
  ``bn_statistics`` ("keep" | "update") overrides either default.
* **Dropout.** For a Dropout whose input comes (through single-input ops: activations,
  reshapes, pooling…) from a prunable layer i: D_r = D_o · √(C_ir / C_io), with C_io the
  dense connection count (weight size) and C_ir the nonzeros at the start of retraining.
  Only the ratio used while training changes; the graph keeps D_o.
* **Freeze.** ``freeze="conv"`` fixes Conv/ConvTranspose weights and biases and the
  BatchNormalization layers after them (parameters and running statistics) while the FC
  layers train; ``freeze="fc"`` the converse.
* **Batches from arrays.** Epoch e visits ``permutation(PCG64([seed, e]))`` in global
  batches of ``batch_size``; with W processes rank r takes ``batch[r::W]`` and scales its
  summed loss by W / len(batch), so DDP's gradient average equals the single-process mean
  over the global batch: same seed → same weights for any W, up to float summation order.
  A final global batch smaller than W is dropped (a rank cannot step on zero samples); with
  a fixed batch dim B in the model ``batch_size`` is a multiple of B·W and a final batch is
  cut to a multiple of B·W.
* **Repeatability.** Torch's RNG (Dropout) is seeded with ``seed + rank`` inside a forked
  RNG state, so the caller's RNG is untouched; on CPU the same seed gives identical weights.
* **Distributed.** If a process group is initialised, or torchrun's ``WORLD_SIZE`` > 1, the
  module is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA); every rank masks
  its own gradients and weights; at the end the ranks' weights are compared (max |Δ| is
  reported) and only rank 0 returns the written-back model.
"""

from __future__ import annotations

import math
import os
import time
from typing import Iterable

import numpy as np
import onnx
import torch

from onnxprune.runtime import datasets as _data
from onnxprune.core.errors import RuntimeFailure, UsageError
from onnxprune.training.torch_bridge.config import (
    OUTPUT_KIND_UNUSED, FinetuneConfig, FinetuneResult, ProgressFn)
from onnxprune.training.torch_bridge.module import OnnxModule, build_module, default_opset
from onnxprune.training.torch_bridge.objective import (  # noqa: F401 (_distill_loss: tests)
    Objective, Term, distill_loss as _distill_loss, forward_padded, logits_name as _logits_name,
    match_objective, rebuild_teacher, student_outputs,
)
from onnxprune.training.torch_bridge.weights import write_back

# Ops a Dropout's input may pass through on its way back to the layer whose neurons it drops.
_PASS_THROUGH = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Clip", "Identity", "Flatten", "Reshape", "Transpose",
    "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "LRN", "Add", "Mul", "Sub", "Div", "Cast",
})


# --- distributed context ------------------------------------------------------------------

class _Dist:
    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_available():
                raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            self.world, self.rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
        else:
            self.world, self.rank = 1, 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))

    @property
    def active(self) -> bool:
        return self.world > 1

    def init(self, device: torch.device) -> None:
        if self.active and not self.dist.is_initialized():
            if device.type == "cuda":
                # NCCL's collectives (barrier among them) run on the current device
                torch.cuda.set_device(device)
            self.dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    def close(self) -> None:
        if self.owns_group and self.dist.is_initialized():
            import gc

            gc.collect()  # drop any reducer still referenced from a cycle
            self.dist.barrier()
            self.dist.destroy_process_group()

    def sum(self, values: list[float], device) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        self.dist.all_reduce(t)
        return t.tolist()


def _deterministic_cudnn() -> tuple[bool, bool]:
    """Asks cuDNN for deterministic algorithms (and no autotuning) for the run, returning the
    caller's settings to restore. Same input and options give the same file (DESIGN), also on
    a GPU: with cuDNN's defaults two runs of the same seed retraining a convolution + BatchNorm
    net wrote different weights (an H200, torch 2.11, CUDA 13)."""
    was = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return was


def _pick_device(choice: str, dist: _Dist) -> torch.device:
    """The rank's device. Under torchrun each rank takes GPU LOCAL_RANK, so "cuda" needs as many
    GPUs as ranks on the node — else every rank refuses with a clear error, not a CUDA "invalid
    device ordinal" on some and a wait for them on the others — and "auto" takes the GPUs only
    when every local rank has one: a world split between cuda and cpu ranks could not agree on
    a backend."""
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "auto":
        choice = "cuda" if n_gpu and (not dist.active or dist.local_world <= n_gpu) else "cpu"
    if choice == "cuda":
        if not n_gpu:
            raise UsageError("device 'cuda' requested but torch sees no CUDA device")
        if not dist.active:
            return torch.device("cuda", torch.cuda.current_device())
        if dist.local_world > n_gpu or dist.local_rank >= n_gpu:
            raise UsageError(f"device 'cuda': {dist.local_world} process(es) on this node (this one LOCAL_RANK "
                             f"{dist.local_rank}) but torch sees {n_gpu} CUDA device(s), one per process; start at "
                             f"most {n_gpu} per node (torchrun --nproc_per_node {n_gpu}) or use --device cpu")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def rank_device(choice: str) -> torch.device:
    """This process's device for ``choice`` (cpu, cuda, auto) under the torchrun environment it
    runs in: what finetune takes, for callers that set up the process group themselves
    (compress)."""
    return _pick_device(choice, _Dist())


# --- data sources -------------------------------------------------------------------------

class _ArraySource:
    """Shuffled global batches from in-memory arrays, split across ranks (see module doc)."""

    def __init__(self, ds: _data.Dataset, batch_size: int, seed: int, fixed_batch: int | None, world: int):
        self.x, self.y, self.n = ds.x, ds.y, len(ds)
        self.batch, self.seed, self.world = batch_size, seed, world
        self.fixed = fixed_batch
        # A global batch is cut to a multiple of `unit`: every rank gets whole micro-batches.
        self.unit = world * (fixed_batch or 1)
        if batch_size % self.unit:
            raise UsageError(
                f"batch-size {batch_size} must be a multiple of {self.unit}"
                + (f" (the model fixes its batch at {fixed_batch}, fed {fixed_batch} at a time"
                   f"{f', on {world} processes' if world > 1 else ''})" if fixed_batch
                   else f" (the {world} processes)"))

    def _global_batches(self, epoch: int):
        order = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.n)
        for start in range(0, self.n, self.batch):
            idx = order[start:start + self.batch]
            idx = idx[: len(idx) - len(idx) % self.unit]
            if len(idx):
                yield idx

    def steps(self) -> int:
        full, rest = divmod(self.n, self.batch)
        return full + (1 if rest >= self.unit else 0)

    def batches(self, epoch: int, rank: int):
        for idx in self._global_batches(epoch):
            part = idx[rank::self.world]
            yield _data.take(self.x, part), None if self.y is None else self.y[part], len(idx)


class _IterableSource:
    """User batches (e.g. a DataLoader) used as given on every rank; the caller shards."""

    def __init__(self, batches: Iterable, world: int):
        if iter(batches) is batches:
            raise UsageError("train/val batches must be re-iterable (a DataLoader or list, not a generator)")
        self.src, self.world = batches, world

    def steps(self) -> int | None:
        try:
            return len(self.src)
        except TypeError:
            return None

    def batches(self, epoch: int, rank: int):
        for item in self.src:
            try:
                x, y = item
            except (TypeError, ValueError) as exc:
                raise UsageError("each batch must be an (x, y) pair") from exc
            # The per-rank mean is what DDP averages: pass len(y)·world as the "global" size.
            yield x, y, len(y) * self.world


def _as_source(obj, specs, classes, batch_size, seed, world, what, labels=True):
    if isinstance(obj, (str, os.PathLike)):
        obj = _data.load_data(obj, specs)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], (np.ndarray, dict)):
        obj = _data.Dataset(*obj)
    if isinstance(obj, _data.Dataset):
        ds = _data.check_dataset(obj, specs, classes, name=what, labels=labels)
        return _ArraySource(ds, batch_size, seed,
                            _data.fixed_batch(_data.resolve_specs(specs, ds.x, what)), world)
    return _IterableSource(obj, world)


def _resolved(specs, source, what: str):
    """``specs`` with the sample axes of ``source``'s data (its arrays, else its first batch;
    :func:`onnxprune.runtime.datasets.resolve_specs`)."""
    x = source.x if isinstance(source, _ArraySource) else next(iter(source.batches(0, 0)))[0]
    return _data.resolve_specs(specs, x, what)


def _to_tensors(x, y, specs, classes, device, what, checked=False):
    """(input name → tensor on ``device``, labels tensor or None); unchecked numpy data goes
    through the data module's rules first."""
    if not checked and not isinstance(x, dict) and isinstance(x, np.ndarray):
        x = _data.coerce_x(x, specs[0], what=f"{what} x")
    feeds = _data.feeds(x, specs)
    tensors = {}
    for s in specs:
        v = feeds.get(s.name)
        if isinstance(v, np.ndarray):
            if not checked and len(specs) > 1:
                v = _data.coerce_x(v, s, what=f"{what} {s.name!r}")
            # np.require keeps a 0-d setting 0-d (np.ascontiguousarray makes it 1-d)
            v = torch.from_numpy(np.require(v, requirements="C"))
        elif not isinstance(v, torch.Tensor):
            raise UsageError(f"{what} batch input {s.name!r} must be a numpy array or torch tensor, "
                             f"got {type(v).__name__}")
        tensors[s.name] = v.to(device)
    if y is None:
        return tensors, None
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not checked:
        y = _data.coerce_y(np.asarray(y), _data.n_samples(tensors), classes, what=f"{what} y")
    return tensors, torch.from_numpy(y).to(device)


# --- graph analysis -----------------------------------------------------------------------

def _dropout_plan(module: OnnxModule) -> dict[str, tuple[float, float, str]]:
    """Dropout node → (D_o, D_r, layer) with D_r = D_o·√(C_ir/C_io) (see module doc)."""
    from onnxprune.core.masks import retrain_dropout

    weight_of_layer = {info.layer: name for name, info in module.weight_info.items() if info.prunable}
    consts = set(module.param_keys) | set(module.buffer_keys) | set(module._cpu_consts)
    plan = {}
    for node in module._nodes:
        if node.op_type != "Dropout":
            continue
        if node.opset < 12:
            d_o = float(node.attrs.get("ratio", 0.5))
        elif len(node.inputs) > 1 and node.inputs[1]:
            ratio = node.inputs[1]
            if ratio in module._cpu_consts:
                d_o = float(module._cpu_consts[ratio].reshape(-1)[0])
            elif ratio in module.buffer_keys or ratio in module.param_keys:
                d_o = float(module.onnx_tensor(ratio).reshape(-1)[0])
            else:
                continue  # ratio computed at run time: leave it alone
        else:
            d_o = 0.5
        name = node.inputs[0]
        layer = None
        for _ in range(64):
            prod = module.producer(name)
            if prod is None:
                break
            if prod.name in weight_of_layer:
                layer = prod.name
                break
            data_inputs = [i for i in prod.inputs if i and i not in consts]
            if prod.op_type not in _PASS_THROUGH or len(data_inputs) != 1:
                break
            name = data_inputs[0]
        if layer is None:
            continue
        w = module.parameter(weight_of_layer[layer]) if weight_of_layer[layer] in module.param_keys else None
        if w is None:
            continue
        c_io, c_ir = w.numel(), int(torch.count_nonzero(w))
        plan[node.name] = (d_o, retrain_dropout(d_o, c_ir, c_io), layer)
    return plan


# --- evaluation in torch (for per-epoch validation) ---------------------------------------

def _in_order(source, step: int):
    """Every sample of ``source`` once, in order: (x, y) chunks of ``step`` from arrays, the
    user's batches as given otherwise."""
    if isinstance(source, _ArraySource):
        for i in range(0, source.n, step):
            sl = slice(i, i + step)
            yield _data.take(source.x, sl), None if source.y is None else source.y[sl]
    else:
        for x, y, _ in source.batches(0, 0):
            yield x, y


@torch.no_grad()
def _evaluate(module, source, objective: Objective, specs, classes, device) -> dict:
    """Validation in torch: top-1/top-5 accuracy of the cross-entropy logits when the set has
    labels and the objective uses them, else fidelity to the teacher
    (:func:`onnxprune.runtime.evaluate.fidelity`; ``val_top1`` is its summary)."""
    from onnxprune.runtime.evaluate import fidelity

    was_training = module.training
    module.eval()
    fixed = _data.fixed_batch(specs)
    correct1 = correct5 = total = 0
    got: dict[str, list] = {t.output: [] for t in objective.terms}
    dense: dict[str, list] = {t.output: [] for t in objective.terms}
    use_labels = objective.ce is not None
    try:
        for xb, yb in _in_order(source, fixed or 256):
            x, y = _to_tensors(xb, yb if use_labels else None, specs, None, device, "val",
                               checked=isinstance(source, _ArraySource))
            outs = forward_padded(module, x, objective.student_names, specs)
            if use_labels:
                logits, y = outs[objective.ce].float().cpu(), y.cpu()
                correct1 += int((logits.argmax(1) == y).sum())
                if logits.shape[1] >= 5:
                    correct5 += int((logits.topk(5, 1).indices == y[:, None]).any(1).sum())
                total += len(y)
                continue
            t_outs = forward_padded(objective.teacher, x, [t.teacher for t in objective.terms], specs)
            for t in objective.terms:
                got[t.output].append(outs[t.student].float().cpu().numpy())
                dense[t.output].append(t_outs[t.teacher].float().cpu().numpy())
    finally:
        module.train(was_training)
    if use_labels:
        return {"val_top1": correct1 / total if total else float("nan"),
                "val_top5": correct5 / total if total and classes and classes >= 5 else None}
    ref = _data.Reference({k: _data.concat_runs(v, f"output {k!r}") for k, v in dense.items()},
                          {t.output: "scores" if t.kind == "kl" else "values" for t in objective.terms})
    fid = fidelity({k: _data.concat_runs(v, f"output {k!r}") for k, v in got.items()}, ref)
    return {"val_top1": fid["top1"], "val_top5": None, "val_measure": fid["measure"]}


# --- the public entry point ---------------------------------------------------------------

def finetune(
    model: onnx.ModelProto,
    train,
    val=None,
    *,
    config: FinetuneConfig | None = None,
    on_progress: ProgressFn | None = None,
    teacher: onnx.ModelProto | None = None,
) -> FinetuneResult:
    """Retrain the surviving weights of ``model`` and write them back (see module doc).

    ``train``/``val``: a :class:`onnxprune.runtime.datasets.Dataset`, an ``(x, y)`` tuple of numpy arrays,
    a path to an ``.npz`` with keys ``x``/``y``, or a re-iterable of ``(x, y)`` batches
    (numpy or torch; e.g. a DataLoader).  Arrays are validated before training starts.
    ``on_progress(epoch, step, total_steps, metrics)`` is called on rank 0 after every step
    (``metrics["loss"]``: running mean) and once more at the end of each epoch with the
    epoch record (``metrics["epoch_end"] is True``).
    ``teacher``: the model whose outputs the distillation term (``config.distill``) or the
    ``match``/``mixed`` objective follows; same inputs as ``model`` (and, for distill, the
    same number of classes).  Data without labels (``y`` None) selects ``match`` unless
    ``config.objective`` says otherwise.  Models with several inputs take ``x`` as a mapping
    input name → array (or tensor).
    """
    config = (config or FinetuneConfig()).validate()
    if config.keep_best and val is None:
        raise UsageError("finetune: keep-best needs validation data")
    if config.distill > 0 and teacher is None:
        raise UsageError("finetune: distill needs a teacher model (in compress: the dense input)")
    mode = resolve_objective(config.objective, train)
    if mode == "labels" and config.output_kind:
        raise UsageError(f"finetune: {OUTPUT_KIND_UNUSED.format(mode)}")
    if mode != "labels" and teacher is None:
        raise UsageError(f"finetune: objective {mode} needs a teacher model whose outputs to "
                         "follow (in compress: the dense input)")
    # Rebuild what computes the outputs followed; rejects unsupported ops before anything else.
    module = build_module(model, student_outputs(model, mode))
    specs = _data.input_specs(model)
    logits_name = _logits_name(module, default_opset(model), _data.scores_output(model)) \
        if mode != "match" else None
    classes = _data.n_classes(model) if mode != "match" else None
    dist = _Dist()
    device = _pick_device(config.device, dist)

    train_src, val_src, classes, specs = _sources(train, val, module, specs, classes, logits_name,
                                                  config, dist.world, labels=mode != "match")
    if config.lr_schedule != "constant" and not train_src.steps():
        raise UsageError(f"finetune: lr-schedule {config.lr_schedule} needs to know the number of training "
                         "batches; give arrays, an .npz or batches with a len() (e.g. a DataLoader)")
    objective = _objective(mode, model, module, teacher, specs, classes, train_src, logits_name, config)

    masks = {name: module.parameter(name).detach() != 0
             for name, info in module.weight_info.items() if info.prunable and name in module.param_keys}
    dropout = _adjust_dropout(module) if config.adjust_dropout else {}
    frozen = _freeze(module, config.freeze) if config.freeze else set()
    _keep_bn_statistics(module, mode, _data.fixed_batch(specs), config.batch_size, config.bn_statistics)
    opt = _optimizer(module, masks, frozen, config)

    dist.init(device)
    cudnn = _deterministic_cudnn() if device.type == "cuda" else None
    try:
        module.to(device)
        objective.to(device)
        masks = {n: m.to(device) for n, m in masks.items()}
        net = module
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        history, best, best_epoch, unreached = _train_loop(
            net, module, opt, masks, train_src, val_src, config, dist, device, specs, classes,
            objective, on_progress,
        )
        divergence = _rank_divergence(module, dist, device) if dist.active else None
    finally:
        # The DDP wrapper must go before its process group does: freeing it after
        # destroy_process_group can block forever in the reducer's destructor (gloo).
        net = None
        if cudnn is not None:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        dist.close()

    _check_masks_held(module, masks)
    mask_stats = {n: (int(m.sum()), m.numel()) for n, m in masks.items()}
    if dist.rank != 0:
        return FinetuneResult(None, history, best_epoch, dropout, mask_stats, dist.world, dist.rank,
                              divergence, str(device), objective.report(), unreached)
    state = best if best is not None else module.onnx_state()
    return FinetuneResult(write_back(model, state), history, best_epoch, dropout, mask_stats,
                          dist.world, dist.rank, divergence, str(device), objective.report(), unreached)


def resolve_objective(objective: str | None, train) -> str:
    """The objective to run: the one asked for, else ``labels`` when the training data has
    labels and ``match`` when it has none; ``labels``/``mixed`` on label-free data is a
    ``UsageError``."""
    y_missing = None
    if isinstance(train, _data.Dataset):
        y_missing = train.y is None
    elif isinstance(train, (str, os.PathLike)):
        y_missing = not _data.has_labels(train)
    elif isinstance(train, tuple) and len(train) == 2:
        y_missing = train[1] is None
    if objective is None:
        return "match" if y_missing else "labels"
    if objective != "match" and y_missing:
        raise UsageError(f"objective {objective} needs labels, and the training data holds no 'y' "
                         "(use objective match to follow the dense model without labels)")
    return objective


def _objective(mode, model, module, teacher, specs, classes, train_src, logits_name, config):
    """The :class:`Objective` of ``mode`` (objective.py's module doc)."""
    if mode == "labels":
        if config.distill == 0:
            return Objective("labels", specs, ce=logits_name)
        t_module, t_logits = _teacher(teacher, specs, classes, train_src)
        return Objective("labels", specs, ce=logits_name, ce_weight=1.0 - config.distill,
                         terms=[Term(_data.scores_output(model), logits_name, t_logits, "kl",
                                     weight=config.distill)],
                         teacher=t_module, temperature=config.distill_temperature)
    fixed = _data.fixed_batch(specs)
    batches = (_to_tensors(x, None, specs, None, torch.device("cpu"), "train",
                           checked=isinstance(train_src, _ArraySource))[0]
               for x, _ in _in_order(train_src, fixed or 256))
    return match_objective(mode, model, module, teacher, specs, batches,
                           logits_name if mode == "mixed" else None, config.distill_temperature,
                           config.output_kind)


def _sources(train, val, module, specs, classes, logits_name, config: FinetuneConfig, world: int,
             labels: bool = True):
    """The training and validation sources (training data sharded over ``world`` ranks), the
    number of classes — the model's, else probed from one training batch, after which the
    labels of array data are checked against it (``labels``: the objective uses them) — and
    ``specs`` with the training data's sample axes (the validation data's must agree)."""
    train_src = _as_source(train, specs, classes, config.batch_size, config.seed, world, "train", labels)
    val_src = None
    if val is not None:
        val_src = _as_source(val, specs, classes, config.batch_size, config.seed, 1, "val", labels)
    specs = _resolved(specs, train_src, "train")
    if val_src is not None:
        moved, val_moved = _data.sample_axes(specs), _data.sample_axes(_resolved(specs, val_src, "val"))
        if moved != val_moved:
            raise _data.DataMismatchError(f"the training data feeds its samples on axes {moved or 0} but the "
                             f"validation data on {val_moved or 0}; give both the same layout")
    if classes is None and labels:
        classes = _probe_classes(module, train_src, specs, logits_name)
        if isinstance(train_src, _ArraySource):
            _data.coerce_y(train_src.y, len(train_src.y), classes, what="train y")
        if isinstance(val_src, _ArraySource):
            _data.coerce_y(val_src.y, len(val_src.y), classes, what="val y")
    return train_src, val_src, classes, specs


def _adjust_dropout(module) -> dict:
    """Apply the dropout plan to ``module``; {node: (old ratio, new ratio)}."""
    dropout = {}
    for node_name, (d_o, d_r, _layer) in _dropout_plan(module).items():
        module.dropout_ratio[node_name] = d_r
        dropout[node_name] = (d_o, d_r)
    return dropout


def _freeze(module, group: str) -> set:
    """Stop the gradients of every weight in ``group`` (a frozen BatchNorm also keeps its running
    statistics); returns the frozen weight names."""
    frozen = set()
    for name, info in module.weight_info.items():
        if info.group == group:
            frozen.add(name)
            if info.op_type == "BatchNormalization":
                module.frozen_bn.add(info.layer)
    for name in frozen & set(module.param_keys):
        module.parameter(name).requires_grad_(False)
    return frozen


def _keep_bn_statistics(module, mode: str, fixed: int | None, batch_size: int,
                        choice: str | None = None) -> None:
    """Every BatchNormalization normalises with its running statistics (kept; scale and shift
    still train) when ``choice`` is "keep"; by default (None) when the run follows a teacher —
    the teacher normalises with them, and updating them from a few production inputs changes
    the function being followed whatever the weights do — and always when the model is fed
    micro-batches of ``fixed`` < ``batch_size`` samples, whose statistics are not the batch's
    (at 1: one sample's; "update" is refused there).  "update" (training mode, the batch's
    statistics) suits label-free data that is a fair sample of what the model sees: on
    Fashion-MNIST it let retraining run at the network's own rate (docs/RESULTS.md)."""
    micro = bool(fixed and fixed < batch_size)
    if choice == "update" and micro:
        raise UsageError(f"bn-statistics update needs batches of more than one sample; the model "
                         f"fixes its batch at {fixed}, so it is fed {fixed} sample(s) at a time")
    if not micro and (choice == "update" or (choice is None and mode == "labels")):
        return
    module.frozen_bn.update(info.layer for info in module.weight_info.values()
                            if info.op_type == "BatchNormalization")


def _optimizer(module, masks: dict, frozen: set, config: FinetuneConfig):
    """SGD (with momentum) or Adam over the trainable parameters; weight decay applies only to
    the prunable weights (the paper's L2 regularisation), not to biases or normalisation."""
    decay = [module.parameter(n) for n in masks if n not in frozen]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in module.params.values() if p.requires_grad and id(p) not in decay_ids]
    if not decay and not rest:
        fixed = "".join(f"; {n!r} is stored under one name in several subgraphs and stays fixed"
                        for n in module.fixed_weights)
        raise UsageError(f"finetune: nothing to train (every weight is frozen or the graph has none{fixed})")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    lr = config.resolved_lr()
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=lr)


class _Reach:
    """Which trained prunable weights no gradient has reached yet.  A layer inside an If branch
    that the training inputs never take (silero's 8 kHz model, fed 16 kHz audio) is pruned but
    cannot be retrained: the run reports it rather than pretend it was."""

    def __init__(self, module, masks: dict) -> None:
        self.module, self.masks = module, masks
        self.unreached = {n for n in masks if module.parameter(n).requires_grad}

    @torch.no_grad()
    def note(self) -> None:
        for name in [n for n in self.unreached if self.module.parameter(n).grad is not None]:
            if bool(self.module.parameter(name).grad.any()):
                self.unreached.discard(name)


class _Fixed(_Reach):
    """Han et al.'s masked step: ∇W ← ∇W ⊙ M before the optimizer, W ← W ⊙ M after it."""

    @torch.no_grad()
    def step(self, opt) -> None:
        self.note()
        for name, mask in self.masks.items():
            p = self.module.parameter(name)
            if p.grad is not None:
                p.grad.mul_(mask)
        opt.step()
        for name, mask in self.masks.items():
            self.module.parameter(name).masked_fill_(~mask, 0.0)


class _Regrow(_Reach):
    """Pruned weights may come back (Dynamic Network Surgery, Guo et al. 2016, in its
    count-preserving form).  Each prunable layer keeps a dense shadow V (pruned entries start
    at 0) and its count k of nonzeros at the start.  The forward pass sees W = V ⊙ M; the
    gradient ∂L/∂W updates V *unmasked* (straight-through), so a pruned connection that the
    loss wants grows in V; every ``REGROW_EVERY`` steps M becomes the k largest |V| (ties by
    index).  The layer never holds more than k nonzeros; which ones survive can change.  The
    ``masks`` dict passed in is updated in place, so the end-of-run check holds for the final M.
    """

    def __init__(self, module, masks: dict) -> None:
        super().__init__(module, masks)
        self.steps = 0
        self.shadow = {n: module.parameter(n).detach().clone() for n in masks}
        self.keep = {n: int(m.sum()) for n, m in masks.items()}

    @torch.no_grad()
    def step(self, opt) -> None:
        self.note()
        for name in self.masks:
            self.module.parameter(name).copy_(self.shadow[name])
        opt.step()
        self.steps += 1
        for name, mask in self.masks.items():
            p = self.module.parameter(name)
            self.shadow[name].copy_(p)
            if self.steps % REGROW_EVERY == 0 and 0 < self.keep[name] < mask.numel():
                mask.copy_(_top_k_mask(self.shadow[name], self.keep[name]))
            p.copy_(self.shadow[name]).masked_fill_(~mask, 0.0)


REGROW_EVERY = 16  # steps between mask updates of --regrow


def _top_k_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the k largest |v| (stable: equal magnitudes keep the lower flat index)."""
    flat = v.detach().abs().reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.reshape(v.shape)


def _check_masks_held(module, masks: dict) -> None:
    """Invariant of masked retraining: every pruned weight is still exactly zero."""
    for name, mask in masks.items():
        w = module.parameter(name).detach()
        if bool((w[~mask] != 0).any()):
            raise RuntimeFailure(f"internal error: pruned weights of {name!r} became nonzero")


def _probe_classes(module, source, specs, logits_name) -> int:
    x, _y, _n = next(iter(source.batches(0, 0)))
    x = _data.take(x, slice(0, max(1, _data.fixed_batch(specs) or 2)))
    xt, _ = _to_tensors(x, None, specs, None, torch.device("cpu"), "train")
    was = module.training
    module.eval()
    with torch.no_grad():
        out = module(_data.model_batch(xt, specs), outputs=[logits_name])
    module.train(was)
    if out.dim() != 2:
        raise UsageError(f"the model's output has shape {tuple(out.shape)}; classification logits (N, C) are required")
    return int(out.shape[1])


def _teacher(teacher: onnx.ModelProto, specs, classes: int, train_src):
    """The teacher graph rebuilt for evaluation, checked against the student's inputs and classes."""
    t_module = rebuild_teacher(teacher, [_data.scores_output(teacher)], specs)
    t_logits = _logits_name(t_module, default_opset(teacher))
    t_classes = _probe_classes(t_module, train_src, specs, t_logits)
    if t_classes != classes:
        raise UsageError(f"teacher scores {t_classes} classes, the model {classes}")
    return t_module, t_logits


def _train_loop(net, module, opt, masks, train_src, val_src, config, dist, device, specs, classes,
                objective: Objective, on_progress):
    history: list[dict] = []
    best_state, best_acc, best_epoch = None, -1.0, None
    masking = (_Regrow if config.regrow else _Fixed)(module, masks)
    l1_params = [module.parameter(n) for n in masks if module.parameter(n).requires_grad]
    total_steps = train_src.steps()
    base_lrs = [g["lr"] for g in opt.param_groups]

    def set_lr(progress: float) -> None:  # cosine from the base rate to 0
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed + dist.rank)
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            loss_sum = correct = seen = 0.0
            step = 0
            for xb, yb, global_n in train_src.batches(epoch, dist.rank):
                if config.lr_schedule != "constant":  # cosine | rewind
                    set_lr(((epoch - 1) * total_steps + step) / (config.epochs * total_steps))
                x, y = _to_tensors(xb, yb if objective.ce is not None else None, specs, classes,
                                   device, "train", checked=isinstance(train_src, _ArraySource))
                summed, right = _step(net, opt, masking, objective, x, y, dist.world / global_n,
                                      config.l1, l1_params, _data.fixed_batch(specs))
                step += 1
                loss_sum += summed
                correct += right
                seen += _data.n_samples(x)
                if on_progress is not None and dist.rank == 0:
                    on_progress(epoch, step, total_steps, {"loss": loss_sum / max(seen, 1)})
            loss_sum, correct, seen = dist.sum([loss_sum, correct, seen], device if device.type == "cuda" else "cpu")
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen else float("nan"),
                "train_top1": (correct / seen if seen else float("nan")) if objective.ce else None,
                "samples": int(seen),
                "lr": opt.param_groups[0]["lr"],
            }
            if val_src is not None and dist.rank == 0:
                record.update(_evaluate(module, val_src, objective, specs, classes, device))
                if config.keep_best and record["val_top1"] > best_acc:
                    best_acc, best_epoch, best_state = record["val_top1"], epoch, module.onnx_state()
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            if on_progress is not None and dist.rank == 0:
                on_progress(epoch, step, total_steps, {**record, "epoch_end": True})
    return history, best_state, best_epoch, sorted(masking.unreached | set(module.fixed_weights))


def _step(net, opt, masking, objective: Objective, x: dict, y, scale: float, l1: float,
          l1_params, fixed: int | None) -> tuple[float, int]:
    """One optimizer step on a rank's batch: the loss (a sum over samples, times ``scale`` =
    world / global batch) backpropagated micro-batch by micro-batch (``fixed`` samples at a
    time when the model fixes its batch, else all at once), the gradients accumulated, then
    the masked step.  Returns (summed loss, correct top-1 of the labels' logits)."""
    n = _data.n_samples(x)
    chunk = fixed or n
    opt.zero_grad(set_to_none=True)
    total, correct = 0.0, 0
    for start in range(0, n, chunk):
        part = _data.take(x, slice(start, start + chunk))
        yp = None if y is None else y[start:start + chunk]
        summed, outs = objective.loss(net, part, yp)
        loss = summed * scale
        if l1 > 0 and start == 0:
            loss = loss + l1 * sum(p.abs().sum() for p in l1_params)
        loss.backward()
        total += float(summed.detach())
        if objective.ce is not None:
            correct += int((outs[objective.ce].detach().argmax(1) == yp).sum())
    masking.step(opt)
    return total, correct


def _rank_divergence(module: OnnxModule, dist: _Dist, device) -> float:
    """max |w_rank − w_rank0| over every weight and statistic, reduced over ranks."""
    flat = torch.cat([module.onnx_tensor(n).detach().reshape(-1).float() for n in sorted(module.weight_info)
                      if n in module.param_keys or n in module.buffer_keys])
    ref = flat.clone()
    dist.dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1) if flat.numel() else torch.zeros(1, device=flat.device)
    dist.dist.all_reduce(diff, op=dist.dist.ReduceOp.MAX)
    return float(diff)
