"""The benchmarks ``medcl bench`` runs: name -> script, title and arguments for a full and a ``--quick`` run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Benchmark:
    """One script of ``benchmarks/``: its arguments for a full and a ``--quick`` run."""

    script: str
    title: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=lambda: ["--quick"])


#: name -> benchmark (also the JSON file name under results/)
BENCHMARKS: dict[str, Benchmark] = {
    "losses": Benchmark("bench_losses.py", "Contrastive losses: value, time, peak memory",
                        ["--sizes", "256", "1024", "4096"], ["--sizes", "64", "256", "--reps", "2"]),
    "train_loss": Benchmark("bench_train_loss.py", "SimCLR ResNet-18 training throughput: medcl vs lightly loss"),
    "input": Benchmark("bench_input.py", "Input pipeline", [], ["--quick", "--modalities", "oct", "ct"]),
    "train": Benchmark("bench_train.py", "Pretraining throughput and data waiting per modality"),
    "precision": Benchmark("bench_precision.py", "bf16, channels_last, torch.compile and MFU (CPU; GPU when visible)"),
    "scaling": Benchmark("bench_scaling.py", "Scaling: 1 vs 2 processes under torchrun (CPU)"),
    "smoke": Benchmark("bench_smoke.py", "--smoke of every shipped pipeline under torchrun (CPU)"),
    "loops": Benchmark("bench_loops.py", "medcl's training loops against the plain reference loops (images/s)"),
    "augment": Benchmark("bench_augment.py", "What SimCLR learns with per-sample and with batched augmentation (OCT)"),
    "wsi": Benchmark("bench_wsi.py", "Whole-slide tiles: medcl's loader vs a naive OpenSlide loop and MONAI's "
                     "PatchWSIDataset"),
    "demo": Benchmark("bench_demo.py", "make demo after installation: wall time against the 8-minute target"),
    "quality": Benchmark("bench_quality.py", "Learning quality on the demo data (resumable)"),
    "multimodal": Benchmark("bench_multimodal.py", "Learning from reports and from several modalities (resumable)",
                            [], ["--quick", "--seeds", "1"]),
    "package": Benchmark("bench_package.py", "What the Docker image's stages install; the wheel's size"),
}
