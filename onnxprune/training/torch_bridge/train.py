"""Masked retraining of a pruned ONNX graph (Han et al. 2015, §3) and the torchrun/DDP path.

Invariants and maths:

* **Masks.** For every prunable weight W (Conv/ConvTranspose/Gemm/MatMul weight) the mask is
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
  a fixed batch dim B in the model every per-rank batch is exactly B, the remainder dropped.
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
import torch.nn.functional as F

from onnxprune.runtime import datasets as _data
from onnxprune.core.errors import OnnxPruneError, RuntimeFailure, UsageError
from onnxprune.training.torch_bridge.config import FinetuneConfig, FinetuneResult, ProgressFn
from onnxprune.training.torch_bridge.module import OnnxModule, build_module, default_opset
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

    @property
    def active(self) -> bool:
        return self.world > 1

    def init(self, device: torch.device) -> None:
        if self.active and not self.dist.is_initialized():
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


def _pick_device(choice: str, dist: _Dist) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", dist.local_rank if dist.active else torch.cuda.current_device())
    return torch.device("cpu")


# --- data sources -------------------------------------------------------------------------

class _ArraySource:
    """Shuffled global batches from in-memory arrays, split across ranks (see module doc)."""

    def __init__(self, ds: _data.Dataset, batch_size: int, seed: int, fixed_batch: int | None, world: int):
        self.x, self.y = ds.x, ds.y
        self.batch, self.seed, self.world = batch_size, seed, world
        self.fixed = fixed_batch
        if batch_size % world:
            raise UsageError(f"batch-size {batch_size} must be a multiple of the {world} processes")
        if fixed_batch is not None and batch_size // world != fixed_batch:
            raise UsageError(
                f"the model input has a fixed batch dimension of {fixed_batch}; use batch-size "
                f"{fixed_batch * world} (or re-export the model with a dynamic batch axis)"
            )

    def _global_batches(self, epoch: int):
        n = len(self.y)
        order = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n)
        for start in range(0, n, self.batch):
            idx = order[start:start + self.batch]
            if len(idx) < self.world or (self.fixed is not None and len(idx) < self.batch):
                continue
            yield idx

    def steps(self) -> int:
        n = len(self.y)
        full, rest = divmod(n, self.batch)
        return full + (1 if rest >= self.world and self.fixed is None else 0)

    def batches(self, epoch: int, rank: int):
        for idx in self._global_batches(epoch):
            part = idx[rank::self.world]
            yield self.x[part], self.y[part], len(idx)


class _IterableSource:
    """User batches (e.g. a DataLoader) used as given on every rank; the caller shards."""

    def __init__(self, batches: Iterable, spec: _data.InputSpec, world: int):
        if iter(batches) is batches:
            raise UsageError("train/val batches must be re-iterable (a DataLoader or list, not a generator)")
        self.src, self.spec, self.world = batches, spec, world

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


def _as_source(obj, spec, classes, batch_size, seed, world, what):
    if isinstance(obj, (str, os.PathLike)):
        obj = _data.load_npz(obj)
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(a, np.ndarray) for a in obj):
        obj = _data.Dataset(*obj)
    if isinstance(obj, _data.Dataset):
        ds = _data.check_dataset(obj, spec, classes, name=what)
        return _ArraySource(ds, batch_size, seed, spec.batch_dim, world)
    return _IterableSource(obj, spec, world)


def _to_tensors(x, y, spec, classes, device, what, checked=False):
    if isinstance(x, np.ndarray):
        if not checked:
            x = _data.coerce_x(x, spec, what=f"{what} x")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise UsageError(f"{what} batch x must be a numpy array or torch tensor, got {type(x).__name__}")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not checked:
        y = _data.coerce_y(np.asarray(y), int(x.shape[0]), classes, what=f"{what} y")
    return x.to(device), torch.from_numpy(y).to(device)


# --- graph analysis -----------------------------------------------------------------------

def _logits_name(module: OnnxModule, opset: int) -> str:
    out = module.output_names[0]
    node = module.producer(out)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
        if axis in (-1, 1):
            return node.inputs[0]
    return out


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

@torch.no_grad()
def _evaluate(module, source, logits_name, spec, classes, device) -> dict:
    was_training = module.training
    module.eval()
    correct1 = correct5 = total = 0
    try:
        if isinstance(source, _ArraySource):
            step = spec.batch_dim or 256
            it = ((source.x[i:i + step], source.y[i:i + step]) for i in range(0, len(source.y), step))
        else:
            it = ((x, y) for x, y, _ in source.batches(0, 0))
        for xb, yb in it:
            n = len(yb)
            if spec.batch_dim is not None and n < spec.batch_dim:  # pad a fixed-batch tail, ignore the pad
                reps = -(-spec.batch_dim // n)
                xb = np.concatenate([xb] * reps)[: spec.batch_dim] if isinstance(xb, np.ndarray) \
                    else torch.cat([xb] * reps)[: spec.batch_dim]
            x, _ = _to_tensors(xb, np.zeros(len(xb), np.int64), spec, None, device, "val",
                               checked=isinstance(source, _ArraySource))
            y = torch.as_tensor(np.asarray(yb.cpu() if isinstance(yb, torch.Tensor) else yb), dtype=torch.int64)
            logits = module(x, outputs=[logits_name])[:n].float().cpu()
            correct1 += int((logits.argmax(1) == y).sum())
            if logits.shape[1] >= 5:
                correct5 += int((logits.topk(5, 1).indices == y[:, None]).any(1).sum())
            total += n
    finally:
        module.train(was_training)
    return {"val_top1": correct1 / total if total else float("nan"),
            "val_top5": correct5 / total if total and classes and classes >= 5 else None}


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
    ``teacher``: the model whose outputs the distillation term follows (``config.distill``);
    same input as ``model``, same number of classes.
    """
    config = (config or FinetuneConfig()).validate()
    if config.keep_best and val is None:
        raise UsageError("finetune: keep-best needs validation data")
    if config.distill > 0 and teacher is None:
        raise UsageError("finetune: distill needs a teacher model (in compress: the dense input)")
    # Rebuild what computes the class scores; rejects unsupported ops before anything else.
    module = build_module(model, [_data.scores_output(model)])
    spec = _data.input_spec(model)
    logits_name = _logits_name(module, default_opset(model))
    classes = _data.n_classes(model)
    dist = _Dist()
    device = _pick_device(config.device, dist)

    train_src, val_src, classes = _sources(train, val, module, spec, classes, logits_name,
                                           config, dist.world)
    if config.lr_schedule != "constant" and not train_src.steps():
        raise UsageError(f"finetune: lr-schedule {config.lr_schedule} needs to know the number of training "
                         "batches; give arrays, an .npz or batches with a len() (e.g. a DataLoader)")
    teach = None
    if config.distill > 0:
        teach = _teacher(teacher, spec, classes, train_src)

    masks = {name: module.parameter(name).detach() != 0
             for name, info in module.weight_info.items() if info.prunable and name in module.param_keys}
    dropout = _adjust_dropout(module) if config.adjust_dropout else {}
    frozen = _freeze(module, config.freeze) if config.freeze else set()
    opt = _optimizer(module, masks, frozen, config)

    dist.init(device)
    try:
        module.to(device)
        if teach is not None:
            teach = (teach[0].to(device), teach[1])
        masks = {n: m.to(device) for n, m in masks.items()}
        net = module
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        history, best, best_epoch = _train_loop(
            net, module, opt, masks, train_src, val_src, config, dist, device, spec, classes,
            logits_name, on_progress, teach,
        )
        divergence = _rank_divergence(module, dist, device) if dist.active else None
    finally:
        # The DDP wrapper must go before its process group does: freeing it after
        # destroy_process_group can block forever in the reducer's destructor (gloo).
        net = None
        dist.close()

    _check_masks_held(module, masks)
    mask_stats = {n: (int(m.sum()), m.numel()) for n, m in masks.items()}
    if dist.rank != 0:
        return FinetuneResult(None, history, best_epoch, dropout, mask_stats, dist.world, dist.rank,
                              divergence, str(device))
    state = best if best is not None else module.onnx_state()
    return FinetuneResult(write_back(model, state), history, best_epoch, dropout, mask_stats,
                          dist.world, dist.rank, divergence, str(device))


def _sources(train, val, module, spec, classes, logits_name, config: FinetuneConfig, world: int):
    """The training and validation sources (training data sharded over ``world`` ranks), and
    the number of classes: the model's, else probed from one training batch, after which the
    labels of array data are checked against it."""
    train_src = _as_source(train, spec, classes, config.batch_size, config.seed, world, "train")
    val_src = None
    if val is not None:
        val_src = _as_source(val, spec, classes, config.batch_size, config.seed, 1, "val")
    if classes is None:
        classes = _probe_classes(module, train_src, spec, logits_name)
        if isinstance(train_src, _ArraySource):
            _data.coerce_y(train_src.y, len(train_src.y), classes, what="train y")
        if isinstance(val_src, _ArraySource):
            _data.coerce_y(val_src.y, len(val_src.y), classes, what="val y")
    return train_src, val_src, classes


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


def _optimizer(module, masks: dict, frozen: set, config: FinetuneConfig):
    """SGD (with momentum) or Adam over the trainable parameters; weight decay applies only to
    the prunable weights (the paper's L2 regularisation), not to biases or normalisation."""
    decay = [module.parameter(n) for n in masks if n not in frozen]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in module.params.values() if p.requires_grad and id(p) not in decay_ids]
    if not decay and not rest:
        raise UsageError("finetune: nothing to train (every weight is frozen or the graph has none)")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    lr = config.resolved_lr()
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=lr)


class _Fixed:
    """Han et al.'s masked step: ∇W ← ∇W ⊙ M before the optimizer, W ← W ⊙ M after it."""

    def __init__(self, module, masks: dict) -> None:
        self.module, self.masks = module, masks

    @torch.no_grad()
    def step(self, opt) -> None:
        for name, mask in self.masks.items():
            p = self.module.parameter(name)
            if p.grad is not None:
                p.grad.mul_(mask)
        opt.step()
        for name, mask in self.masks.items():
            self.module.parameter(name).masked_fill_(~mask, 0.0)


class _Regrow:
    """Pruned weights may come back (Dynamic Network Surgery, Guo et al. 2016, in its
    count-preserving form).  Each prunable layer keeps a dense shadow V (pruned entries start
    at 0) and its count k of nonzeros at the start.  The forward pass sees W = V ⊙ M; the
    gradient ∂L/∂W updates V *unmasked* (straight-through), so a pruned connection that the
    loss wants grows in V; every ``REGROW_EVERY`` steps M becomes the k largest |V| (ties by
    index).  The layer never holds more than k nonzeros; which ones survive can change.  The
    ``masks`` dict passed in is updated in place, so the end-of-run check holds for the final M.
    """

    def __init__(self, module, masks: dict) -> None:
        self.module, self.masks, self.steps = module, masks, 0
        self.shadow = {n: module.parameter(n).detach().clone() for n in masks}
        self.keep = {n: int(m.sum()) for n, m in masks.items()}

    @torch.no_grad()
    def step(self, opt) -> None:
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


def _probe_classes(module, source, spec, logits_name) -> int:
    x, _y, _n = next(iter(source.batches(0, 0)))
    x = x[: max(1, spec.batch_dim or 2)]
    xt, _ = _to_tensors(x, np.zeros(len(x), np.int64), spec, None, torch.device("cpu"), "train")
    was = module.training
    module.eval()
    with torch.no_grad():
        out = module(xt, outputs=[logits_name])
    module.train(was)
    if out.dim() != 2:
        raise UsageError(f"the model's output has shape {tuple(out.shape)}; classification logits (N, C) are required")
    return int(out.shape[1])


def _teacher(teacher: onnx.ModelProto, spec, classes: int, train_src):
    """The teacher graph rebuilt for evaluation, checked against the student's input and classes."""
    try:
        t_spec = _data.input_spec(teacher)
        t_module = build_module(teacher, [_data.scores_output(teacher)])
    except OnnxPruneError as exc:
        raise type(exc)(f"teacher: {exc}") from exc
    t_batch = t_spec.shape[0] if t_spec.shape else None
    if t_batch is not None and (spec.batch_dim != t_batch):
        raise UsageError(f"teacher: its input has a fixed batch of {t_batch} and the model's "
                         f"{'is dynamic' if spec.batch_dim is None else f'is {spec.batch_dim}'}; "
                         "export the teacher with a dynamic batch axis")
    same = t_spec.dtype == spec.dtype and (
        t_spec.shape is None or spec.shape is None
        or (len(t_spec.shape) == len(spec.shape)
            and all(a is None or b is None or a == b for a, b in zip(t_spec.shape, spec.shape))))
    if not same:
        raise UsageError(f"teacher input {t_spec.dtype} {t_spec.shape} does not match the "
                         f"model's {spec.dtype} {spec.shape}")
    t_logits = _logits_name(t_module, default_opset(teacher))
    t_module.eval()
    for p in t_module.parameters():
        p.requires_grad_(False)
    t_classes = _probe_classes(t_module, train_src, spec, t_logits)
    if t_classes != classes:
        raise UsageError(f"teacher scores {t_classes} classes, the model {classes}")
    return t_module, t_logits


def _distill_loss(logits, t_logits, temperature: float):
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), summed over the batch."""
    log_s = F.log_softmax(logits.float() / temperature, dim=1)
    log_t = F.log_softmax(t_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) * temperature ** 2


def _train_loop(net, module, opt, masks, train_src, val_src, config, dist, device, spec, classes,
                logits_name, on_progress, teach=None):
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
                x, y = _to_tensors(xb, yb, spec, classes, device, "train",
                                   checked=isinstance(train_src, _ArraySource))
                logits = net(x, outputs=[logits_name])
                if logits.dim() != 2:
                    raise UsageError(
                        f"tensor {logits_name!r} has shape {tuple(logits.shape)}; "
                        "classification logits (N, C) are required"
                    )
                summed = F.cross_entropy(logits, y, reduction="sum")
                if teach is not None:
                    with torch.no_grad():
                        t_logits = teach[0](x, outputs=[teach[1]])
                    if t_logits.shape != logits.shape:
                        raise UsageError(f"teacher output shape {tuple(t_logits.shape)} differs "
                                         f"from the model's {tuple(logits.shape)}")
                    summed = ((1.0 - config.distill) * summed
                              + config.distill * _distill_loss(logits, t_logits, config.distill_temperature))
                loss = summed * (dist.world / global_n)
                if config.l1 > 0:
                    loss = loss + config.l1 * sum(p.abs().sum() for p in l1_params)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                masking.step(opt)
                step += 1
                loss_sum += float(summed.detach())
                correct += float((logits.detach().argmax(1) == y).sum())
                seen += len(y)
                if on_progress is not None and dist.rank == 0:
                    on_progress(epoch, step, total_steps, {"loss": loss_sum / max(seen, 1)})
            loss_sum, correct, seen = dist.sum([loss_sum, correct, seen], device if device.type == "cuda" else "cpu")
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen else float("nan"),
                "train_top1": correct / seen if seen else float("nan"),
                "samples": int(seen),
                "lr": opt.param_groups[0]["lr"],
            }
            if val_src is not None and dist.rank == 0:
                record.update(_evaluate(module, val_src, logits_name, spec, classes, device))
                if config.keep_best and record["val_top1"] > best_acc:
                    best_acc, best_epoch, best_state = record["val_top1"], epoch, module.onnx_state()
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            if on_progress is not None and dist.rank == 0:
                on_progress(epoch, step, total_steps, {**record, "epoch_end": True})
    return history, best_state, best_epoch


def _rank_divergence(module: OnnxModule, dist: _Dist, device) -> float:
    """max |w_rank − w_rank0| over every weight and statistic, reduced over ranks."""
    flat = torch.cat([module.onnx_tensor(n).detach().reshape(-1).float() for n in sorted(module.weight_info)
                      if n in module.param_keys or n in module.buffer_keys])
    ref = flat.clone()
    dist.dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1) if flat.numel() else torch.zeros(1, device=flat.device)
    dist.dist.all_reduce(diff, op=dist.dist.ReduceOp.MAX)
    return float(diff)
