"""`gptcore plan`'s model: per-GPU memory of a training layout, before anything is launched, and the
layouts of a GPU count that fit, ranked by a simple throughput model.

Bytes per GPU, as gptcore's trainer keeps them (e: the precision's bytes, 2 for bf16/fp16, 4 for fp32;
P: the parameters this rank holds):
- parameters: e P. The first pipeline stage holds wte and wpe, the last ln_f and a copy of wte (the
  head is tied to it); tensor parallelism splits wte's rows, the qkv/fc rows and proj columns.
- gradients: float32 (4 P) whatever the precision: DataParallel's main_grad buckets, or .grad / the
  float32 main_grad in one process. ZeRO-2 keeps a 4 P / dp shard between steps, but gptcore's
  buckets are whole while the backward runs (counted under buffers); ZeRO-3 4 P / dp.
- optimizer: AdamW's float32 moments (8 P) and, for half params, a float32 master (4 P); under ZeRO
  1..3 float32 masters of every param and the moments, 12 P / dp.
- activations: what the backward keeps per micro batch and layer with gptcore's kernels (below),
  times the micro batches in flight under 1F1B (stage i of pp holds min(pp - i, m)).
- logits: the last stage's [b, s, V / tp] logits kept for the cross-entropy, and their gradient.
- buffers: ZeRO's all-gather scratch (a bucket of params), ZeRO-2's whole grad buckets during the
  backward, ZeRO-3's gathered layers; the backward's working memory (a layer's activation grads and
  weight grad, the recomputed layer under recompute=full).

Activations per layer and micro batch (s seq, b micro batch, h n_embd, a heads, t tp; Korthikanti et
al. 2022 count 34 sbh + 5 a s^2 b bytes for 16-bit): gptcore's attention is flash-style and keeps
only q, k, v, its output and a float32 logsumexp, never the a s^2 b scores; dropout keeps a byte
mask after each sublayer and none inside attention (its kernel regenerates it from a seed). Saved:
the block input and the post-attention residual (ln_1's and ln_2's inputs), the two layer-norm
outputs (the qkv and fc inputs), q, k, v, the attention output, its merged copy (proj's input), the
GELU input and output: e sbh (4 + 13 / t) + 4 a s b / t + 16 s b. With sequence parallelism the two
residuals and the layer-norm statistics are divided by t, the layer-norm outputs are not (the
column-parallel linears keep their gathered input): e sbh (2 + 2 / t + 13 / t). recompute=selective
reruns ln_1, qkv and attention: e sbh (2 r + 1 + 9 / t) with r = 1 / t under sequence parallelism,
1 otherwise; recompute=full keeps each block's input, e sbh r.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass

from gptcore.model import PRESETS, GPTConfig
from gptcore.training.config import ConfigError, TrainConfig, config_values

GIB = 2**30
# What a GPU process holds besides tensors: the CUDA context and kernels (~0.5 GiB), cuBLAS and NCCL
# workspaces and NCCL's communicator buffers.
FRAMEWORK_OVERHEAD = 2 * GIB
# The share of the GPU kept free for the caching allocator's fragmentation and allocations not modelled.
MARGIN = 0.10
GPUS_PER_NODE = 8
DEFAULT_PEAK_TFLOPS = 312.0  # A100 dense bf16
ZERO_STAGES = (0, 1, 2, 3)
RECOMPUTE = ("none", "selective", "full")
MICRO_BATCHES = range(1, 9)
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_SIZE = re.compile(r"\s*([0-9.]+)\s*([KMGT]i?B?|)\s*", re.IGNORECASE)
_UNITS = {"": GIB, "k": 2**10, "m": 2**20, "g": GIB, "t": 2**40}


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    zero_stage: int
    recompute: str
    micro_batch_size: int
    sequence_parallel: bool

    def describe(self) -> str:
        sp = " sp" if self.sequence_parallel else ""
        return (
            f"tp {self.tp} x pp {self.pp} x dp {self.dp}{sp}, zero {self.zero_stage}, recompute {self.recompute},"
            f" micro batch {self.micro_batch_size}"
        )


@dataclass(frozen=True)
class StageMemory:
    """Bytes one GPU of pipeline stage `stage` holds at its peak."""

    stage: int
    in_flight: int  # micro batches whose activations the stage holds at once
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    buffers: int  # while the backward runs
    update_buffers: int  # while the optimizer step runs (the activations are gone by then)
    overhead: int

    @property
    def static(self) -> int:
        """What lives between steps: parameters, gradients, optimizer state."""
        return self.parameters + self.gradients + self.optimizer

    @property
    def dynamic(self) -> int:
        """What a step adds at its peak: activations, logits, buffers and working memory in the
        backward, or the optimizer step's buffers."""
        return max(self.activations + self.logits + self.buffers, self.update_buffers)

    @property
    def total(self) -> int:
        return self.static + self.dynamic + self.overhead


@dataclass(frozen=True)
class Plan:
    layout: Layout
    stages: tuple[StageMemory, ...]
    gpu_memory: int
    micro_batches: int  # per step on each pipeline (gradient accumulation steps)
    step_seconds: float  # the throughput model's estimate

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def usable(self) -> int:
        return int(self.gpu_memory * (1 - MARGIN))

    @property
    def fits(self) -> bool:
        return self.peak.total <= self.usable

    def to_dict(self) -> dict:
        return {
            "layout": dataclasses.asdict(self.layout),
            "fits": self.fits,
            "peak_bytes": self.peak.total,
            "peak_stage": self.peak.stage,
            "usable_bytes": self.usable,
            "micro_batches_per_step": self.micro_batches,
            "step_seconds": self.step_seconds,
            "stages": [dataclasses.asdict(s) | {"total": s.total} for s in self.stages],
        }


def parse_size(text: str) -> int:
    """ "80GB", "80GiB", "80G", "80" -> bytes. GB is read as GiB: an "80GB" GPU has 81920 MiB."""
    match = _SIZE.fullmatch(str(text))
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--gpu-memory: {text!r} is not a size like 80GB, 40GiB or 24G")
    return int(float(match[1]) * _UNITS[match[2][:1].lower()])


def load_plan_config(config: str | None, overrides: list[str] | dict) -> tuple[TrainConfig, GPTConfig]:
    """The training config and model a plan is made for (checked as a training config without its
    layout, so that a layout the planner then rejects is explained by the planner)."""
    values = config_values(config, overrides)
    zero = values.get("zero_stage", 0)
    cfg = TrainConfig(**(values | {"zero_stage": 0 if zero == 3 else zero})).validate()
    cfg.zero_stage = zero
    return cfg, cfg.model_config(cfg.vocab_size or PRESETS[cfg.model]["vocab_size"])


def layer_parameters(model: GPTConfig, tp: int) -> int:
    """The parameters of one block a tensor-parallel rank holds."""
    C, b = model.n_embd, int(model.bias)
    split = 12 * C * C + b * 7 * C  # qkv and fc rows, proj columns with the qkv and fc biases
    replicated = 2 * (C + b * C) + b * 2 * C  # two layer norms; the proj biases
    return split // tp + replicated


def stage_parameters(model: GPTConfig, tp: int, pp: int, stage: int) -> tuple[int, int]:
    """(parameters stage `stage` of pp holds on a tp rank, its largest parameter)."""
    C = model.n_embd
    wte = model.padded_vocab_size * C // tp
    count = model.n_layer // pp * layer_parameters(model, tp)
    largest = 4 * C * C // tp
    if stage == 0:
        count += wte + model.n_positions * C
    if stage == pp - 1:
        count += (C + int(model.bias) * C) + (wte if pp > 1 else 0)
    if stage in (0, pp - 1):
        largest = max(largest, wte)
    return count, largest


def layer_activations(model: GPTConfig, layout: Layout, seq_len: int, e: int) -> int:
    """Bytes one block keeps for the backward, per micro batch (see the module docstring)."""
    s, b, h, a, t = seq_len, layout.micro_batch_size, model.n_embd, model.n_head, layout.tp
    sbh = s * b * h
    r = 1 / t if layout.sequence_parallel else 1  # the residual stream's share on this rank
    masks = 2 * sbh * r if model.dropout > 0 else 0
    if layout.recompute == "full":
        return int(e * sbh * r)
    if layout.recompute == "selective":
        return int(e * sbh * (2 * r + 1 + 9 / t) + 8 * s * b * r + masks)
    return int(e * sbh * (2 * r + 2 + 13 / t) + 4 * a * s * b / t + 16 * s * b * r + masks)


def stage_memory(cfg: TrainConfig, model: GPTConfig, layout: Layout, stage: int, micro_batches: int) -> StageMemory:
    tp, pp, dp, zero = layout.tp, layout.pp, layout.dp, layout.zero_stage
    e = PRECISION_BYTES[cfg.precision]
    alone = tp * pp * dp == 1
    P, largest = stage_parameters(model, tp, pp, stage)
    s, b, h = cfg.seq_len, layout.micro_batch_size, model.n_embd
    sbh = s * b * h
    r = 1 / tp if layout.sequence_parallel else 1
    first, last = stage == 0, stage == pp - 1

    parameters = e * P // (dp if zero == 3 else 1)
    gradients = 4 * P // (dp if zero >= 2 else 1)
    optimizer = 12 * P // dp if zero else (8 + (4 if e < 4 else 0)) * P
    buckets = min(P, int(cfg.ddp_bucket_mb * 2**18) + largest)  # a DataParallel bucket's elements
    # ZeRO-2's grad buckets are whole through the backward; ZeRO-3 gathers a layer's params (and the
    # next one's) and reduce-scatters a bucket of grads; ZeRO 1 and 2 gather the updated params a
    # bucket at a time after the update.
    buffers = {0: 0, 1: 0, 2: 4 * P, 3: 2 * e * P // (model.n_layer // pp) + 4 * buckets}[zero]
    update_buffers = e * buckets if zero in (1, 2) else 0
    if not alone or e < 4:
        buffers += e * largest  # a param's fresh .grad before it is added into the float32 main_grad

    in_flight = min(pp - stage, micro_batches)
    per_micro = model.n_layer // pp * layer_activations(model, layout, s, e)
    if first:
        per_micro += 8 * s * b + (sbh * r if model.dropout > 0 else 0)  # token ids; embedding dropout mask
    if not last:
        per_micro += int(e * sbh * r)  # the stage's output, kept for its backward
    activations = in_flight * per_micro
    # The backward's working memory: the recomputed block (recompute), the grad of the MLP's [s, b, 4h]
    # activation and the incoming and outgoing grads of the residual stream.
    working = int(e * sbh * (4 / tp + 2 * r))
    if layout.recompute != "none":
        working += layer_activations(model, dataclasses.replace(layout, recompute="none"), s, e)
    if not last and pp > 1:
        working += int(2 * e * sbh * r)  # the received activation grad and the one sent on
    buffers += working

    logits = 0
    if last:
        rows = model.padded_vocab_size // tp
        # ln_f's input and output (the head's input: gathered under sequence parallelism), the logits
        # and, in the backward, their grad; vocab-parallel cross-entropy computes in float32
        logits = int(e * sbh * (r + 1)) + 2 * e * s * b * rows + 16 * s * b
        if tp > 1:
            logits += (8 if e < 4 else 4) * s * b * rows
    return StageMemory(
        stage,
        in_flight,
        parameters,
        gradients,
        optimizer,
        activations,
        logits,
        buffers,
        update_buffers,
        FRAMEWORK_OVERHEAD,
    )


def step_seconds(cfg: TrainConfig, model: GPTConfig, layout: Layout, micro_batches: int, peak_tflops: float) -> float:
    """The throughput model (a ranking, not a promise): the step's 6 N tokens FLOPs over the GPUs'
    peak, times (1 + the extra forward of recompute / 3) (full: a whole forward; selective: qkv and
    attention, (6 h + 2 s) / (24 h + 4 s) of one), the 1F1B bubble (1 + (pp - 1) / m), tensor
    parallelism's all-reduces (1 + 0.05 (tp - 1)), ZeRO-3's parameter gathers (x 1.2) and the GEMM
    efficiency of small micro batches (1 + 512 / (micro batch x seq))."""
    gpus = layout.tp * layout.pp * layout.dp
    s, h = cfg.seq_len, model.n_embd
    compute = 6 * model.num_parameters * cfg.global_batch_size * s / (gpus * peak_tflops * 1e12)
    extra = {"none": 0.0, "selective": (6 * h + 2 * s) / (24 * h + 4 * s), "full": 1.0}[layout.recompute]
    factor = (1 + extra / 3) * (1 + (layout.pp - 1) / micro_batches) * (1 + 0.05 * (layout.tp - 1))
    factor *= (1.2 if layout.zero_stage == 3 else 1.0) * (1 + 512 / (layout.micro_batch_size * s))
    return compute * factor


def plan(cfg: TrainConfig, model: GPTConfig, gpus: int, gpu_memory: int, peak_tflops: float | None = None) -> Plan:
    """The plan of the layout cfg asks for on `gpus` GPUs of gpu_memory bytes each."""
    tp, pp = cfg.tensor_parallel, cfg.pipeline_parallel
    if gpus < 1 or gpus % (tp * pp):
        raise ConfigError(f"--gpus ({gpus}) must be a multiple of tensor_parallel x pipeline_parallel = {tp * pp}")
    layout = Layout(
        tp, pp, gpus // (tp * pp), cfg.zero_stage, cfg.recompute, cfg.micro_batch_size, cfg.sequence_parallel
    )
    problem = layout_problem(cfg, model, layout)
    if problem:
        raise ConfigError(problem)
    return _plan(cfg, model, layout, gpu_memory, peak_tflops or cfg.peak_tflops or DEFAULT_PEAK_TFLOPS)


def _plan(cfg: TrainConfig, model: GPTConfig, layout: Layout, gpu_memory: int, peak_tflops: float) -> Plan:
    m = cfg.global_batch_size // (layout.micro_batch_size * layout.dp)
    stages = tuple(stage_memory(cfg, model, layout, i, m) for i in range(layout.pp))
    return Plan(layout, stages, gpu_memory, m, step_seconds(cfg, model, layout, m, peak_tflops))


def layout_problem(cfg: TrainConfig, model: GPTConfig, layout: Layout) -> str | None:
    """Why gptcore cannot run this layout (parallel.layout.check_layout's rules), or None."""
    if model.n_head % layout.tp or model.padded_vocab_size % layout.tp:
        return f"tensor_parallel {layout.tp} does not divide n_head ({model.n_head}) and the padded vocabulary"
    if model.n_layer % layout.pp:
        return f"pipeline_parallel {layout.pp} does not divide n_layer ({model.n_layer})"
    if cfg.global_batch_size % (layout.micro_batch_size * layout.dp):
        return (
            f"global_batch_size ({cfg.global_batch_size}) is not a multiple of micro_batch_size x dp"
            f" = {layout.micro_batch_size} x {layout.dp}"
        )
    if layout.sequence_parallel and (layout.tp == 1 or cfg.seq_len % layout.tp):
        return f"sequence_parallel needs tensor_parallel > 1 dividing seq_len ({cfg.seq_len})"
    if layout.zero_stage not in ZERO_STAGES:
        return f"zero_stage must be one of {ZERO_STAGES}, got {layout.zero_stage}"
    if layout.zero_stage == 3 and layout.pp > 1:
        return "zero_stage 3 does not compose with pipeline parallelism (the trainer refuses it)"
    return None


def search(
    cfg: TrainConfig,
    model: GPTConfig,
    gpus: int,
    gpu_memory: int,
    peak_tflops: float | None = None,
    gpus_per_node: int = GPUS_PER_NODE,
) -> list[Plan]:
    """Every layout of `gpus` GPUs that fits, fastest first by the throughput model: tp a divisor of
    8 within a node, pp dividing n_layer, dp = gpus / (tp pp), ZeRO 0..3 (1..3 only with dp > 1),
    recompute none / selective / full, micro batch 1..8 dividing the global batch per dp rank,
    sequence parallelism on and off with tp > 1."""
    peak = peak_tflops or cfg.peak_tflops or DEFAULT_PEAK_TFLOPS
    fitting = []
    tps = [t for t in (1, 2, 4, 8) if t <= min(gpus_per_node, gpus)]
    pps = [p for p in range(1, model.n_layer + 1) if model.n_layer % p == 0]
    for tp, pp, zero, recompute, micro, sp in itertools.product(
        tps, pps, ZERO_STAGES, RECOMPUTE, MICRO_BATCHES, (False, True)
    ):
        if gpus % (tp * pp) or (sp and tp == 1):
            continue
        layout = Layout(tp, pp, gpus // (tp * pp), zero, recompute, micro, sp)
        if (zero and layout.dp == 1) or layout_problem(cfg, model, layout):
            continue
        candidate = _plan(cfg, model, layout, gpu_memory, peak)
        if candidate.fits:
            fitting.append(candidate)
    return sorted(fitting, key=lambda p: (p.step_seconds, p.peak.total))
