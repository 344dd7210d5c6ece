"""Writing a LoRA's entries in a target format.

* ``diffusers``: PEFT keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (and
  ``lora_B.bias`` for a bias delta), in ``pytorch_lora_weights.safetensors`` as Diffusers'
  ``save_lora_weights`` names it. No alpha is stored: Diffusers then loads every module at
  alpha == rank (scale 1), so a module's scale alpha/rank is folded into its ``lora_A`` (computed
  in float32, stored in lora_A's dtype). A scale of exactly 1 leaves the tensors untouched, so a
  PEFT -> original -> PEFT round trip is bit-identical.
* a family's dotted native format (``native_state_dict``; e.g. ``--to original``, ComfyUI):
  ``<prefix><native module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` (float32; the
  source's alpha, or the rank when it had none), ``.diff_b`` and ``.diff``. Tensors are copied
  as they are.
* a family's partitioned native format (``partition_state_dict``; e.g. ``--to sat``, SAT's
  ``matrix_A.i`` / ``matrix_B.i``): one partition per Diffusers module of a fused native module
  (qkv: to_q, to_k, to_v), a missing one zero-filled, ranks padded with zeros to the largest.
  The format scales by ``sat_alpha / r``; each entry's own scale is folded into its down matrix
  (so SAT -> PEFT -> SAT with a power-of-two rank is bit-identical).

Which family writes which format is asked of the families' LoRA adapters (``names.target``).
Full-weight diffs (``.diff``) and bias deltas without a low-rank pair have no PEFT or partitioned key.
A diff of a Linear weight goes to PEFT exactly as an identity-factor pair (``identity_factors``);
all-zero diffs (what trainers store for norms) are dropped with a note; any other is refused
unless ``drop_diffs`` (fusing into the base applies them all).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.lora import ComponentLora, Link, LoraTarget
from weightsmith.io.writers import write_safetensors, write_sat, write_torch_file
from weightsmith.lora.model import Lora, LoraModule, all_finite, fold, name_some
from weightsmith.lora.names import adapters, targets
from weightsmith.lora.names import target as target_of
from weightsmith.lora.partitioned import check_alpha
from weightsmith.lora.read import LORA_WEIGHT_NAME

PEFT_PREFIX = "transformer."
StateAndNotes = tuple[dict[str, torch.Tensor], list[str]]


def _is_zero(t: torch.Tensor | None) -> bool:
    return t is not None and not bool(t.any())  # any(), not count_nonzero: it works for float8 too


def _pair(m: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) of an entry that has a low-rank pair (callers check ``has_lowrank``)."""
    if m.down is None or m.up is None:
        raise ConversionError(
            f"LoRA module {m.module!r} has no low-rank pair (a weightsmith bug)",
            hint="rerun with --debug and report it",
        )
    return m.down, m.up


def _folded(m: LoraModule, factor: float, src: str) -> torch.Tensor:
    """``m.down`` times ``factor``, refused if the product leaves the dtype's range."""
    down = _pair(m)[0]
    out = fold(down, factor)
    if not all_finite(out):
        raise ConversionError(
            f"{src}: LoRA module {m.module!r}: lora_A times its scale {factor:g} overflows {down.dtype}",
            hint="the LoRA's alpha or values are far too large; check the file",
        )
    return out


def identity_factors(diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) with ``up @ down == diff`` exactly: the diff on one side, an identity on the other.

    The smaller side gets the identity (rank = min(out, in)); Diffusers' own Wan converter uses
    the same idea for ``head.head.diff``. Multiplying by an identity is exact in floating point.
    """
    out_f, in_f = diff.shape
    if out_f <= in_f:
        return diff.contiguous(), torch.eye(out_f, dtype=diff.dtype)
    return torch.eye(in_f, dtype=diff.dtype), diff.contiguous()


def _strip_inexpressible(
    lora: Lora, what: str, drop_diffs: bool, peft: bool = True
) -> tuple[list[LoraModule], list[str]]:
    """Entries reduced to what ``what`` can hold; zero diffs dropped, others refused or dropped.

    For PEFT, a full diff of a Linear weight (2-D) without a low-rank pair is written exactly as
    an identity-factor LoRA (``identity_factors``), which also carries its bias delta.
    """
    notes: list[str] = []
    zero, nonzero = [], []
    out = []
    carried = 0
    for m in lora.modules:
        down, up, alpha, diff, bias = m.down, m.up, m.alpha, m.diff, m.bias
        linear_diff = peft and down is None and diff is not None and diff.ndim == 2 and not m.param
        if linear_diff and not (_is_zero(diff) and (bias is None or _is_zero(bias))):
            down, up = identity_factors(diff)  # type: ignore[arg-type]
            alpha, diff = None, None
            carried += 1
        if diff is not None:
            (zero if _is_zero(diff) else nonzero).append(m.module + " (diff)")
            diff = None
        if bias is not None and (down is None or not peft):
            (zero if _is_zero(bias) else nonzero).append(m.module + " (diff_b)")
            bias = None
        if down is not None or bias is not None:
            out.append(LoraModule(m.module, down, up, alpha, bias, None, m.param))
    if nonzero and not drop_diffs:
        raise ConversionError(
            f"{lora.source}: {len(nonzero)} full-weight or bias diff(s) cannot be written as a {what} LoRA: "
            f"{name_some(nonzero)}",
            hint="fuse the LoRA into the base instead (weightsmith convert --lora), or pass --drop-diffs",
        )
    if carried:
        notes.append(
            f"wrote {carried} full-weight diffs exactly as identity-factor LoRAs (rank min(out, in))"
        )
    if zero:
        notes.append(f"left out {len(zero)} all-zero diffs (e.g. {sorted(zero)[0]}); they change nothing")
    if nonzero:
        notes.append(f"DROPPED {len(nonzero)} non-zero diffs (--drop-diffs), e.g. {sorted(nonzero)[0]}")
    if not out:
        raise ConversionError(f"{lora.source}: nothing left to write as a {what} LoRA", hint="check the file")
    return out, notes


# ------------------------------------------------------------------------------------ PEFT
def peft_state_dict(lora: Lora, *, drop_diffs: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Diffusers PEFT keys for a LoRA of any family, alpha/rank folded into lora_A."""
    modules, notes = _strip_inexpressible(lora, "Diffusers PEFT", drop_diffs)
    sd: dict[str, torch.Tensor] = {}
    folded = set()
    for m in modules:
        key = PEFT_PREFIX + m.module
        if m.has_lowrank:
            if m.scale != 1.0:
                folded.add(m.scale)
            sd[f"{key}.lora_A.weight"] = _folded(m, m.scale, lora.source)
            sd[f"{key}.lora_B.weight"] = _pair(m)[1].contiguous()
        if m.bias is not None:
            sd[f"{key}.lora_B.bias"] = m.bias.contiguous()
    if folded:
        notes.append(
            "alpha/rank folded into lora_A (scale " + ", ".join(f"{s:g}" for s in sorted(folded)) + ")"
        )
    return sd, notes


# ------------------------------------------------------------------------ native dotted names
def native_state_dict(lora: Lora, adapter: ComponentLora, target: LoraTarget) -> StateAndNotes:
    """A family's dotted native keys (ComfyUI style, under ``target.prefix``), tensors unchanged."""
    if lora.family != adapter.family:
        shown = lora.family or "/".join(a.display for a in adapters() if a.family in lora.candidates)
        raise UsageError(
            f"the {target.label} LoRA format is {adapter.display}'s; {lora.source} is a {shown} LoRA",
            hint=_other_targets_hint(adapter),
        )
    sd: dict[str, torch.Tensor] = {}
    bad = []
    for m in lora.modules:
        native = adapter.diffusers_to_native(m.module, m.param)
        if native is None:
            bad.append(m.module)
            continue
        key = target.prefix + native
        if m.has_lowrank:
            down, up = _pair(m)
            sd[f"{key}.lora_down.weight"] = down.contiguous()
            sd[f"{key}.lora_up.weight"] = up.contiguous()
            alpha = m.alpha if m.alpha is not None else float(down.shape[0])
            sd[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            if not all_finite(sd[f"{key}.alpha"]):
                raise ConversionError(
                    f"{lora.source}: LoRA module {m.module!r}: alpha {alpha:g} does not fit a float32 .alpha",
                    hint="the LoRA's alpha is far too large; check the file",
                )
        if m.bias is not None:
            sd[f"{key}.diff_b"] = m.bias.contiguous()
        if m.diff is not None:
            sd[f"{key}.diff"] = m.diff.contiguous()
    if bad:
        raise ConversionError(
            f"{lora.source}: {adapter.display} has no {target.label} name for {name_some(bad)}",
            hint="convert to diffusers instead, or fuse the LoRA into the base",
        )
    notes = []
    if any(m.alpha is None and m.has_lowrank for m in lora.modules):
        notes.append("alpha written as the rank (scale 1), as the source stored no alpha")
    return sd, notes


def _other_targets_hint(adapter: ComponentLora) -> str:
    """``use --to diffusers (or --to X for Family)`` naming the other families' own formats."""
    others = [f"--to {t.name} for {a.display}" for a in adapters() if a is not adapter for t in a.targets]
    return "use --to diffusers" + (f" (or {', '.join(others)})" if others else "")


# ------------------------------------------------------------------------- partitioned names
def partition_state_dict(
    lora: Lora,
    adapter: ComponentLora,
    target: LoraTarget,
    *,
    sat_alpha: float = 1.0,
    drop_diffs: bool = False,
) -> StateAndNotes:
    """Partitioned native keys (SAT LoraMixin ``matrix_A.i`` / ``matrix_B.i``) of a LoRA of ``adapter``'s family."""
    fam = adapter.family
    if lora.family not in (fam, None) or (lora.family is None and fam not in lora.candidates):
        raise UsageError(
            f"the {target.label} LoRA format is {adapter.display}'s; {lora.source} is a {lora.family} LoRA",
            hint=_other_targets_hint(adapter),
        )
    check_alpha(adapter, sat_alpha)
    label = adapter.partition_label
    modules, notes = _strip_inexpressible(lora, label, drop_diffs, peft=False)
    names = adapter.links(max(adapter.layers_needed(m.module for m in modules), 1))
    grouped: dict[str, tuple[Link, dict[int, LoraModule]]] = {}
    bad = []
    for m in modules:
        hit = names.by_diffusers.get(m.module)
        if hit is None:
            bad.append(m.module)
            continue
        link, i = hit
        grouped.setdefault(link.native, (link, {}))[1][i] = m
    if bad:
        raise ConversionError(
            f"{lora.source}: {len(bad)} module(s) have no {label} counterpart: {name_some(bad)}",
            hint=f"the LoRA is not a {adapter.display} transformer LoRA",
        )
    sd: dict[str, torch.Tensor] = {}
    for native in sorted(grouped):
        link, parts = grouped[native]
        if len(link.diffusers) > 1 and not link.partitions_match:
            raise ConversionError(
                f"{lora.source}: {label} LoRA cannot express separate LoRAs on {', '.join(link.diffusers)} "
                f"(one {label} module {native!r} whose rows are regrouped)",
                hint="convert to diffusers instead, or fuse the LoRA into the base",
            )
        rank = max(int(_pair(m)[0].shape[0]) for m in parts.values())
        s_down, s_up = _pair(next(iter(parts.values())))
        for i in range(len(link.diffusers)):
            m = parts.get(i)
            if m is None:
                a = torch.zeros((rank, *s_down.shape[1:]), dtype=s_down.dtype)
                b = torch.zeros((s_up.shape[0], rank, *s_up.shape[2:]), dtype=s_up.dtype)
            else:
                # The native format multiplies by sat_alpha / rank; this entry wants m.scale.
                a = _pad_rows(_folded(m, m.scale * rank / sat_alpha, lora.source), rank)
                b = _pad_cols(_pair(m)[1], rank)
            sd[adapter.partition_key(native, "down", i)] = a
            sd[adapter.partition_key(native, "up", i)] = b
    if any(len(p) < len(link.diffusers) for link, p in grouped.values()):
        notes.append(f"zero-filled the partitions of fused {label} modules that the LoRA does not touch")
    notes.append(
        f"{label} scale lora_alpha/r with lora_alpha = {sat_alpha:g}; entry scales folded into "
        f"{adapter.partition_roles[0]}"
    )
    return sd, notes


def target_state_dict(
    lora: Lora, to_format: str, *, sat_alpha: float = 1.0, drop_diffs: bool = False
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Keys, notes and a label for the summary of ``lora`` written in ``to_format``."""
    if to_format == "diffusers":
        sd, notes = peft_state_dict(lora, drop_diffs=drop_diffs)
        return sd, notes, "diffusers PEFT"
    found = target_of(to_format)
    if found is None:
        raise UsageError(f"unknown LoRA format {to_format!r}", hint=f"choose one of {', '.join(targets())}")
    adapter, spec = found
    if spec.naming == "native":
        sd, notes = native_state_dict(lora, adapter, spec)
    else:
        sd, notes = partition_state_dict(lora, adapter, spec, sat_alpha=sat_alpha, drop_diffs=drop_diffs)
    return sd, notes, spec.summary


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[0] == n:
        return t.contiguous()
    pad = torch.zeros((n - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def _pad_cols(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[1] == n:
        return t.contiguous()
    pad = torch.zeros((t.shape[0], n - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)


# ------------------------------------------------------------------------------------ files
def lora_output_path(dst: str | Path, target: str) -> Path:
    """Where a LoRA goes: DST itself when it names a file, else DST/pytorch_lora_weights.safetensors (PEFT)."""
    p = Path(dst)
    if target == "diffusers" and p.suffix != ".safetensors":
        return p / LORA_WEIGHT_NAME
    return p


def write_state(
    sd: Mapping[str, torch.Tensor],
    dst: str | Path,
    target: str,
    *,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write LoRA tensors, sorted by key, atomically: safetensors, or for SAT a .pt / SAT folder."""
    if target not in targets():
        raise UsageError(f"unknown LoRA format {target!r}", hint=f"choose one of {', '.join(targets())}")
    out = lora_output_path(dst, target)
    names = sorted(sd)
    specs = [(k, tuple(sd[k].shape), sd[k].dtype) for k in names]
    items = ((k, sd[k].contiguous()) for k in names)
    if out.suffix == ".safetensors":
        folder = Path(dst)
        if out.parent == folder and folder.parent.is_dir():
            folder.mkdir(exist_ok=True)  # DST names the LoRA folder Diffusers loads from
        return write_safetensors(out, specs, items, dict(metadata or {}), overwrite=overwrite)
    found = target_of(target)
    if found is None or not found[1].torch_files:
        raise UsageError(
            f"{dst}: a {target} LoRA is written as .safetensors", hint="give DST ending in .safetensors"
        )
    if out.suffix in (".pt", ".pth"):
        side = {"weightsmith": json.dumps(dict(metadata or {}), sort_keys=True)} if metadata else None
        return write_torch_file(out, specs, items, overwrite, wrap="module", side=side)
    return write_sat(out, specs, items, overwrite)
