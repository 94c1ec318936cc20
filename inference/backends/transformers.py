"""The transformers backend: step-level batched generation over a transformers causal LM.

Requests join and leave the running batch between decoding steps. Every row keeps its own
attention mask (left padding) and position ids in one shared KV cache, the way left-padded
batched `generate` works, so a request arriving mid-way waits for one step, not for another
user's whole reply. Requests with different sampling settings and lengths share batches.

A prompt longer than `prefill_chunk` tokens is prefilled in chunks, one chunk per step between
decoding steps (as vLLM and llama.cpp do), so one user's long prompt delays the others' next
tokens by one chunk's forward, not by the whole prompt.

This module knows nothing of Django, Redis or websockets: the worker feeds it requests and
forwards the text pieces it returns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..sampling import PENALTY_WINDOW
from .base import Backend, GenerationRequest, StepEvent, merge_events

logger = logging.getLogger(__name__)


class IncrementalDecoder:
    """Turns token ids into text pieces without ever splitting a UTF-8 character."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = None
        if backend is not None:
            try:
                from tokenizers.decoders import DecodeStream

                self._stream = DecodeStream(skip_special_tokens=True)
            except ImportError:  # pragma: no cover - old tokenizers
                self._stream = None
        self._ids: list[int] = []
        self._emitted = ""

    def step(self, token_id: int) -> str:
        if self._stream is not None:
            return self._stream.step(self._backend, token_id) or ""
        # Slow tokenizers: decode everything and emit the new suffix once it is whole.
        self._ids.append(token_id)
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self._emitted) :]
        self._emitted = text
        return piece


@dataclass
class _Row:
    request: GenerationRequest
    decoder: IncrementalDecoder
    next_token: int = -1
    next_position: int = 0
    generated: int = 0
    first_token_at: float | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=PENALTY_WINDOW))  # for penalties
    generator: torch.Generator | None = None  # per-request RNG when a seed is given


@dataclass
class _Prefill:
    """A long prompt being prefilled chunk by chunk in its own cache."""

    request: GenerationRequest
    cache: DynamicCache
    done: int = 0


class BatchEngine(Backend):
    """Continuous batching over one model: call `add`, then `step` until `has_work` is false."""

    name = "transformers"

    def __init__(self, model, tokenizer, max_batch: int = 16, prefill_chunk: int = 128, max_adapters: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.device = next(model.parameters()).device
        self.pending: deque[GenerationRequest] = deque()
        self.prefilling: list[_Prefill] = []
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [batch, cache_len] of 0/1
        self.stop_ids = stop_token_ids(model, tokenizer)
        self._cancelled: set[str] = set()
        self.max_adapters = max_adapters
        self.adapters: dict[str, str] = {}  # name → folder, least recently used first

    # --- public API ------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.pending or self.prefilling or self.rows)

    @property
    def active_count(self) -> int:
        return len(self.rows)

    @property
    def load(self) -> int:
        return len(self.pending) + len(self.prefilling) + len(self.rows)

    def add(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise ValueError("A request needs at least one prompt token.")
        self.pending.append(request)

    def cancel(self, request_id: str) -> None:
        """Stop a request; it is reported with finish_reason 'cancelled' by the next step."""
        self._cancelled.add(request_id)

    def add_adapter(self, name: str, folder) -> bool:
        """Load a peft LoRA adapter over the model (once; a few MB, not a copy of the model).
        Rows in one batch may each use a different adapter or none (peft's mixed-adapter
        batches), so tuned models share batches with their base."""
        from pathlib import Path

        folder = str(folder)
        if self.adapters.get(name) == folder:
            self.adapters[name] = self.adapters.pop(name)  # most recently used
            return True
        if not (Path(folder) / "adapter_config.json").is_file():
            return False
        from peft import PeftModel

        if name in self.adapters:  # the folder changed: drop the old weights first
            self._delete_adapter(name)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(folder, adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, is_trainable=False)
        self.model.eval()
        self.adapters[name] = folder
        self._evict_adapters(keep=name)
        return True

    def _evict_adapters(self, keep: str) -> None:
        in_use = {r.adapter for r in self.pending} | {p.request.adapter for p in self.prefilling}
        in_use |= {row.request.adapter for row in self.rows}
        for name in list(self.adapters):
            if len(self.adapters) <= self.max_adapters:
                break
            if name != keep and name not in in_use:
                self._delete_adapter(name)

    def _delete_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.adapters[name]

    def _adapter_kwargs(self, requests: list[GenerationRequest]) -> dict:
        """Which adapter each row of a forward uses ("__base__": none), once any is loaded."""
        if not self.adapters:
            return {}
        return {"adapter_names": [r.adapter or "__base__" for r in requests]}

    def fail_all(self, error: str) -> list[StepEvent]:
        """After a step raised (out of memory, a broken model): end every request with `error`
        and start again from an empty batch, so that one failure does not stop the worker."""
        events = [StepEvent(r.request.id, finish_reason="error", error=error) for r in self.rows + self.prefilling]
        events += [StepEvent(r.id, finish_reason="error", error=error) for r in self.pending]
        self.rows, self.cache, self.mask = [], None, None
        self.pending.clear()
        self.prefilling.clear()
        self._cancelled.clear()
        return events

    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """Admit waiting requests (prefill), then decode one token for every running row."""
        events: list[StepEvent] = []
        events += self._drop_cancelled()
        short = []
        while self.pending and len(self.rows) + len(self.prefilling) + len(short) < self.max_batch:
            request = self.pending.popleft()
            if len(request.prompt_ids) > self.prefill_chunk:
                self.prefilling.append(_Prefill(request, DynamicCache()))
            else:
                short.append(request)
        if short:
            events += self._prefill(short)
        if self.prefilling:
            events += self._prefill_chunk()
        events += self._finish_rows(events)
        if self.rows:
            events += self._decode()
            events += self._finish_rows(events)
        return merge_events(events)

    # --- internals -------------------------------------------------------------------------
    def _drop_cancelled(self) -> list[StepEvent]:
        if not self._cancelled:
            return []
        events = []
        for request in [r for r in self.pending if r.id in self._cancelled]:
            self.pending.remove(request)
            events.append(StepEvent(request.id, finish_reason="cancelled"))
        for prefill in [p for p in self.prefilling if p.request.id in self._cancelled]:
            self.prefilling.remove(prefill)
            events.append(StepEvent(prefill.request.id, finish_reason="cancelled"))
        keep = [i for i, row in enumerate(self.rows) if row.request.id not in self._cancelled]
        for row in self.rows:
            if row.request.id in self._cancelled:
                events.append(StepEvent(row.request.id, finish_reason="cancelled"))
        self._cancelled.clear()
        if len(keep) != len(self.rows):
            self._keep_rows(keep)
        return events

    def _prefill(self, requests: list[GenerationRequest]) -> list[StepEvent]:
        """Prefill requests that arrived together in one left-padded forward (a burst of users
        waits one forward, not one per user); a request that fails alone fails alone."""
        try:
            return self._prefill_together(requests)
        except Exception as exc:
            if len(requests) == 1:
                logger.exception("prefill failed for %s", requests[0].id)
                error = f"Generation failed while reading the prompt ({type(exc).__name__})."
                return [StepEvent(requests[0].id, finish_reason="error", error=error)]
            return [event for request in requests for event in self._prefill([request])]

    def _prefill_together(self, requests: list[GenerationRequest]) -> list[StepEvent]:
        longest = max(len(r.prompt_ids) for r in requests)
        ids = torch.zeros((len(requests), longest), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(requests), longest), dtype=torch.long, device=self.device)
        for i, request in enumerate(requests):
            n = len(request.prompt_ids)
            ids[i, longest - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[i, longest - n :] = 1
        kwargs = {}
        if len(requests) > 1:
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        # logits_to_keep=1: only the last position's logits; all of them would be
        # prompts x length x vocabulary floats (126 MB for 16 prompts of 40 tokens).
        kwargs.update(self._adapter_kwargs(requests))
        out = self.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1, **kwargs)
        rows = [self._new_row(request) for request in requests]
        tokens = sample(out.logits[:, -1, :].float(), rows)
        self._merge(rows, out.past_key_values, mask)
        return [self._accept(row, int(token)) for row, token in zip(rows, tokens, strict=True)]

    def _new_row(self, request: GenerationRequest) -> _Row:
        row = _Row(request=request, decoder=IncrementalDecoder(self.tokenizer))
        row.next_position = len(request.prompt_ids)
        row.recent.extend(request.prompt_ids[-PENALTY_WINDOW:])
        if request.seed is not None:
            row.generator = torch.Generator(device=self.device).manual_seed(int(request.seed))
        return row

    def _prefill_chunk(self) -> list[StepEvent]:
        """Run one chunk of the oldest long prompt; when its last chunk is done, sample its first
        token and move it into the running batch."""
        prefill = self.prefilling[0]
        request = prefill.request
        chunk = request.prompt_ids[prefill.done : prefill.done + self.prefill_chunk]
        try:
            ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
            out = self.model(
                input_ids=ids,
                past_key_values=prefill.cache,
                use_cache=True,
                logits_to_keep=1,
                **self._adapter_kwargs([request]),
            )
        except Exception as exc:
            logger.exception("prefill failed for %s", request.id)
            self.prefilling.pop(0)
            return [
                StepEvent(
                    request.id,
                    finish_reason="error",
                    error=f"Generation failed while reading the prompt ({type(exc).__name__}).",
                )
            ]
        prefill.cache = out.past_key_values
        prefill.done += len(chunk)
        if prefill.done < len(request.prompt_ids):
            return []
        self.prefilling.pop(0)
        row = self._new_row(request)
        token = sample(out.logits[:, -1, :].float(), [row])[0]
        mask = torch.ones((1, len(request.prompt_ids)), dtype=torch.long, device=self.device)
        self._merge([row], prefill.cache, mask)
        return [self._accept(row, int(token))]

    def _accept(self, row: _Row, token: int) -> StepEvent:
        """Record a sampled token for a row; the row's finish is decided in `_finish_rows`."""
        if row.first_token_at is None:
            row.first_token_at = time.monotonic()
        row.generated += 1
        row.next_token = token
        row.recent.append(token)
        if token in self.stop_ids:
            return StepEvent(row.request.id, new_tokens=1, finish_reason="stop")
        text = row.decoder.step(token)
        reason = "length" if row.generated >= row.request.max_new_tokens else None
        return StepEvent(row.request.id, text=text, new_tokens=1, finish_reason=reason)

    def _decode(self) -> list[StepEvent]:
        batch = len(self.rows)
        input_ids = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.next_position] for r in self.rows], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, torch.ones((batch, 1), dtype=self.mask.dtype, device=self.device)], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            **self._adapter_kwargs([r.request for r in self.rows]),
        )
        self.cache = out.past_key_values
        tokens = sample(out.logits[:, -1, :].float(), self.rows)
        events = []
        for row, token in zip(self.rows, tokens, strict=False):
            row.next_position += 1
            events.append(self._accept(row, int(token)))
        return events

    def _finish_rows(self, events: list[StepEvent]) -> list[StepEvent]:
        """Remove rows whose latest event finished them (events are already reported)."""
        finished = {e.request_id for e in events if e.finish_reason}
        if not finished:
            return []
        keep = [i for i, row in enumerate(self.rows) if row.request.id not in finished]
        if len(keep) != len(self.rows):
            self._keep_rows(keep)
        return []

    def _merge(self, rows: list[_Row], cache: DynamicCache, new_mask: torch.Tensor) -> None:
        """Add prefilled rows' KV cache to the batch, left-padding the shorter side."""
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]
        if not self.rows:
            self.cache = DynamicCache(ddp_cache_data=new_kv)
            self.mask = new_mask
            self.rows = list(rows)
            return
        old_kv = [(layer.keys, layer.values) for layer in self.cache.layers]
        old_len, length = self.mask.shape[1], new_mask.shape[1]
        total = max(old_len, length)
        merged = [
            (
                torch.cat([_left_pad(ok, total - old_len), _left_pad(nk, total - length)], dim=0),
                torch.cat([_left_pad(ov, total - old_len), _left_pad(nv, total - length)], dim=0),
            )
            for (ok, ov), (nk, nv) in zip(old_kv, new_kv, strict=True)
        ]
        self.mask = torch.cat(
            [_left_pad_mask(self.mask, total - old_len), _left_pad_mask(new_mask, total - length)], dim=0
        )
        self.cache = DynamicCache(ddp_cache_data=merged)
        self.rows.extend(rows)

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`, and drop leading columns that are padding in all of them."""
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        kv = [
            (layer.keys.index_select(0, index)[:, :, start:, :], layer.values.index_select(0, index)[:, :, start:, :])
            for layer in self.cache.layers
        ]
        self.cache = DynamicCache(ddp_cache_data=kv)
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in keep]


def _left_pad(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def _left_pad_mask(mask: torch.Tensor, amount: int) -> torch.Tensor:
    if amount == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], amount)), mask], dim=1)


def _apply_penalties(logits: torch.Tensor, rows: list[_Row]) -> None:
    """Repetition (multiplicative, as in transformers and llama.cpp), frequency and presence
    penalties over each row's last PENALTY_WINDOW tokens, in place."""
    for i, row in enumerate(rows):
        r = row.request
        if r.repetition_penalty == 1.0 and r.frequency_penalty == 0.0 and r.presence_penalty == 0.0:
            continue
        if not row.recent:
            continue
        ids, counts = torch.tensor(list(row.recent), device=logits.device).unique(return_counts=True)
        values = logits[i, ids]
        if r.repetition_penalty != 1.0:
            values = torch.where(values > 0, values / r.repetition_penalty, values * r.repetition_penalty)
        values = values - counts.to(values.dtype) * r.frequency_penalty - r.presence_penalty
        logits[i, ids] = values


def _filter(probs: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """One row's probabilities with top-k, top-p and min-p applied (not renormalised)."""
    if top_k > 0 and top_k < probs.numel():
        kth = probs.topk(top_k).values[-1]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p < 1.0:
        sorted_probs, sorted_idx = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(0)
        # Keep the smallest set whose mass reaches top_p (always at least the top token).
        drop = (cumulative - sorted_probs) >= top_p * cumulative[-1]
        probs = probs.scatter(0, sorted_idx[drop], 0.0)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.max(), 0.0)
    return probs


def sample(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
    """Pick one token per row: penalties, then greedy where temperature is 0; elsewhere top-k,
    top-p and min-p on the untempered distribution, then temperature (llama.cpp's order)."""
    _apply_penalties(logits, rows)
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        r = row.request
        if r.temperature <= 0:
            tokens.append(greedy[i])
            continue
        kept = _filter(torch.softmax(logits[i], dim=-1), r.top_k, r.top_p, r.min_p)
        scaled = torch.where(kept > 0, logits[i] / r.temperature, torch.full_like(logits[i], float("-inf")))
        probs = torch.softmax(scaled, dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens


def stop_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(i) for i in eos)
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if isinstance(token_id, int):
            ids.add(token_id)
    return ids
