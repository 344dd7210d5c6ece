"""Schedulers built offline from diffusers' classes and each family's released settings.

``--scheduler`` takes a short name (``default``, ``euler``, ``unipc``, ``dpm++``, ``ddim``,
``lightning``) or any diffusers scheduler class name compatible with the family. Flow-matching
families accept the FlowMatch* classes and the multistep solvers that honour
``prediction_type="flow_prediction"``; other families (v- or epsilon-prediction) accept the
classes diffusers lists as compatible with their DDIM scheduler. Nothing is downloaded: the
released configs come from each family's generation adapter.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from weightsmith.errors import UsageError
from weightsmith.verify.family import generation

ALIASES = ("default", "euler", "unipc", "dpm++", "ddim", "lightning")


@dataclass(frozen=True)
class SchedulerChoice:
    """A scheduler ready to build, plus the step count and guidance a preset implies."""

    name: str
    class_name: str
    config: dict[str, Any]
    steps: int | None = None
    guidance: float | None = None

    def build(self) -> Any:
        import diffusers

        cls = getattr(diffusers, self.class_name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        return cls(**{k: v for k, v in self.config.items() if k in accepted})

    def key_material(self) -> dict[str, Any]:
        return {"class": self.class_name, "config": dict(sorted(self.config.items()))}


def family_default(family: str, variant: str | None) -> dict[str, Any]:
    """The released scheduler config of a family's variant."""
    return generation(family).scheduler_config(variant)


def choose_scheduler(
    family: str, variant: str | None, name: str = "default", folder_config: dict[str, Any] | None = None
) -> SchedulerChoice:
    """Resolve ``--scheduler NAME`` for a family; ``folder_config`` is a pipeline folder's own config."""
    gen = generation(family)
    base = dict(folder_config) if folder_config else gen.scheduler_config(variant)
    flow = gen.flow_matching
    shift = float(base.get("flow_shift", base.get("shift", 3.0)))
    key = name.strip()
    low = key.lower()
    if low == "default":
        return SchedulerChoice("default", base.get("_class_name", ""), _strip(base))
    if low == "lightning":
        # Four steps without classifier-free guidance, as the step-distilled (Lightning/LightX2V) LoRAs run.
        if flow:
            return SchedulerChoice(
                "lightning",
                "FlowMatchEulerDiscreteScheduler",
                {"num_train_timesteps": 1000, "shift": 5.0},
                steps=4,
                guidance=1.0,
            )
        return SchedulerChoice("lightning", gen.ddim_scheduler, _strip(base), steps=4, guidance=1.0)
    if low == "euler":
        if flow:
            return SchedulerChoice("euler", "FlowMatchEulerDiscreteScheduler", {"shift": shift})
        return SchedulerChoice("euler", "EulerDiscreteScheduler", _strip(base))
    if low == "unipc":
        return _from_class("UniPCMultistepScheduler", family, base, shift, "unipc")
    if low in ("dpm++", "dpmpp", "dpm"):
        if not flow:
            return SchedulerChoice(low, gen.dpm_scheduler, _strip(base))
        return _from_class("DPMSolverMultistepScheduler", family, base, shift, low)
    if low == "ddim":
        if flow:
            raise UsageError(
                f"--scheduler ddim does not fit {family}, a flow-matching model",
                hint="use euler, unipc, dpm++ or lightning",
            )
        return SchedulerChoice("ddim", gen.ddim_scheduler, _strip(base))
    return _from_class(key, family, base, shift, key)


def _from_class(
    class_name: str, family: str, base: dict[str, Any], shift: float, label: str
) -> SchedulerChoice:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler"):
        raise UsageError(
            f"unknown --scheduler {class_name!r}",
            hint=f"use one of {', '.join(ALIASES)} or a diffusers scheduler class name",
        )
    params = set(inspect.signature(cls.__init__).parameters)
    gen = generation(family)
    if gen.flow_matching:
        if class_name.startswith("FlowMatch"):
            return SchedulerChoice(label, class_name, {"shift": shift} if "shift" in params else {})
        if "use_flow_sigmas" not in params:
            raise UsageError(
                f"{class_name} cannot run {family}, a flow-matching model",
                hint="use a FlowMatch* scheduler, UniPCMultistepScheduler or DPMSolverMultistepScheduler",
            )
        cfg = {
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
            "flow_shift": shift,
            "num_train_timesteps": 1000,
        }
        return SchedulerChoice(label, class_name, cfg)
    ddim = getattr(diffusers, gen.ddim_scheduler)
    compatible = {gen.ddim_scheduler, gen.dpm_scheduler} | {
        getattr(c, "__name__", str(c)) for c in getattr(ddim, "_compatibles", ())
    }
    if class_name not in compatible:
        raise UsageError(
            f"{class_name} is not compatible with {gen.title}'s DDIM scheduler",
            hint=f"use one of {', '.join(sorted(compatible))}",
        )
    return SchedulerChoice(label, class_name, _strip(base))


def _strip(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}
