"""What ``specq bench`` measured, and how it prints it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class BenchResult:
    pipeline: str
    device: str
    draws: int
    spectra: int
    baseline_spectra: int
    threads: int
    options: dict = field(default_factory=dict)  # the pipeline's own options as it runs them, e.g. {"conv": "fft"}
    repeat: int = 1  # each of baseline, engine and queue timed this many times; the best is kept
    baseline_per_s: float = 0.0  # 0: the pipeline declares no baseline
    engine_per_s: float = 0.0
    queue_per_s: float | None = None
    queue_broker: str = ""
    queue_workers: int = 1
    peak_rss_mb_engine: float = 0.0
    peak_device_mb_engine: float | None = None  # CUDA: the engine's peak device memory
    peak_rss_mb_total: float = 0.0
    worker_peak_rss_mb: float | None = None
    max_rel_diff: dict = field(default_factory=dict)
    baseline_note: str = ""  # why engine and baseline need not agree value for value, where they need not
    readers_ms: dict = field(default_factory=dict)
    demo_weights: bool = True
    precision: str = "float32"  # the forward, as requested (tf32 is float32 off CUDA)
    float32_per_s: float | None = None  # the engine again in float32, when precision is not float32
    precision_deviation: dict = field(default_factory=dict)  # field → max_abs, max_rel from float32
    precision_flags_changed: int = 0
    roofline_per_s: float | None = None  # the dense float work alone, at the measured matmul rate
    matmul_gflops: float | None = None
    load: tuple = ()  # the load average (1, 5, 15 minutes) once baseline and engine were timed

    @property
    def roofline_speedup(self) -> float | None:
        """The most engine/baseline a dense float32 engine could reach here."""
        return self.roofline_per_s / self.baseline_per_s if self.roofline_per_s and self.baseline_per_s else None

    @property
    def speedup(self) -> float:
        return self.engine_per_s / self.baseline_per_s if self.baseline_per_s else float("nan")

    @property
    def queue_ratio(self) -> float | None:
        return self.queue_per_s / self.engine_per_s if self.queue_per_s and self.engine_per_s else None


def to_json(results: list[BenchResult]) -> str:
    """The results as JSON, with the ratios (null where there is no baseline)."""
    def ratio(value):
        return value if value == value else None  # NaN is not JSON

    return json.dumps([{**asdict(r), "speedup": ratio(r.speedup), "queue_ratio": r.queue_ratio,
                        "roofline_speedup": r.roofline_speedup} for r in results], indent=2)


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels use here (``AVX2``, ``AVX512`` …), printed with every table."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


# AMD core generations by CPUID family, and within family 25 by model. One ISA string
# (AVX512) covers Zen 4, which runs 512-bit operations on 256-bit units, and Zen 5, which
# has full-width ones: the float32 peak of a core differs twofold between them.
_AMD_FAMILIES = {23: "Zen/Zen 2", 26: "Zen 5"}
_ZEN4_MODELS = (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))


def amd_core(family: int, model: int) -> str | None:
    """The AMD core generation of a CPUID family and model, None where not known."""
    if family == 25:
        return "Zen 4" if any(model in models for models in _ZEN4_MODELS) else "Zen 3"
    return _AMD_FAMILIES.get(family)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor: vendor, CPUID family and model, and for AMD its core generation
    (``AMD Zen 4, family 25 model 17``); empty where ``/proc/cpuinfo`` cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as info:
                cpuinfo = info.read(8192)  # the first processor's lines are enough
        except OSError:
            return ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block has ended
            continue
        fields.setdefault(key.strip(), value.strip())
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return ""
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(fields.get("vendor_id", ""), fields.get("vendor_id", ""))
    core = amd_core(family, model) if vendor == "AMD" else None
    return f"{vendor}{' ' + core if core else ''}, family {family} model {model}".strip()


def cpu_label() -> str:
    """The ISA and, where known, the processor: what every table names its CPU by."""
    model = cpu_model()
    return f"{cpu_capability()} ({model})" if model else cpu_capability()


def render(r: BenchResult) -> str:
    lines = [f"specq bench — {r.pipeline}, {r.draws} draws, device {r.device}, {r.threads} threads, "
             f"CPU {cpu_label()}"
             + (f", load {' '.join(f'{x:.2f}' for x in r.load)}" if r.load else "")
             + "".join(f", {k} {v}" for k, v in r.options.items())
             + (f", best of {r.repeat} runs each" if r.repeat > 1 else "")
             + ("  [DEMO WEIGHTS]" if r.demo_weights else "")]
    if r.baseline_per_s:
        lines.append(f"  baseline  {r.baseline_per_s:9.2f} spectra/s   ({r.baseline_spectra} spectra, "
                     f"the straightforward way)")
        lines.append(f"  engine    {r.engine_per_s:9.2f} spectra/s   ({r.spectra} spectra)   "
                     f"engine/baseline = {r.speedup:.2f}x")
    else:
        lines.append(f"  baseline       none   ({r.pipeline} declares no straightforward way to compare with)")
        lines.append(f"  engine    {r.engine_per_s:9.2f} spectra/s   ({r.spectra} spectra)")
    if r.queue_per_s is not None:
        lines.append(f"  queue     {r.queue_per_s:9.2f} spectra/s   (via {r.queue_broker}, {r.queue_workers} "
                     f"worker{'s' if r.queue_workers > 1 else ''})   queue/engine = {r.queue_ratio:.2f}")
    if r.roofline_per_s:
        speedup = f"roofline/baseline = {r.roofline_speedup:.2f}x, " if r.roofline_speedup else ""
        lines.append(f"  roofline  {r.roofline_per_s:9.2f} spectra/s   (the dense network's multiply-adds alone at "
                     f"the measured {r.matmul_gflops:.1f} GFLOP/s)   {speedup}"
                     f"engine at {r.engine_per_s / r.roofline_per_s:.0%} of it")
    lines.append(f"  peak RSS  {r.peak_rss_mb_engine:.0f} MB after engine, {r.peak_rss_mb_total:.0f} MB after baseline"
                 + (f", worker {r.worker_peak_rss_mb:.0f} MB" if r.worker_peak_rss_mb else ""))
    if r.baseline_per_s:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_rel_diff.items() if v is not None)
        note = f" ({r.baseline_note})" if r.baseline_note else ""
        lines.append(f"  engine vs baseline, max relative difference: {diffs}{note}")
    lines.append("  readers, ms per spectrum: " + ", ".join(f"{k} {v}" for k, v in r.readers_ms.items()))
    if r.precision != "float32":
        lines += _render_precision(r)
    return "\n".join(lines)


def _render_precision(r: BenchResult) -> list[str]:
    """The precision part of :func:`render`: float32 speed and the deviation from float32."""
    effective = "float32" if r.precision == "tf32" and not r.device.startswith("cuda") else r.precision
    note = " (TF32 exists only on CUDA: this is float32)" if effective != r.precision else ""
    lines = [f"  precision {r.precision}{note}: engine in float32 {r.float32_per_s or 0:9.2f} spectra/s, "
             f"{r.precision}/float32 = {r.engine_per_s / r.float32_per_s if r.float32_per_s else float('nan'):.2f}x"]
    if r.queue_per_s is None and r.queue_broker:
        lines.append(f"  queue     {r.queue_broker}")
    lines += [f"  {r.precision} vs float32, same {r.spectra} spectra and noise, max |difference| (max relative):"]
    for name, dev in r.precision_deviation.items():
        text = "n/a" if dev is None else f"{dev['max_abs']:.3g} ({dev['max_rel']:.2g})"
        lines.append(f"    {name:<9} {text}")
    lines.append(f"    result_flags differ on {r.precision_flags_changed} of {r.spectra} spectra")
    lines.append(f"    (\"engine vs baseline\" above compares the {r.precision} engine with the float32 baseline)")
    if r.demo_weights:
        lines.append("    (demo weights are untrained: these deviations are only indicative)")
    return lines
