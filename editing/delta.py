"""What an edit changed: a weight delta that can be saved, loaded, applied and reverted.

ROME's delta is rank one and stored as its two factors (ΔW = u vᵀ in (d_out, d_in)
orientation); a batch of facts written in one solve is low rank, stored as U (n, d_out) and
V (n, d_in) with ΔW = Uᵀ V; FT's is a dense matrix.  An edit that changes several matrices (KN's
neurons in several layers) is a ``compound`` delta of one part per matrix, applied, saved and
reverted as one.  A delta that writes values at keys also
carries them (``keys`` (n, d_in), ``values`` (n, d_out)): the history later edits preserve
(``editing.machinery.preservation``) is read from the deltas applied now.  ``DeltaStack`` is the one place that writes deltas
into a model: it keeps each touched matrix's original value W₀ and always sets
W = W₀ + Σ Δᵢ (summed in float32, in order of application), so reverting any delta — not
only the last — and reverting all of them restore the original weights bit for bit, in
fp32 and in bf16 alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editing.errors import DeltaMismatch


@dataclass
class WeightDelta:
    param: str  # parameter path, e.g. "model.layers.6.mlp.down_proj.weight" (compound: the parts', joined)
    kind: Literal["rank_one", "low_rank", "dense", "compound"]
    # rank_one: u (d_out,), v (d_in,); low_rank: U (n, d_out), V (n, d_in); dense: delta (param shape);
    # optionally keys (n, d_in) and values (n, d_out): what the delta writes where
    tensors: dict[str, torch.Tensor]
    transposed: bool = False  # GPT-2 Conv1D: the parameter is stored (d_in, d_out)
    meta: dict[str, Any] = field(default_factory=dict)  # request, method, layer, hparams, fingerprint, ...
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    parts: list[WeightDelta] = field(default_factory=list)  # compound: one delta per parameter

    @classmethod
    def compound(cls, parts: list[WeightDelta], meta: dict[str, Any] | None = None) -> WeightDelta:
        """One edit's change of several parameters (each part a delta of one parameter)."""
        params = [p.param for p in parts]
        if not parts or len(set(params)) != len(params) or any(p.kind == "compound" for p in parts):
            raise DeltaMismatch("a compound delta needs parts of distinct parameters, none itself compound")
        return cls(param=",".join(params), kind="compound", tensors={}, meta=meta or {}, parts=list(parts))

    def pieces(self) -> list[WeightDelta]:
        """The single-parameter deltas this delta consists of (itself, unless compound)."""
        return self.parts if self.kind == "compound" else [self]

    def matrix(self) -> torch.Tensor:
        """ΔW in the parameter's own orientation and float32."""
        if self.kind == "dense":
            return self.tensors["delta"].float()
        u, v = self.factors()
        m = u.T @ v  # (d_out, d_in)
        return m.T if self.transposed else m

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """U (n, d_out) and V (n, d_in) in float32 with ΔW = Uᵀ V (a rank-one delta: n = 1)."""
        if self.kind in ("dense", "compound"):
            raise DeltaMismatch(f"a {self.kind} delta has no factors")
        if self.kind == "rank_one":
            return self.tensors["u"].float()[None], self.tensors["v"].float()[None]
        return self.tensors["U"].float(), self.tensors["V"].float()

    @property
    def rank(self) -> int:
        return 0 if self.kind in ("dense", "compound") else len(self.factors()[0])

    @property
    def keys(self) -> torch.Tensor | None:
        """The keys (n, d_in) this delta writes values at, if it records them."""
        return self.tensors.get("keys")

    def norm(self) -> float:
        """Frobenius norm of ΔW (for factors, from their n × n Gram matrices without forming ΔW;
        for a compound delta, of all its parts together)."""
        if self.kind == "compound":
            return float(sum(p.norm() ** 2 for p in self.parts) ** 0.5)
        if self.kind == "dense":
            return float(self.tensors["delta"].float().norm())
        u, v = self.factors()
        return float(((u @ u.T) * (v @ v.T)).sum().clamp(min=0).sqrt())

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "compound":
            raise DeltaMismatch("a compound delta has one shape per part")
        if self.kind == "dense":
            return tuple(self.tensors["delta"].shape)
        u, v = self.factors()
        shape = (u.shape[1], v.shape[1])
        return shape[::-1] if self.transposed else shape

    # -- files ---------------------------------------------------------------------------

    def save(self, path: str | Path, *, before_rename: Callable[[], None] | None = None) -> str:
        """Write ``path`` (safetensors) and ``path.json`` (metadata); returns the file's sha256.

        Both are written to temporary files (``.<name>.*`` beside them) and renamed, the
        metadata first, so a crash leaves either no delta file or a whole one, never half of
        one.  ``before_rename`` runs when the delta's temporary file is written (crash tests
        pause there)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{i}.{k}" if self.kind == "compound" else k: v.detach().to("cpu").contiguous()
                   for i, part in enumerate(self.pieces()) for k, v in part.tensors.items()}
        header = {"id": self.id, "param": self.param, "kind": self.kind, "transposed": str(self.transposed)}
        if self.kind == "compound":
            header["parts"] = json.dumps([{"param": p.param, "kind": p.kind, "transposed": p.transposed}
                                          for p in self.parts])
        fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, staged, metadata=header)
            digest = sha256_file(staged)
            text = json.dumps(self._sidecar(digest), indent=2, ensure_ascii=False, default=str)
            _atomic_write(Path(f"{path}.json"), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            _fsync(staged)
            if before_rename is not None:
                before_rename()
            os.replace(staged, path)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
        return digest

    def _sidecar(self, digest: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "param": self.param,
            "kind": self.kind,
            "transposed": self.transposed,
            "shape": [list(p.shape) for p in self.parts] if self.kind == "compound" else list(self.shape),
            "norm": self.norm(),
            "sha256": digest,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "meta": self.meta,
        }

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> WeightDelta:
        path = Path(path)
        if expected_sha256 is not None:
            actual = sha256_file(path)
            if actual != expected_sha256:
                raise DeltaMismatch(f"{path}: sha256 {actual[:12]}… does not match the logged {expected_sha256[:12]}…")
        sidecar_path = Path(f"{path}.json")
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
        if header.get("kind") == "compound":
            parts = [cls(param=p["param"], kind=p["kind"], transposed=p["transposed"],
                         tensors={k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
                     for i, p in enumerate(json.loads(header["parts"]))]
            return cls(param=header["param"], kind="compound", tensors={}, meta=sidecar.get("meta", {}),
                       id=header["id"], parts=parts)
        return cls(
            param=header["param"],
            kind=header["kind"],  # type: ignore[arg-type]
            tensors=tensors,
            transposed=header.get("transposed") == "True",
            meta=sidecar.get("meta", {}),
            id=header["id"],
        )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DeltaStack:
    """Applies and reverts deltas on one model: W = W₀ + Σ Δᵢ for every touched parameter."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._originals: dict[str, torch.Tensor] = {}  # W₀, cloned on first touch
        self._applied: dict[str, WeightDelta] = {}  # id -> delta, in application order
        self.version = 0  # counts changes of the weights: what was measured on version n is of those weights

    @property
    def applied(self) -> list[WeightDelta]:
        return list(self._applied.values())

    def __len__(self) -> int:
        return len(self._applied)

    def __contains__(self, delta_id: str) -> bool:
        return delta_id in self._applied

    def _param(self, name: str) -> nn.Parameter:
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            raise DeltaMismatch(f"the model has no parameter {name!r}") from None

    def _recompute(self, *names: str) -> None:
        # the weights are a function of which deltas are applied (W₀ + Σ Δᵢ, recomputed from
        # W₀): caches of model outputs (``editing.machinery.suffix.PrefixCache``) key on this
        self.model._amend_weights_state = tuple(self._applied)
        self.model._amend_edited_params = frozenset(p.param for d in self._applied.values() for p in d.pieces())
        self.version += 1
        for name in names:
            param = self._param(name)
            original = self._originals[name]
            pieces = [p for d in self._applied.values() for p in d.pieces() if p.param == name]
            with torch.no_grad():
                if not pieces:
                    param.copy_(original)
                    continue
                total = original.to(param.device, torch.float32)
                for piece in pieces:
                    total = total + piece.matrix().to(param.device)
                param.copy_(total.to(param.dtype))

    def _check_fits(self, delta: WeightDelta) -> list[str]:
        """The parameters ``delta`` changes, each checked to exist with the delta's shape."""
        for piece in delta.pieces():
            param = self._param(piece.param)
            if tuple(param.shape) != piece.shape:
                raise DeltaMismatch(
                    f"delta {delta.id} has shape {piece.shape} but {piece.param} is {tuple(param.shape)}"
                )
        return [p.param for p in delta.pieces()]

    def apply(self, delta: WeightDelta) -> None:
        names = self._check_fits(delta)
        if delta.id in self._applied:
            raise DeltaMismatch(f"delta {delta.id} is already applied")
        for name in names:
            if name not in self._originals:
                self._originals[name] = self._param(name).detach().clone()
        self._applied[delta.id] = delta
        try:
            self._recompute(*names)
        except BaseException:
            del self._applied[delta.id]
            self._recompute(*names)
            raise

    def revert(self, delta_id: str) -> WeightDelta:
        delta = self._applied.pop(delta_id, None)
        if delta is None:
            raise DeltaMismatch(f"delta {delta_id} is not applied")
        self._recompute(*[p.param for p in delta.pieces()])
        return delta

    def replace(self, delta_id: str, delta: WeightDelta) -> None:
        """Put ``delta`` where ``delta_id`` is in the order of application (a superseding edit
        rebased when the edit it superseded is reverted: ``editing.engine.Editor.rebased``)."""
        if delta_id not in self._applied:
            raise DeltaMismatch(f"delta {delta_id} is not applied")
        old = self._applied[delta_id]
        names = self._check_fits(delta)
        if names != [p.param for p in old.pieces()]:
            raise DeltaMismatch(f"delta {delta.id} does not fit where {delta_id} is ({old.param})")
        self._applied = {(delta.id if i == delta_id else i): (delta if i == delta_id else d)
                         for i, d in self._applied.items()}
        try:
            self._recompute(*names)
        except BaseException:
            self._applied = {(delta_id if i == delta.id else i): (old if i == delta.id else d)
                             for i, d in self._applied.items()}
            self._recompute(*names)
            raise

    def snapshot(self) -> dict[str, WeightDelta]:
        """Which deltas are applied, in order: ``restore`` puts exactly these weights back."""
        return dict(self._applied)

    def restore(self, snapshot: dict[str, WeightDelta]) -> None:
        """Back to a ``snapshot`` (a failed change of several deltas undone as one), from the
        deltas in memory and in their order, so the sum is the same bit for bit."""
        names = {p.param for d in (*self._applied.values(), *snapshot.values()) for p in d.pieces()}
        self._applied = dict(snapshot)
        self._recompute(*sorted(names))

    def written_keys(self, param: str, keep: Callable[[dict | None], bool] | None = None) -> torch.Tensor | None:
        """The keys (n, d_in) that the applied deltas on ``param`` write values at, in order of
        application: what a new edit's history is read from.  ``keep``, given the request a key's
        delta recorded for it (``meta["requests"][i]`` or ``meta["request"]``), leaves out the keys
        it refuses (``Editor._history``: the facts the new edit supersedes)."""
        keys = []
        for delta in self._applied.values():
            for piece in delta.pieces():
                if piece.param != param or piece.keys is None:
                    continue
                rows = piece.keys.float().reshape(-1, piece.keys.shape[-1])
                if keep is not None:
                    recorded = delta.meta.get("requests", [delta.meta.get("request")] * len(rows))
                    rows = rows[[bool(keep(fact)) for fact in recorded]]
                keys.append(rows)
        keys = [k for k in keys if len(k)]
        return torch.cat(keys) if keys else None

    def revert_all(self) -> None:
        for delta_id in list(self._applied)[::-1]:
            self.revert(delta_id)


