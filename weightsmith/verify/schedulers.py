"""Schedulers built offline from diffusers' classes and each family's released settings.

``--scheduler`` takes a short name (``default``, ``euler``, ``unipc``, ``dpm++``, ``ddim``,
``lightning``) or any diffusers scheduler class name compatible with the family. Flow-matching
families (Wan, Sana) accept the FlowMatch* classes and the multistep solvers that honour
``prediction_type="flow_prediction"``; CogVideoX (v-prediction) accepts the classes diffusers lists
as compatible with its DDIM scheduler. Nothing is downloaded: configs are written here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from weightsmith.errors import UsageError

# Released scheduler configs (the fields that differ from the class defaults).
_WAN = {
    "_class_name": "UniPCMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
}
_SANA = {
    "_class_name": "DPMSolverMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
}
_COG = {
    "_class_name": "CogVideoXDDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}
FLOW_FAMILIES = ("wan", "sana")
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
    """The released scheduler config of a family (CogVideoX 5B models use an SNR shift of 1)."""
    if family == "wan":
        return dict(_WAN)
    if family == "sana":
        if variant == "sprint":
            return {"_class_name": "SCMScheduler", "num_train_timesteps": 1000, "prediction_type": "trigflow"}
        return dict(_SANA)
    cfg = dict(_COG)
    if variant and variant != "2b":
        cfg["snr_shift_scale"] = 1.0
    return cfg


def choose_scheduler(
    family: str, variant: str | None, name: str = "default", folder_config: dict[str, Any] | None = None
) -> SchedulerChoice:
    """Resolve ``--scheduler NAME`` for a family; ``folder_config`` is a pipeline folder's own config."""
    base = dict(folder_config) if folder_config else family_default(family, variant)
    flow = family in FLOW_FAMILIES
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
        return SchedulerChoice("lightning", "CogVideoXDDIMScheduler", _strip(base), steps=4, guidance=1.0)
    if low == "euler":
        if flow:
            return SchedulerChoice("euler", "FlowMatchEulerDiscreteScheduler", {"shift": shift})
        return SchedulerChoice("euler", "EulerDiscreteScheduler", _strip(base))
    if low == "unipc":
        return _from_class("UniPCMultistepScheduler", family, base, shift, "unipc")
    if low in ("dpm++", "dpmpp", "dpm"):
        if not flow:
            return SchedulerChoice(low, "CogVideoXDPMScheduler", _strip(base))
        return _from_class("DPMSolverMultistepScheduler", family, base, shift, low)
    if low == "ddim":
        if flow:
            raise UsageError(
                f"--scheduler ddim does not fit {family}, a flow-matching model",
                hint="use euler, unipc, dpm++ or lightning",
            )
        return SchedulerChoice("ddim", "CogVideoXDDIMScheduler", _strip(base))
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
    if family in FLOW_FAMILIES:
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
    compatible = {"CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"} | {
        getattr(c, "__name__", str(c)) for c in diffusers.CogVideoXDDIMScheduler._compatibles
    }
    if class_name not in compatible:
        raise UsageError(
            f"{class_name} is not compatible with CogVideoX's DDIM scheduler",
            hint=f"use one of {', '.join(sorted(compatible))}",
        )
    return SchedulerChoice(label, class_name, _strip(base))


def _strip(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}
