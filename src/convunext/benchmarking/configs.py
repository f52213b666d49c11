"""The configurations of the benchmark suite: what one measurement is, and the grid the command line asks for."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ..runtime import FUSED_PARALLELISM_ENV, KERNELS_ENV

__all__ = ["INFERENCE_PATHS", "REGISTRY_MODELS", "SECTIONS", "SECTION_OPTIONS", "Config", "build_configs"]

REGISTRY_MODELS = ("convunext", "unet", "attention_unet", "unet_plus_plus", "resunet")
INFERENCE_PATHS = ("authors", "eager", "channels_last", "fast", "compile", "onnx")
TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
"""The GLIBC_TUNABLES value docs/speed.md recommends: no mmap for allocations under 1 GiB, never trim the heap."""
OPENMP_ENV = {FUSED_PARALLELISM_ENV: "openmp"}
"""The fast path with PyTorch's per-operator OpenMP parallelism instead of its worker threads (the worker process
reads the ``fused_parallelism`` setting of :mod:`convunext.runtime` from its environment)."""
REFERENCE_KERNELS_ENV = {KERNELS_ENV: "reference"}
"""Training with PyTorch's operators instead of the compiled kernels (:mod:`convunext.models.layers.compiled`)."""
SECTIONS = ("inference", "training", "recompute", "sliding window")
"""The report's sections, in table order."""
SECTION_OPTIONS = {
    "inference": "inference",
    "training": "training",
    "recompute": "recompute",
    "window": "sliding window",
}
"""``--sections`` names of the sections."""


@dataclass
class Config:
    """One measurement: ``model`` (registry name) run by ``path`` in ``mode`` (``"infer"``, ``"train"`` or
    ``"window"``: sliding-window prediction of one ``size`` image with tiles of ``tile``) on ``batch`` images of
    ``channels x size``; ``env`` adds environment variables (allocator variants) to the worker process;
    ``tune_malloc`` True / False runs the ``trainer`` path with / without its glibc malloc tuning
    (``train.tune_malloc`` on / off; None: ``auto``, as the trainer resolves it)."""

    section: str
    model: str
    path: str
    mode: str = "infer"
    batch: int = 1
    size: tuple[int, int] = (480, 480)
    channels: int = 3
    classes: int = 2
    recompute: bool = False
    repeats: int = 10
    warmup: int = 2
    tile: int = 512
    env: dict[str, str] = field(default_factory=dict)
    env_label: str = ""
    device: str = "cpu"
    amp: str = "none"
    tune_malloc: bool | None = None

    @property
    def label(self) -> str:
        """Row label, e.g. ``convunext fast`` or ``convunext channels_last + recompute``."""
        names = {
            "authors": "authors' style",
            "channels_last": "channels-last",
            "fused": "channels-last + fused kernels",
            "trainer": "trainer default",
        }
        path = names.get(self.path, self.path)
        if self.mode == "infer" and self.path == "channels_last":
            path = "BN-folded channels-last"
        text = f"{self.model} {path}"
        if self.recompute:
            text += " + recompute"
        if self.tune_malloc is not None:
            text += " [malloc tuned]" if self.tune_malloc else " [malloc untuned]"
        if self.env_label:
            text += f" [{self.env_label}]"
        return text


def build_configs(args: argparse.Namespace) -> list[Config]:
    """Every configuration the command line asks for, in table order."""
    configs: list[Config] = []

    def add(section: str, model: str, path: str, mode: str, batch: int, size: int | tuple[int, int], **kw: Any) -> None:
        kw.setdefault("repeats", args.repeats)
        kw.setdefault("warmup", args.warmup)
        hw = (size, size) if isinstance(size, int) else size
        configs.append(Config(section, model, path, mode, batch, hw, device=args.device, amp=args.amp, **kw))

    paths = [p for p in args.paths.split(",") if p]
    for size in args.sizes:
        for path in paths:
            if path != "compile" or size == args.sizes[0]:  # one compile measurement is enough (slow)
                add("inference", "convunext", path, "infer", args.batch_size, size)
        if "fast" in paths and not args.in_process:
            add(
                "inference",
                "convunext",
                "fast",
                "infer",
                args.batch_size,
                size,
                env=OPENMP_ENV,
                env_label="OpenMP operators",
            )
        for model in REGISTRY_MODELS[1:]:
            add("inference", model, "eager", "infer", args.batch_size, size)
        add("inference", "unet", "channels_last", "infer", args.batch_size, size)
    if args.allocators:
        variants = [("glibc tunables", {"GLIBC_TUNABLES": TUNABLES})]
        if args.tcmalloc:
            variants.append(("tcmalloc", {"LD_PRELOAD": args.tcmalloc}))
        for label, env in variants:
            for model, path in (
                ("convunext", "authors"),
                ("convunext", "eager"),
                ("convunext", "fast"),
                ("unet", "eager"),
            ):
                add("inference", model, path, "infer", args.batch_size, args.sizes[0], env=env, env_label=label)
            if not args.no_train:
                for model, path in (("convunext", "authors"), ("convunext", "fused"), ("unet", "eager")):
                    add("training", model, path, "train", args.train_batch_size, args.train_size, env=env,
                        env_label=label, repeats=args.train_repeats)  # fmt: skip
    if not args.no_train:
        runs = [
            ("convunext", "authors"),
            ("convunext", "eager"),
            ("convunext", "channels_last"),
            ("convunext", "fused"),
        ]
        runs += [(model, "eager") for model in REGISTRY_MODELS[1:]]
        runs += [(model, "trainer") for model in REGISTRY_MODELS]
        for model, path in runs:
            add("training", model, path, "train", args.train_batch_size, args.train_size, repeats=args.train_repeats)
        if not args.in_process:  # the trainer's default without the compiled kernels, in the same run
            add("training", "convunext", "trainer", "train", args.train_batch_size, args.train_size,
                repeats=args.train_repeats, env=REFERENCE_KERNELS_ENV, env_label="reference kernels")  # fmt: skip
        if args.recompute_size:  # each as the trainer runs it, then with the other malloc setting
            for model in ("convunext", "unet"):
                for recompute, other_malloc in ((False, False), (True, True)):
                    for tune_malloc in (None, other_malloc):
                        add("recompute", model, "trainer", "train", args.recompute_batch_size, args.recompute_size,
                            recompute=recompute, repeats=args.recompute_repeats, warmup=1,
                            tune_malloc=tune_malloc)  # fmt: skip
    if args.hrf:
        for path in [p for p in args.hrf_paths.split(",") if p]:
            if path != "compile":
                add("sliding window", "convunext", path, "window", 1, (2336, 3504), repeats=args.hrf_repeats, warmup=1,
                    tile=args.tile_size)  # fmt: skip
    sections = {SECTION_OPTIONS[name] for name in getattr(args, "sections", "").split(",") if name}
    configs = [c for c in configs if not sections or c.section in sections]
    configs.sort(key=lambda c: SECTIONS.index(c.section))
    return configs
