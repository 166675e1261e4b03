"""The Learner role: the policy being trained, its optimizer and its checkpoints.

It knows no algorithm. ``update`` computes per-token log-probs of the batch's response tokens
(padding-free, packed), hands them to an *objective* (a pure loss from ``pipeline.core.losses``
wrapped by the stage), and steps the optimizer. Entropy, the KL to the stage's start policy and
the pre-clip grad-norm are measured here because they need the logits and the weights.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from pipeline.core.batch import PackedBatch, groups_together, shared_prompt_tokens, to_packed
from pipeline.core.checkpoint import load_policy, saved_weights, torch_dtype, write_policy_files
from pipeline.core.files import atomic_dir
from pipeline.core.resume import (
    OPTIMIZER_DIR,
    RNG_FILE,
    Progress,
    load_optimizer_state,
    load_rng,
    save_optimizer_state,
    save_rng,
    write_point,
)
from workers.attention import PACKED_ATTENTION
from workers.output import redirect_output
from workers.weight_group import SyncPlan, WeightGroup, send
from workers.weights import FlatWeights, SharedWeights, WeightsBlock, tied_aliases

T = TypeVar("T")
try:
    _LIBC = ctypes.CDLL("libc.so.6")  # glibc's malloc_trim: Linux
except OSError:
    _LIBC = None
# the whole state on rank 0's CPU, nothing on the other ranks: what a checkpoint writer needs
GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class TokenBatch:
    """What an objective sees for one micro-batch; every tensor is ``[N]`` over packed tokens.

    ``old_log_probs`` are the policy's log-probs before this batch's first optimizer step (the
    live ones unless the update asked for them), ``ref_log_probs`` the stage's start policy's and
    ``behaviour_log_probs`` the rollout's, that sampled the rows (each None unless the update asked
    for them); all detached. ``sources``: each response token's row's source (an index into
    ``pipeline.core.batch.SOURCES``; -1 for prompt tokens).
    """

    response_mask: torch.Tensor
    advantages: torch.Tensor
    old_log_probs: torch.Tensor
    ref_log_probs: torch.Tensor | None
    sources: torch.Tensor
    behaviour_log_probs: torch.Tensor | None = None


Objective = Callable[[torch.Tensor, TokenBatch], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class UpdateSettings:
    """How :meth:`Learner.update` trains on a batch.

    ``updates_per_batch``: mini-batches, one optimizer step each. ``micro_batch_tokens``: the
    packed tokens of one forward and backward. ``with_reference``: the stage's start policy's
    log-probs for the objective, and the KL to it in the metrics (a forward of that policy).
    ``with_old_log_probs``: freeze the pre-update log-probs for the objective, a forward more when
    there are several mini-batches; an objective that does not read them can do without.
    ``with_behaviour``: the rollout's log-probs for the objective (rows sampled by an older policy).
    Metrics named ``*_max`` are maxima over the batch; the others, token means."""

    objective: Objective
    updates_per_batch: int = 1
    micro_batch_tokens: int = 4096
    with_reference: bool = True
    with_old_log_probs: bool = True
    with_behaviour: bool = False


def _micro_batches(batch: pa.RecordBatch, max_tokens: int) -> list[pa.RecordBatch]:
    """Consecutive row slices whose packed tokens stay within ``max_tokens``, counting a prompt
    once for consecutive rows of one group (:func:`~pipeline.core.batch.shared_prompt_tokens`); a
    longer single row still gets its own slice."""
    alone = (np.asarray(batch.column("prompt_ids").value_lengths())
             + np.asarray(batch.column("response_ids").value_lengths())).tolist()
    shared = shared_prompt_tokens(batch).tolist()
    slices, start, used = [], 0, 0
    for row in range(batch.num_rows):
        if row > start and used + shared[row] > max_tokens:
            slices.append(batch.slice(start, row - start))
            start, used = row, 0
        used += alone[row] if row == start else shared[row]  # a slice's first row brings its prompt
    if batch.num_rows > start:
        slices.append(batch.slice(start, batch.num_rows - start))
    return slices


def packed_token_stats(model, packed: PackedBatch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob ``[N]`` of every response token given its prompt and the response before it (0
    elsewhere), and the predictive entropy ``[N]`` there if asked. Only the positions that
    predict a response token (``packed.predictors``) go through the output layer and the
    softmax, each once. ``model`` attends with :data:`PACKED_ATTENTION`.

    A shared prompt's last position predicts the first token of every response in its group.
    Indexing with a repeated position would make the backward sum into it with CPU atomic adds,
    whose order, and so whose rounding, changes from run to run; its logits are instead computed
    once, and the log-probs read off with ``index_select``, whose backward adds in index order.
    """
    device = next(model.parameters()).device
    input_ids = packed.input_ids.to(device)
    scored = packed.response_mask.to(device).nonzero()[:, 0]
    positions, predictor_of = torch.unique(packed.predictors.to(device), return_inverse=True)  # [U], [R]
    logits = model(input_ids=input_ids[None], position_ids=packed.position_ids.to(device)[None],
                   attention_gather=packed.attention_gather.to(device),
                   attention_scatter=packed.attention_scatter.to(device),
                   logits_to_keep=positions, use_cache=False).logits[0]  # [U, V]; scoring keeps no KV cache
    log_softmax = torch.log_softmax(logits.float(), dim=-1)
    flat_index = predictor_of * log_softmax.shape[-1] + input_ids[scored]  # [R] into the flattened [U, V]
    token_log_probs = log_softmax.reshape(-1).index_select(0, flat_index)
    log_probs = token_log_probs.new_zeros(len(input_ids)).index_put((scored,), token_log_probs)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            per_position = -(log_softmax.exp() * log_softmax).sum(-1)
            entropy = per_position.new_zeros(len(input_ids)).index_put((scored,), per_position[predictor_of])
    return log_probs, entropy


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective: every rank must call it), a plain one as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum().clamp(min=1))


class Learner:
    """Runs in its own Ray actor (``ray.remote(Learner)``); plain Python for unit tests.

    Weights and optimizer state are float32 (the master copy); ``dtype`` is the compute dtype
    (``auto``: bfloat16 on a GPU), applied by autocast or, when sharded, by FSDP's mixed
    precision. A bf16 master copy would round away updates of lr 1e-6 on weights of 1e-2.
    With several ranks, calls that read or write the whole state (``state_dict``, ``save``,
    ``save_resume_point``, ``restore``) must reach every rank.
    """

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, num_threads: int | None = None,
                 gradient_checkpointing: bool = False, return_freed_memory: bool = False):
        redirect_output()
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        # Ray hands each GPU actor its own device as cuda:0 (CUDA_VISIBLE_DEVICES)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.compute_dtype = torch_dtype(dtype)
        self.rank, self.world_size, self.sharded = 0, 1, False
        self.gradient_checkpointing = gradient_checkpointing
        self.return_freed_memory = return_freed_memory  # after each load and update (a large model's)
        self.model, self.tokenizer = self._load(model_path)
        self.reference = None
        self.optimizer = None
        self.version = 0
        self.weights_block = WeightsBlock()  # rank 0's weights for rollout workers on its node
        self.weight_group: WeightGroup | None = None  # rank 0's, where weights are broadcast to engines

    def _load(self, model_path: str, dtype: torch.dtype = torch.float32, trainable: bool = True):
        model, tokenizer = load_policy(model_path, dtype)
        model.set_attn_implementation(PACKED_ATTENTION)
        if trainable and self.gradient_checkpointing:
            # keep each decoder layer's input only and recompute the rest in the backward: the
            # activations of long responses are what outgrows a GPU first. Non-reentrant, the
            # form FSDP2's per-layer units and frozen inputs work with.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = model.to(self.device)
        if self.sharded:
            self._shard(model)
        return model, tokenizer

    def _shard(self, model) -> None:
        """FSDP2 over the learner ranks: each decoder layer (the model's ``_no_split_modules``) is
        a unit whose weights are gathered just for its forward and backward, then the rest."""
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        layer_types = set(model._no_split_modules or ())
        for module in model.modules():
            if type(module).__name__ in layer_types:
                fully_shard(module, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)

    def _autocast(self):
        if self.sharded or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _token_stats(self, model, packed: PackedBatch, with_entropy: bool):
        with self._autocast():
            return packed_token_stats(model, packed, with_entropy)

    def rendezvous(self) -> tuple[str, int]:
        """An address and free port on this actor's node, for rank 0 to host the process group."""
        import ray

        address = ray.util.get_node_ip_address()
        with socket.socket() as probe:
            probe.bind((address, 0))
            return address, probe.getsockname()[1]

    def join_group(self, rank: int, world_size: int, address: str, port: int, shard: bool = False) -> None:
        """Become rank ``rank`` of ``world_size`` data-parallel learners (gloo on CPU, nccl on GPU):
        each holding the whole model, or with ``shard`` a 1/world_size shard of it (FSDP)."""
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size)
        self.rank, self.world_size, self.sharded = rank, world_size, shard
        if shard:
            self._shard(self.model)

    def load(self, model_path: str, version: int) -> None:
        """Start from a checkpoint folder (the previous stage's) as policy ``version``. The last
        stage's policy, optimizer and reference go first: never two policies in memory."""
        self.model = self.optimizer = self.reference = None
        self.model, self.tokenizer = self._load(model_path)
        self.version = version
        self._return_freed_memory()

    def _return_freed_memory(self) -> None:
        """glibc keeps the heap memory Python frees for its next allocations; after a large
        model's load or update that is gigabytes, which the roles sharing this node could use."""
        if self.return_freed_memory and _LIBC is not None:
            _LIBC.malloc_trim(0)

    def start_stage(self, reference_path: str | None, lr: float, weight_decay: float = 0.0,
                    max_grad_norm: float = 1.0) -> None:
        """Fresh optimizer, and the stage's frozen reference (for the KL): the policy the stage
        started from, read from its folder so that a resumed stage gets the same one, sharded as
        the policy is; ``None`` for a stage that never asks for the KL (its memory stays free)."""
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        self.reference = None  # the last stage's, freed before the next is read
        if reference_path is not None:
            reference = self._load(reference_path, self.compute_dtype, trainable=False)[0]  # frozen: no master copy
            self.reference = reference.eval().requires_grad_(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on CPU on rank 0, nothing on the other ranks."""
        if self.sharded:
            return get_model_state_dict(self.model, options=GATHER_TO_RANK0)
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.rank == 0 else {}

    def rollout_weights(self, same_node: bool) -> SharedWeights | FlatWeights | None:
        """The whole weights for the rollout workers, from rank 0 (every rank takes part): in
        this node's shared memory if every worker is on this node (``same_node``) and they fit
        there, else as one buffer for the object store (``workers.weights``). They are packed
        straight from the model (:meth:`_each_whole`), so the buffer is the only copy made."""
        weights, aliases = saved_weights(self.model), tied_aliases(self.model)  # a tied output layer sent once

        def pack(tensors: Iterator[torch.Tensor]) -> SharedWeights | FlatWeights:
            shared = self.weights_block.publish(weights, aliases, tensors) if same_node else None
            return shared or FlatWeights.pack(weights, aliases, tensors)

        return self._each_whole(pack)

    def weight_plan(self, bucket_bytes: int) -> SyncPlan:
        """What a sync through a weight group sends (``workers.weight_group``): the weights in
        the compute dtype, a tied output layer once."""
        return SyncPlan.build(saved_weights(self.model), self.compute_dtype, tied_aliases(self.model), bucket_bytes)

    def join_weight_group(self, address: str, port: int, world_size: int) -> None:
        """Rank 0: become the sender (rank 0) of a weight group of ``world_size`` whose store it
        serves at ``address:port`` (:meth:`rendezvous`)."""
        self.weight_group = WeightGroup(address, port, 0, world_size, self.device)

    def leave_weight_group(self) -> None:
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None

    def broadcast_weights(self, plan: SyncPlan) -> None:
        """Every rank: the weights to the weight group's engines, as ``plan`` says, each tensor
        gathered just before rank 0 packs it (:meth:`_each_whole`)."""

        def broadcast(tensors: Iterator[torch.Tensor]) -> None:
            try:
                send(self.weight_group, plan, tensors)
            except BaseException:
                self.leave_weight_group()  # its peers' waits end now, not at the group's timeout
                raise

        self._each_whole(broadcast)

    def _each_whole(self, consume: Callable[[Iterator[torch.Tensor]], T]) -> T | None:
        """Rank 0: ``consume(tensors)``, the model's :func:`saved_weights` values, each gathered
        whole as the iterator reaches it (so no rank holds the model twice); the other ranks take
        part in each gather, in the same order, and return None. Should ``consume`` fail, rank 0
        still goes through the rest of the gathers before it raises: the others are not left
        waiting in one."""
        tensors = (_whole(value) for value in saved_weights(self.model).values())
        if self.rank != 0:
            if self.sharded:
                collections.deque(tensors, maxlen=0)
            return None
        try:
            return consume(tensors)
        except BaseException:
            if self.sharded:
                collections.deque(tensors, maxlen=0)
            raise

    def close(self) -> None:
        """Free what would outlive this actor: the weights' shared-memory block, the weight group."""
        self.weights_block.close()
        self.leave_weight_group()

    def _write_policy(self, folder: Path | None) -> None:
        """Every rank: the policy's Hugging Face files into ``folder``, which rank 0 writes (the
        others pass None), each tensor gathered as it is written (:meth:`_each_whole`)."""
        self._each_whole(lambda tensors: write_policy_files(self.model, self.tokenizer, folder, tensors))

    def save(self, folder: str) -> str | None:
        """Write a Hugging Face folder (atomically, by rank 0) and return its path; every rank
        takes part."""
        if self.rank != 0:
            return self._write_policy(None)
        with atomic_dir(folder) as tmp:
            self._write_policy(tmp)
        return str(Path(folder).absolute())

    def save_resume_point(self, run_dir: str, progress: Progress, extra_files: dict[str, bytes] | None = None
                          ) -> str | None:
        """A resume point (``pipeline.core.resume``) with the policy, the optimizer state, each
        rank writing its shard, the RNG and the driver's ``extra_files`` (name -> contents); every
        rank takes part, rank 0 returns its folder. The point's folder must be one every rank can
        write: on several nodes, a shared file system, as for the rest of the run folder."""

        def write(folder: Path | None) -> None:
            if self.world_size > 1:  # rank 0 chose the temporary folder the point is filled in
                shared = [str(folder) if folder else None]
                dist.broadcast_object_list(shared, src=0)
                folder = Path(shared[0])
            self._write_policy(folder if self.rank == 0 else None)
            save_optimizer_state(self.model, self.optimizer, folder / OPTIMIZER_DIR)
            if self.rank == 0:
                save_rng(folder / RNG_FILE)
                for name, contents in (extra_files or {}).items():
                    (folder / name).write_bytes(contents)

        if self.rank != 0:
            return write(None)
        return str(write_point(Path(run_dir), progress, write))

    def restore(self, folder: str) -> None:
        """After ``load(folder)`` and ``start_stage``: the optimizer state and RNG of the point,
        each rank reading the parts of the optimizer state it holds, whatever the number of ranks
        that saved it."""
        load_optimizer_state(self.model, self.optimizer, Path(folder) / OPTIMIZER_DIR)
        load_rng(Path(folder) / RNG_FILE)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def _detached_log_probs(self, model, micro: list[PackedBatch]) -> list[torch.Tensor]:
        return [self._token_stats(model, packed, with_entropy=False)[0] for packed in micro]

    def _my_micro_batches(self, mini: pa.RecordBatch, max_tokens: int) -> list[PackedBatch | None]:
        """This rank's micro-batches of ``mini``: ``rank, rank + world_size, ...``. Sharded ranks
        must all run as many forwards and backwards (each gathers the weights layer by layer), so
        a rank with fewer gets ``None``s, to compute with zero weight."""
        micro = _micro_batches(mini, max_tokens)
        mine: list[PackedBatch | None] = [to_packed(m) for m in micro[self.rank :: self.world_size]]
        if self.sharded:
            mine += [None] * (math.ceil(len(micro) / self.world_size) - len(mine))
        return mine

    def update(self, batch: pa.RecordBatch, settings: UpdateSettings) -> dict[str, float]:
        """Optimizer step(s) on ``batch``; returns loss, grad-norm, entropy, the objective's
        metrics and, ``settings.with_reference``, the KL to the stage's start policy.

        The batch's rows are split into ``updates_per_batch`` mini-batches (one optimizer step
        each) and each mini-batch into micro-batches of at most ``micro_batch_tokens`` tokens whose
        losses are weighted by their share of the mini-batch's response tokens, so the step sees
        one token mean. With several learners every rank makes the same split and takes micro-
        batches ``rank, rank + world_size, ...``; gradients and metric sums are summed over the
        ranks before the clip and the step, so each rank steps exactly as a single learner would.
        A non-finite loss or grad-norm skips the step (on every rank alike) and is counted.
        """
        started = time.perf_counter()
        self.model.train()
        objective = settings.objective
        mini_size = math.ceil(batch.num_rows / settings.updates_per_batch)
        # within a mini-batch the order of rows does not change its loss; a group's rows side by
        # side share their prompt in one micro-batch
        minis = [groups_together(batch.slice(i, mini_size)) for i in range(0, batch.num_rows, mini_size)]
        mine = [self._my_micro_batches(mini, settings.micro_batch_tokens) for mini in minis]
        real = [[packed is not None for packed in micro] for micro in mine]
        filler = to_packed(batch.slice(0, 1)) if self.sharded else None  # a sharded rank's stand-in, weighted 0
        packed_minis = [[filler if packed is None else packed for packed in micro] for micro in mine]
        # With one update per batch the pre-update log-probs are the live ones, detached: no
        # extra forward. With several, they must be frozen before the first step.
        old = ([self._detached_log_probs(self.model, micro) for micro in packed_minis]
               if len(minis) > 1 and settings.with_old_log_probs else None)
        if settings.with_reference and self.reference is None:
            raise RuntimeError("update asks for the KL to the stage's start policy, but start_stage was given none")
        ref = [self._detached_log_probs(self.reference, micro) if settings.with_reference else [None] * len(micro)
               for micro in packed_minis]
        # FSDP averages gradients over the ranks; the step needs their sum
        grad_scale = float(self.world_size) if self.sharded else 1.0

        sums: dict[str, float] = {}
        skipped = 0
        for mini_index, (mini, micro) in enumerate(zip(minis, packed_minis)):
            total_tokens = float(np.asarray(mini.column("response_ids").value_lengths()).sum())
            self.optimizer.zero_grad(set_to_none=True)
            local: dict[str, float] = {"loss": 0.0}
            for micro_index, (packed, ref_lp) in enumerate(zip(micro, ref[mini_index])):
                log_probs, entropy = self._token_stats(self.model, packed, with_entropy=True)
                mask = packed.response_mask.to(self.device)
                old_lp = old[mini_index][micro_index] if old else log_probs.detach()
                behaviour = packed.behaviour_logprobs.to(self.device) if settings.with_behaviour else None
                tokens = TokenBatch(mask, packed.advantages.to(self.device), old_lp, ref_lp,
                                    packed.sources.to(self.device), behaviour)
                loss, metrics = objective(log_probs, tokens)
                share = float(mask.sum()) / max(total_tokens, 1.0) if real[mini_index][micro_index] else 0.0
                (loss * share * grad_scale).backward()
                if not share:
                    continue
                metrics = {**metrics, "loss": loss.item(), "entropy": _masked_mean(entropy, mask)}
                if ref_lp is not None:
                    k3 = torch.exp(ref_lp - log_probs.detach()) - (ref_lp - log_probs.detach()) - 1
                    metrics["kl_to_start"] = _masked_mean(k3, mask)
                for key, value in metrics.items():
                    local[key] = max(local.get(key, value), value) if key.endswith("_max") else \
                        local.get(key, 0.0) + value * share
            if self.world_size > 1:
                local = self._sum_over_ranks(local)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            grad_norm = float(grad_norm.full_tensor() if self.sharded else grad_norm)
            if math.isfinite(local["loss"]) and math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                skipped += 1
            for key, value in local.items():
                sums[key] = max(sums.get(key, value), value) if key.endswith("_max") else \
                    sums.get(key, 0.0) + value / len(minis)
            sums["grad_norm"] = max(sums.get("grad_norm", 0.0), grad_norm)
        # spent: freed now, not at the next update, so that the sync, the rollout sharing this
        # device and the checkpoints have their memory
        self.optimizer.zero_grad(set_to_none=True)
        self._return_freed_memory()
        self.version += 1
        tokens = sum(np.asarray(batch.column(c).value_lengths()).sum() for c in ("prompt_ids", "response_ids"))
        elapsed = time.perf_counter() - started
        sums.update(skipped_updates=float(skipped), learner_tokens_per_s=float(tokens) / elapsed,
                    policy_version=self.version)
        return sums

    def _sum_over_ranks(self, local: dict[str, float]) -> dict[str, float]:
        """Sum the metric sums over the ranks (an all-gather: a rank that computed nothing has no
        metric keys) and, unless FSDP already reduced them, the gradients (a rank without a
        micro-batch adds zeros)."""
        if not self.sharded:
            params = [p for p in self.model.parameters() if p.requires_grad]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            for param, chunk in zip(params, flat.split([g.numel() for g in grads])):
                param.grad = chunk.view_as(param)
        gathered: list[dict[str, float]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(gathered, local)
        return {key: max(g[key] for g in gathered if key in g) if key.endswith("_max") else
                sum(g.get(key, 0.0) for g in gathered) for key in set().union(*gathered)}

    @torch.no_grad()
    def response_log_probs(self, batch: pa.RecordBatch) -> list[np.ndarray]:
        """Per-row log-probs of the response tokens under the current weights."""
        self.model.eval()
        packed = to_packed(batch)
        log_probs, _ = self._token_stats(self.model, packed, with_entropy=False)
        return packed.unpack(log_probs)
