"""The one typed configuration of selflabel; defaults are the paper's settings (Zhu and Tian, FLARE 2022).

A `Config` is a tree of frozen dataclasses. Build one with `load_config(preset, yaml_path, overrides)`:
a named preset (`paper`, the default, or `cpu`), then a YAML file, then dotted overrides such as
`{"train.epochs": 5}`. Unknown keys and ill-typed values raise `ConfigError` naming the key.
Every change of settings, by a user or by a stage (a student's epochs, a predictor's device), goes through
`apply_overrides`, which validates the result. Training runs and the pipeline save the resolved config beside their
outputs (`save_config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selflabel.atomic import atomic_write_text
from selflabel.errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """Intensity normalisation, the in-plane crop and the cache's in-plane grid.

    normalization: ``"percentile_zscore"`` (the paper: clip at `clip_percentile`, then z-score per volume),
        ``"hu_window"`` (clip to `hu_window` in HU, then scale to [0, 1], as TransUNet does) or ``"ct_foreground"``
        (nnU-Net's CT scheme: clip to the 0.5 and 99.5 percentiles of the labelled foreground voxels of the training
        cases, then z-score with their mean and std; `foreground_intensity` holds those dataset statistics).
    foreground_intensity: (low, high, mean, std) in HU, computed by `selflabel run` / `selflabel train` from the
        training cases when empty; saved with every run's config, so prediction uses the same numbers.
    crop: ``"none"`` (the whole field of view, the paper) or ``"body"``: each volume cut in-plane to a square around
        the body (voxels above `body_threshold_hu`, largest 3D component, `crop_margin_mm` on each side) before the
        resize; predictions are pasted back into the full grid.
    body_opening_mm: with the body crop, the mask is eroded in-plane by this many mm before its largest component
        is taken (and the box grown back by as much), so that arms lying against the trunk do not widen the box
        (0 = off).
    box_size: with the body crop, ``"body"`` (the square of the body's extent plus the margin: organs are drawn at
        their size relative to the body box) or ``"planned"`` (every box a square of `box_mm` about the body's
        centre: organs keep their size in mm whatever the patient's build, arms or field of view, as nnU-Net's
        fixed target spacing keeps it).
    box_mm: the side of a ``planned`` box; computed by `selflabel run` / `selflabel train` as the median body-box
        side of the labelled training cases when 0, and saved with every run's config.
    image_size: in-plane size (pixels) of the model input and of the cache; slices are resized to it.
    label_resize: how expert labels reach the cache's grid: ``"nearest"`` (each pixel takes the label at its
        centre, as the paper's code resizes them) or ``"area"`` (each pixel takes the label covering most of it:
        every label's mask resized as the image is, antialiased, then the arg-max, as nnU-Net resamples
        segmentations: borders are not aliased, but an organ under half a pixel wide is lost) or ``"area_keep"``
        (``area``, but a pixel that ``area`` makes background keeps the organ at its centre, so thin organs stay).
        The CPU preset keeps ``nearest``: ``area`` cost a patient of another scanner (benchmarks/RESULTS.md,
        session 2026-12-06 (h)).
    """

    normalization: Literal["percentile_zscore", "hu_window", "ct_foreground"] = "percentile_zscore"
    clip_percentile: float = 95.0
    hu_window: tuple[float, float] = (-125.0, 275.0)
    foreground_intensity: tuple[float, ...] = ()
    crop: Literal["none", "body"] = "none"
    body_threshold_hu: float = -500.0
    crop_margin_mm: float = 10.0
    body_opening_mm: float = 0.0
    box_size: Literal["body", "planned"] = "body"
    box_mm: float = 0.0
    image_size: int = 224
    label_resize: Literal["nearest", "area", "area_keep"] = "nearest"


@dataclass(frozen=True)
class ModelConfig:
    """Network choice and shape. Swin fields are used by ``swin_unet``, ``unet_channels`` by ``unet``.

    context: 2.5D input; the model sees the 2k+1 neighbouring axial slices as channels (0 = one grey slice,
        repeated to 3 channels for Swin-Unet as in the paper).
    deep_supervision: ``unet`` only: training also scores the decoder's 1/2 and 1/4 resolution outputs against
        the subsampled labels (loss weights 4:2:1, as nnU-Net); prediction is unchanged.
    norm: ``unet`` only: ``batch`` (BatchNorm), ``group`` (GroupNorm, 8 channels a group) or ``instance``
        (InstanceNorm); the last two normalise each slice alone, in training and prediction alike.
    """

    name: Literal["swin_unet", "unet"] = "swin_unet"
    context: int = 0
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    drop_path_rate: float = 0.2
    unet_channels: tuple[int, ...] = (32, 64, 128, 256)
    deep_supervision: bool = False
    norm: Literal["batch", "group", "instance"] = "batch"

    def options(self) -> dict[str, Any]:
        """Keyword options for `selflabel.models.build_model` for this model name."""
        if self.name == "swin_unet":
            return {
                "embed_dim": self.embed_dim,
                "depths": self.depths,
                "num_heads": self.num_heads,
                "window_size": self.window_size,
                "patch_size": self.patch_size,
                "drop_path_rate": self.drop_path_rate,
            }
        return {"channels": self.unet_channels, "deep_supervision": self.deep_supervision, "norm": self.norm}


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's "random rotation and flip", with the Swin-Unet code's probabilities, and options beyond it.

    rot90_flip_prob: probability of a random multiple-of-90-degree rotation followed by a random axis flip.
    rotate_prob: probability of a rotation by a uniform angle in [-rotate_degrees, rotate_degrees].
    strong: also zoom (1 ± `scale`), brightness (± `brightness`) and contrast (1 ± `contrast`), gamma
        (exp(± `gamma`)), Gaussian noise (sd up to `noise_std`) and blur (sigma up to `blur_sigma` pixels), each with
        probability `strong_prob` (the noisy student's input noise; `pipeline.student_augment` sets it for students).
    phase_shift: with probability `phase_shift_prob`, a training slice as if scanned in another contrast phase: every
        organ moves by its typical enhancement (`labels.Organ.enhancement_hu`) times one factor uniform in
        ± phase_shift (1 = from plain to portal-venous; 0 = off), in HU converted to the normalised units
        (`phase_mode` ``shift``), or each solid organ and vessel set to a random phase's intensity, plain to
        `phase_shift` times its portal-venous enhancement, whatever the scan's phase (``target``; see `RandomPhase`).
    phase_jitter: with ``target``, the sd of each organ's own phase about the slice's (0 = every organ at one phase).
    elastic_prob: probability of a smooth random deformation (`RandomElastic`: displacements of sd
        `elastic_magnitude`, a fraction of the slice's half-side, on a 5x5 control grid); 0 = off (the paper).
    zoom_prob: probability of the strong set's zoom (1 ± `scale`) for every model, teacher included (0 = the zoom
        only with `strong`, at `strong_prob`; with both, the larger probability).
    shift: with the zoom, a random in-plane translation up to ± `shift` of the slice's side per axis (0 = the zoom
        is about the centre, as before).
    distension_prob: probability that a training slice's stomach, duodenum or gallbladder (one of those present) is
        distended by a local magnification of up to `distension_max` (`selflabel.data.RandomDistension`); 0 = off.
    contents_prob: probability that a training slice's stomach and duodenum get new contents (a fluid-to-food level,
        a texture, often a gas pocket; `selflabel.data.RandomContents`); 0 = off.
    copy_paste: probability that a training slice gets a random box (a side of 30-60 % of the slice) of a slice of
        the other kind pasted in, labels with it: a labelled box into a pseudo-labelled slice and the reverse
        (bidirectional copy-paste); only when a model trains on both kinds.
    teacher_copy_paste: the same for the teacher, whose slices are all expert-labelled: a box of another labelled
        slice, labels with it (new combinations of a few patients' anatomy); 0 = off. Not for students or fine-tuning.
    """

    rot90_flip_prob: float = 0.5
    rotate_prob: float = 0.5
    rotate_degrees: float = 20.0
    strong: bool = False
    strong_prob: float = 0.3
    scale: float = 0.2
    brightness: float = 0.2
    contrast: float = 0.25
    gamma: float = 0.3
    noise_std: float = 0.1
    blur_sigma: float = 1.0
    phase_shift: float = 0.0
    phase_shift_prob: float = 0.5
    phase_mode: Literal["shift", "target"] = "shift"
    phase_jitter: float = 0.0
    elastic_prob: float = 0.0
    elastic_magnitude: float = 0.04
    zoom_prob: float = 0.0
    shift: float = 0.0
    distension_prob: float = 0.0
    distension_max: float = 2.0
    contents_prob: float = 0.0
    copy_paste: float = 0.0
    teacher_copy_paste: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Training protocol: Dice + CE, Adam 1e-3 with poly decay, batch 18, validation every epoch.

    iterations_per_epoch: 0 means one pass over all training slices.
    checkpoint_every: also write `latest.pt` every this many iterations within an epoch (0 = at epoch ends only).
    foreground_fraction: share of sampled slices forced to contain an organ (0 = uniform over slices).
    foreground_sampling: how those slices are drawn: ``"any"`` slice holding an organ, or ``"per_organ"``: an organ
        uniformly among those present, then a slice holding it (small organs seen as often as the liver).
    amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"bf16"``, ``"fp16"`` (CUDA, with a grad scaler) or ``"none"``.
    pseudo_weight: sampling weight of a pseudo-labelled case relative to a labelled one.
    ema_decay: keep an exponential moving average of the weights (and BatchNorm statistics), updated after every
        step with this decay; the average is what is validated, kept as the best checkpoint and predicts
        (0 = off, the paper).
    freeze: ``"none"`` (every parameter trains) or ``"encoder"``: the network's contracting path keeps its weights
        (the U-Net's encoder levels; Swin-Unet's patch embedding, encoder stages and their norm); BatchNorm
        statistics still follow the batches.
    """

    epochs: int = 150
    iterations_per_epoch: int = 0
    batch_size: int = 18
    lr: float = 1e-3
    poly_power: float = 0.9
    weight_decay: float = 0.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    val_every: int = 1
    checkpoint_every: int = 500
    foreground_fraction: float = 0.0
    foreground_sampling: Literal["any", "per_organ"] = "any"
    pseudo_weight: float = 1.0
    ema_decay: float = 0.0
    freeze: Literal["none", "encoder"] = "none"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 4
    device: str = "auto"


@dataclass(frozen=True)
class InferenceConfig:
    """Whole-volume prediction: batched axial slices, optional flip and zoom TTA and clean-ups.

    tta_zoom: in-plane zoom factors (e.g. ``[0.9, 1.1]``; > 1 shows the organs larger) whose probabilities, mapped
        back, are averaged with the unzoomed slice's (empty = off); each factor costs one more forward pass.
    tta_rotate: in-plane angles in degrees (e.g. ``[-10, 10]``), the same for slices turned about their centre.
    largest_component: keep each organ's largest 3D connected component.
    min_component_fraction: keep each organ's largest 3D component and those at least this fraction of its size
        (a milder clean-up than `largest_component`: a false organ far away goes, a kidney's upper pole cut off
        between slices stays; 0 = off).
    z_range: ``"all"`` slices, or ``"main_slab"``: only the axial slab holding most of the predicted organ voxels
        (runs of slices with organs, gaps of up to `z_gap_mm` bridged) keeps its labels; organs "found" in the
        chest or legs of a longer scan, away from the abdomen, are cleared.
    adapt_bn: before predicting a volume, every BatchNorm layer's statistics are estimated anew on that volume's
        slices (AdaBN: Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", 2016), then the
        trained ones come back: a scan of another scanner, phase or noise level is normalised by its own
        statistics. One more forward pass per volume, of up to `adapt_bn_slices` slices spread evenly through it;
        no effect on networks without BatchNorm (Swin-Unet).
    adapt_bn_slices: how many slices that pass sees (all of a shorter volume); one batch, whatever `batch_size`.
        32 scores as 64 did (within 0.001 DSC), `selflabel predict` in 0.85x the time (RESULTS.md, session 2026-12-07).
    adapt_bn_weight: with `adapt_bn`, the scan's share of the statistics, the trained ones the rest (1 = the scan's
        own; 0.5 was a little better on scans like the training data and worse on a patient of another scanner,
        benchmarks/RESULTS.md, session 2026-12-05).
    z_smoothing: each slice's probabilities are mixed with its two neighbours', each weighted `z_smoothing`, before
        the arg-max (0 = off; at most 0.5): slices predicted one by one agree more with each other, as the organs
        do between slices a few millimetres apart. Pseudo-labels are made with it too.
    z_smoothing_mm: the same mixing with a weight of each scan's slice spacing d (mm): each neighbour counts
        g = exp(-d^2 / (2 z_smoothing_mm^2)) against the slice's 1, so w = g / (1 + 2g) (at 2.5 mm: w 0.25 at a
        3-mm spacing, 0.11 at 5 mm, 0.30 at 2 mm); thick slices, whose neighbours show other anatomy, are mixed
        less (0 = off; not with `z_smoothing`). Predictions and evaluation only; `pseudolabel.z_smoothing_mm` for
        the pseudo-labelling teacher.
    """

    batch_size: int = 32
    tta_flip: bool = False
    tta_zoom: tuple[float, ...] = ()
    tta_rotate: tuple[float, ...] = ()
    largest_component: bool = False
    min_component_fraction: float = 0.0
    z_range: Literal["all", "main_slab"] = "all"
    z_gap_mm: float = 30.0
    adapt_bn: bool = False
    adapt_bn_weight: float = 1.0
    adapt_bn_slices: int = 32
    z_smoothing: float = 0.0
    z_smoothing_mm: float = 0.0
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Pseudo-label quality control (all off by default, as in the paper).

    confidence_tau: voxels whose maximum probability is below it become 255 (ignored by the loss); 0 = off.
    confidence_scope: which voxels `confidence_tau` may ignore: ``"all"``, or ``"background"`` only (where the
        teacher said background but gave an organ some of its probability; its organ voxels all stay).
    low_confidence_tau: threshold used only for the per-case "fraction of uncertain foreground" statistic.
    drop_least_confident: fraction of cases with the lowest mean confidence left out of student training.
    drop_most_changed: fraction of cases whose labels changed most between rounds left out (rounds >= 2).
    soft_weights: the student's loss weighs each pseudo-labelled voxel by the teacher's confidence in it (its
        maximum softmax probability) instead of 1.
    checkpoints: the teacher that makes pseudo-labels: its ``"best"`` checkpoint, or ``"best_and_latest"`` (an
        ensemble averaging the two checkpoints' probabilities).
    adapt_bn: the teacher's BatchNorm statistics estimated on each unlabelled scan (`inference.adapt_bn`, which
        applies to predictions and evaluation only; students trained on adapted pseudo-labels did worse on realct,
        benchmarks/RESULTS.md, session 2026-12-05).
    z_smoothing_mm: the teacher's slices mixed with their neighbours' by spacing (`inference.z_smoothing_mm`, which
        applies to predictions and evaluation only; students learnt less from smoothed pseudo-labels,
        benchmarks/RESULTS.md, session 2026-12-06).
    companion_rate: anatomical check (`selflabel.anatomy`): a pseudo-label slice holding an organ without an organ
        that at least this share of the teacher's labelled slices holding it also hold (the aorta beside the liver) is
        ignored whole (255); e.g. 0.99, 0 = off. Catches organs a teacher misses on a scanner it has not learnt.

    The teacher predicts with the `inference` settings (flip TTA, largest component), as every prediction does,
    except for the BatchNorm adaptation and the spacing-scaled smoothing, which `adapt_bn` and `z_smoothing_mm` set.
    """

    confidence_tau: float = 0.0
    confidence_scope: Literal["all", "background"] = "all"
    low_confidence_tau: float = 0.9
    drop_least_confident: float = 0.0
    drop_most_changed: float = 0.0
    soft_weights: bool = False
    checkpoints: Literal["best", "best_and_latest"] = "best"
    adapt_bn: bool = False
    z_smoothing_mm: float = 0.0
    companion_rate: float = 0.0


@dataclass(frozen=True)
class PipelineConfig:
    """The recipe: split, rounds of teacher -> pseudo-labels -> student, optional fine-tuning.

    train_fraction: share of labelled cases used for training (the paper: 20 of 50), the rest validate. ``1``:
        every labelled case trains and none validates; each model keeps its last epoch (with a handful of labelled
        scans, a case is worth more to training than to picking a checkpoint).
    rounds: teacher -> pseudo-labels -> student rounds; from round 2 the previous student is the teacher.
    student_epochs: epochs of each student (0 = `train.epochs`, as in the paper). A student sees many more cases
        than its teacher; with a fixed `train.iterations_per_epoch` it may need more epochs to take them in.
    finetune_epochs: after the last round, fine-tune the student on the labelled cases only (0 = off) at
        `finetune_lr` (poly decay as in training).
    finetune_iterations: iterations of each fine-tuning epoch (0 = `train.iterations_per_epoch`): a shorter
        fine-tuning for a tight time budget.
    finetune_augment: ``"student"`` (the students' augmentation, strong with ``student_augment: strong``) or
        ``"teacher"`` (the teacher's: the labelled cases are not noisy labels to be robust to).
    finetune_freeze: `train.freeze` of the fine-tuning only (``"encoder"``: the last student's encoder kept, its
        decoder and heads fine-tuned).
    student_model: ``"teacher"`` (every student is the teacher's network, the paper) or ``"own"``: students use the
        `student` section (another network or size, e.g. a small fast student of a large teacher).
    student_augment: ``"same"`` as the teacher, or ``"strong"``: students train with `augment.strong` on.
    student_distension_prob: `augment.distension_prob` of every student and of the fine-tuning (0 = the teacher's):
        stomachs, duodena and gallbladders fuller than the labelled scans show, taught to the students only, so that
        the teacher's pseudo-labels stay those of the labelled anatomy.
    student_init: ``"scratch"`` (a new network, the paper) or ``"teacher"``: each student starts from its teacher's
        best weights, so that a short schedule goes into the pseudo-labelled cases rather than into learning
        anatomy again (needs ``student_model: teacher``; from round 2 the teacher is the previous student).
    student_lr: each student's initial learning rate (0 = `train.lr`, as in the paper); poly decay as in training.
    student_batch_size: slices per batch of every student and of the fine-tuned student (0 = `train.batch_size`): with
        a finer `student_image_size`, a smaller batch keeps the cost of an iteration.
    student_labelled: the labelled cases each student (and the fine-tuned student) trains on beside the
        pseudo-labelled ones: ``"train"`` (the training split, the paper) or ``"all"`` (the validation cases too: with
        few labelled scans, their ground truth is worth more to a student than a fair validation score; a student's
        validation DSC then measures its fit, and only test cases measure it fairly).
    student_image_size: the in-plane grid (pixels) of every student and of the fine-tuned student (0 = the teacher's
        `preprocess.image_size`): a finer grid holds small organs and borders better, at its cost in time; the
        teacher's pseudo-labels are resized to it as probabilities, and the labelled and unlabelled scans are cached
        at it too.
    synthetic_cases: phantom bodies (`selflabel.phantom`) added to the labelled training cases of the teacher and
        every student, and of the fine-tuning with `synthetic_finetune_weight` (0 = off, the paper): anatomy of other
        builds, stomach fillings and levels that a few labelled scans of one patient do not show. Each is labelled
        with the organs the labelled training cases hold (at the dataset's label values; any other organ is
        background), made once into WORK/synthetic from the run's seed, and drawn `synthetic_weight` as often as a
        labelled case.
    synthetic_teacher: the teacher trains on the phantom cases too (``false``: the students only, so that the
        pseudo-labels are the teacher's of the labelled anatomy alone).
    synthetic_finetune_weight: how often the fine-tuning draws each phantom case against a labelled case (0: never,
        the fine-tuning is on the labelled cases alone).
    """

    train_fraction: float = 0.4
    rounds: int = 1
    student_epochs: int = 0
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    finetune_iterations: int = 0
    finetune_augment: Literal["student", "teacher"] = "student"
    finetune_freeze: Literal["none", "encoder"] = "none"
    student_model: Literal["teacher", "own"] = "teacher"
    student_augment: Literal["same", "strong"] = "same"
    student_distension_prob: float = 0.0
    student_init: Literal["scratch", "teacher"] = "scratch"
    student_lr: float = 0.0
    student_batch_size: int = 0
    student_labelled: Literal["train", "all"] = "train"
    student_image_size: int = 0
    synthetic_cases: int = 0
    synthetic_weight: float = 0.25
    synthetic_teacher: bool = True
    synthetic_finetune_weight: float = 0.0


@dataclass(frozen=True)
class Config:
    """All settings of a selflabel run; the defaults are the paper's.

    `model` is the teacher's network (and every model's, unless ``pipeline.student_model`` is ``"own"``; then
    students use `student`).
    """

    seed: int = 0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


#: Named presets as dotted overrides of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Minutes on 2 CPU cores: a small 2D U-Net at 80x80 (convolutions learn far faster per CPU-second than a
    # from-scratch transformer; see benchmarks/RESULTS.md, "CPU preset"), with the options beyond the paper that
    # helped in benchmarks/ablation.py (RESULTS.md, "Accuracy: the ablation"; two cohorts x two seeds): the body
    # crop, nnU-Net's CT normalisation and per-organ slice sampling (both clearly better on the real-CT cohort,
    # neutral on the phantom), no mirroring (it swaps left and right organs), strong augmentation and copy-paste for
    # the student, the student started from the teacher's weights (the CPU schedule is too short for a student from
    # scratch to overtake its teacher), contrast phases simulated to plausible targets (kidneys and aorta of other
    # phases), an 80x80 grid rather than 64x64 (small organs hold 25 % more pixels a side; 170 iterations per epoch
    # instead of 200 keep the time near 1.3x), and a smooth elastic deformation of half the slices (phantom +0.04,
    # realct neutral, the real patient of another scanner +0.12 against an approximate reference: one patient's
    # anatomy bent towards another's); 90 % of the slices drawn holding an organ (the phantom's teacher +0.04,
    # students +0.004 on both cohorts); two rounds of 3-epoch students at a 96x96 grid instead of one 8-epoch round
    # at 80 (phantom +0.022, realct +0.006 test DSC, four seeds, every run up; 1.09x the recipe's time with 2
    # threads); BatchNorm statistics of each scan at prediction and evaluation (AdaBN; final models phantom +0.006,
    # realct +0.001, three seeds; the real patient of another scanner +0.04 for students, +0.12 for teachers), not
    # when pseudo-labelling (students did worse on realct); every labelled case in training, each model keeping its
    # last epoch (phantom +0.026, five seeds); deep supervision of the U-Net's 1/2 and 1/4 outputs (final models
    # phantom +0.015, realct +0.002, five seeds, 9 of 10 up); a pseudo-labelled case drawn a quarter as often as a
    # labelled one (final models phantom +0.013, realct +0.004, five seeds, 10 of 10 up). With model.name=swin_unet,
    # also set model.deep_supervision=false and pipeline.student_image_size=0: a transformer started from the
    # teacher keeps the teacher's grid.
    "cpu": {
        "preprocess.image_size": 80,
        "preprocess.crop": "body",
        "preprocess.normalization": "ct_foreground",
        "model.name": "unet",
        "model.unet_channels": (16, 32, 64, 128),
        "model.deep_supervision": True,
        # with --set model.name=swin_unet: a small Swin-Unet that fits the 80x80 grid (5x5 patches: 16/8/4/2 tokens)
        "model.embed_dim": 24,
        "model.num_heads": (1, 2, 4, 8),
        "model.window_size": 4,
        "model.patch_size": 5,
        "model.drop_path_rate": 0.1,
        # a student of its own (pipeline.student_model: own) starts as the teacher's network
        "student.name": "unet",
        "student.unet_channels": (16, 32, 64, 128),
        "student.deep_supervision": True,
        "augment.rot90_flip_prob": 0.0,
        "augment.copy_paste": 0.5,
        "augment.elastic_prob": 0.5,
        "augment.phase_shift": 1.0,
        "augment.phase_mode": "target",
        "train.lr": 3e-3,
        "train.epochs": 6,
        "train.batch_size": 8,
        "train.iterations_per_epoch": 170,
        "pipeline.rounds": 2,
        "pipeline.student_epochs": 3,
        "pipeline.student_image_size": 96,
        "pipeline.student_augment": "strong",
        "pipeline.student_init": "teacher",
        # four phantom bodies among the students' labelled cases (not the teacher's: its pseudo-labels stay those of
        # the labelled anatomy), each drawn half as often as a labelled case: builds, stomach fillings and levels that
        # a few labelled patients do not show; then the last student fine-tuned for a whole epoch on the labelled
        # cases alone (half an epoch before). Ten realct seeds: its own test cases -0.000 +- 0.003; the real patient
        # of another scanner 0.505 -> 0.561, 9 of 10 up, 9 of 10 seeds >= 0.50 (the preset before: 5 of 10); two AMOS
        # patients up in 9 of 10; the phantom +0.014, 4 of 4 (RESULTS.md, session 2026-12-07 (i))
        "pipeline.synthetic_cases": 4,
        "pipeline.synthetic_weight": 0.5,
        "pipeline.synthetic_teacher": False,
        "pipeline.finetune_epochs": 1,
        "pipeline.finetune_lr": 1e-3,
        "pipeline.finetune_iterations": 170,
        # ... with the last student's encoder kept: the decoder and heads return to the labelled anatomy, the features
        # the phantom bodies taught stay. Ten realct seeds: its own test cases -0.001 +- 0.001, the phantom -0.000; the
        # real patient of another scanner 0.561 -> 0.574, 7 of 10 up, 10 of 10 seeds >= 0.50 (9 before); two AMOS
        # patients up in 9 of 10 (RESULTS.md, session 2026-12-07 (j))
        "pipeline.finetune_freeze": "encoder",
        # every labelled case trains the teacher; each model keeps its last epoch (benchmarks/RESULTS.md)
        "pipeline.train_fraction": 1.0,
        "train.foreground_fraction": 0.9,
        "train.foreground_sampling": "per_organ",
        # a pseudo-labelled case drawn a quarter as often as a labelled one (RESULTS.md, session 2026-12-06 (d))
        "train.pseudo_weight": 0.25,
        # pseudo-label slices missing an organ that the labelled slices always show beside another are ignored
        # (selflabel.anatomy): even on both cohorts (phantom +0.001, realct +0.000, three seeds); with a second
        # patient's scans among the unlabelled, that patient +0.21 (3 of 3; RESULTS.md, session 2026-12-07 (c))
        "pseudolabel.companion_rate": 0.99,
        "train.num_workers": 0,
        "train.amp": "none",
        "inference.batch_size": 64,
        "inference.adapt_bn": True,
    },
}


def _check_value(key: str, hint: Any, value: Any) -> Any:
    """Coerce `value` to the annotated type `hint` or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0]
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(key, item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
            number = _float_or_none(value)
            value = value if number is None else number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _float_or_none(text: str) -> float | None:
    """`text` as a finite decimal number (``1e-4``, ``-3E2``), else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _replace(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    """Return a copy of the dataclass `obj` with the field at `parts` set to `value`."""
    hints = typing.get_type_hints(type(obj))
    name = parts[0]
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(obj))
        raise ConfigError(f"unknown setting {key!r} (known here: {known})")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            for sub, subvalue in value.items():
                current = _replace(current, [sub], subvalue, f"{key}.{sub}")
            return dataclasses.replace(obj, **{name: current})
        return dataclasses.replace(obj, **{name: _replace(current, parts[1:], value, key)})
    if len(parts) > 1:
        raise ConfigError(f"unknown setting {key!r}: {name} is not a section")
    return dataclasses.replace(obj, **{name: _check_value(key, hints[name], value)})


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Apply dotted (``"train.epochs"``) or nested (``{"train": {...}}``) overrides."""
    for key, value in overrides.items():
        config = _replace(config, key.split("."), value, key)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check the settings that types alone do not; raise ConfigError saying what to change."""
    _validate_preprocess(config)
    _validate_models(config)
    _validate_train(config)
    _validate_inference(config)
    _validate_augment(config)
    _validate_pipeline(config)


def _validate_preprocess(config: Config) -> None:
    """The preprocess settings."""
    p = config.preprocess
    if not 0 < p.clip_percentile <= 100:
        raise ConfigError(f"preprocess.clip_percentile must be in (0, 100], got {p.clip_percentile}")
    if p.hu_window[0] >= p.hu_window[1]:
        raise ConfigError(f"preprocess.hu_window must be [low, high] with low < high, got {list(p.hu_window)}")
    stats = p.foreground_intensity
    if stats and (len(stats) != 4 or stats[0] >= stats[1] or stats[3] <= 0):
        raise ConfigError(
            f"preprocess.foreground_intensity must be [low, high, mean, std], low < high, std > 0; got {list(stats)}"
        )
    if p.body_opening_mm < 0:
        raise ConfigError(f"preprocess.body_opening_mm must be >= 0 (0 = off), got {p.body_opening_mm}")
    if p.crop_margin_mm < 0:
        raise ConfigError(f"preprocess.crop_margin_mm must be >= 0, got {p.crop_margin_mm}")
    if p.image_size < 8:
        raise ConfigError(f"preprocess.image_size must be at least 8, got {p.image_size}")
    if p.box_mm < 0:
        raise ConfigError(f"preprocess.box_mm must be >= 0 (0 = planned from the training cases), got {p.box_mm}")


def _validate_models(config: Config) -> None:
    """The model and student settings."""
    if config.model.context < 0:
        raise ConfigError(f"model.context must be >= 0, got {config.model.context}")
    for section, model in (("model", config.model), ("student", config.student)):
        if model.deep_supervision and model.name != "unet":
            raise ConfigError(
                f"{section}.deep_supervision needs {section}.name unet, got {model.name} "
                f"(set {section}.deep_supervision=false)"
            )
        if model.norm != "batch" and model.name != "unet":
            raise ConfigError(f"{section}.norm {model.norm} needs {section}.name unet, got {model.name}")


def _validate_train(config: Config) -> None:
    """The train settings."""
    t = config.train
    if t.epochs < 1 or t.batch_size < 1 or t.val_every < 1:
        raise ConfigError("train.epochs, train.batch_size and train.val_every must be >= 1")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if not 0 <= t.foreground_fraction <= 1:
        raise ConfigError(f"train.foreground_fraction must be in [0, 1], got {t.foreground_fraction}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0 = off), got {t.ema_decay}")
    if t.pseudo_weight <= 0:
        raise ConfigError(f"train.pseudo_weight must be positive, got {t.pseudo_weight}")


def _validate_inference(config: Config) -> None:
    """The inference settings."""
    i = config.inference
    if i.z_gap_mm < 0:
        raise ConfigError(f"inference.z_gap_mm must be >= 0, got {i.z_gap_mm}")
    if not 0 <= i.min_component_fraction < 1:
        raise ConfigError(
            f"inference.min_component_fraction must be in [0, 1) (0 = off; the largest alone is largest_component), "
            f"got {i.min_component_fraction}"
        )
    if not 0 <= i.z_smoothing <= 0.5:
        raise ConfigError(f"inference.z_smoothing must be in [0, 0.5], got {i.z_smoothing}")
    for key, value in (("inference", i.z_smoothing_mm), ("pseudolabel", config.pseudolabel.z_smoothing_mm)):
        if value < 0:
            raise ConfigError(f"{key}.z_smoothing_mm must be >= 0 (0 = off), got {value}")
        if value and i.z_smoothing:
            raise ConfigError(f"{key}.z_smoothing_mm and inference.z_smoothing are two ways to one mixing: set one")
    if not 0 < i.adapt_bn_weight <= 1:
        raise ConfigError(f"inference.adapt_bn_weight must be in (0, 1], got {i.adapt_bn_weight}")
    if i.adapt_bn_slices < 2:
        raise ConfigError(f"inference.adapt_bn_slices must be >= 2 (statistics need a spread), got {i.adapt_bn_slices}")
    if any(not 0.5 <= f <= 2 for f in i.tta_zoom):
        raise ConfigError(f"inference.tta_zoom factors must be in [0.5, 2], got {list(i.tta_zoom)}")
    if any(not -45 <= a <= 45 for a in i.tta_rotate):
        raise ConfigError(f"inference.tta_rotate angles must be in [-45, 45] degrees, got {list(i.tta_rotate)}")


def _validate_augment(config: Config) -> None:
    """The augment settings."""
    a = config.augment
    for key in ("copy_paste", "teacher_copy_paste", "strong_prob", "zoom_prob", "contents_prob", "distension_prob"):
        if not 0 <= getattr(a, key) <= 1:
            raise ConfigError(f"augment.{key} must be in [0, 1], got {getattr(a, key)}")
    if not 1 <= a.distension_max <= 4:
        raise ConfigError(f"augment.distension_max must be in [1, 4] (a magnification), got {a.distension_max}")
    if a.phase_jitter < 0:
        raise ConfigError(f"augment.phase_jitter must be >= 0 (0 = every organ at one phase), got {a.phase_jitter}")
    if not 0 <= a.shift <= 0.5:
        raise ConfigError(f"augment.shift must be in [0, 0.5] (a fraction of the slice's side), got {a.shift}")
    if not 0 <= a.elastic_prob <= 1 or a.elastic_magnitude < 0:
        raise ConfigError(
            f"augment.elastic_prob must be in [0, 1] and augment.elastic_magnitude >= 0, "
            f"got {a.elastic_prob} and {a.elastic_magnitude}"
        )


def _validate_pipeline(config: Config) -> None:
    """The pipeline and pseudolabel settings."""
    p = config.preprocess
    pl = config.pipeline
    if pl.student_image_size and pl.student_image_size < 8:
        size = pl.student_image_size
        raise ConfigError(f"pipeline.student_image_size must be 0 (the teacher's grid) or at least 8, got {size}")
    if pl.finetune_lr <= 0:
        raise ConfigError(f"pipeline.finetune_lr must be positive, got {pl.finetune_lr}")
    if pl.synthetic_cases < 0 or pl.synthetic_weight <= 0:
        raise ConfigError(
            "pipeline.synthetic_cases must be >= 0 and pipeline.synthetic_weight positive, got "
            f"{pl.synthetic_cases} and {pl.synthetic_weight}"
        )
    if pl.synthetic_finetune_weight < 0:
        w = pl.synthetic_finetune_weight
        raise ConfigError(f"pipeline.synthetic_finetune_weight must be >= 0 (0 = the labelled cases alone), got {w}")
    if pl.finetune_iterations < 0:
        n = pl.finetune_iterations
        raise ConfigError(f"pipeline.finetune_iterations must be >= 0 (0 = train.iterations_per_epoch), got {n}")
    if not 0 <= pl.student_distension_prob <= 1:
        prob = pl.student_distension_prob
        raise ConfigError(f"pipeline.student_distension_prob must be in [0, 1] (0 = the teacher's), got {prob}")
    if pl.student_lr < 0:
        raise ConfigError(f"pipeline.student_lr must be >= 0 (0 = train.lr), got {pl.student_lr}")
    if pl.student_batch_size < 0:
        raise ConfigError(
            f"pipeline.student_batch_size must be >= 0 (0 = train.batch_size), got {pl.student_batch_size}"
        )
    if not 0 < pl.train_fraction <= 1:
        raise ConfigError(f"pipeline.train_fraction must be in (0, 1], got {pl.train_fraction}")
    if pl.rounds < 1:
        raise ConfigError(f"pipeline.rounds must be >= 1, got {pl.rounds}")
    if pl.student_init == "teacher" and pl.student_model != "teacher":
        raise ConfigError(
            "pipeline.student_init teacher needs pipeline.student_model teacher (the same network); "
            "set pipeline.student_init=scratch for a student of its own"
        )
    if pl.student_init == "teacher" and pl.student_image_size not in (0, p.image_size) and config.model.name != "unet":
        raise ConfigError(
            f"pipeline.student_init teacher with a student grid of its own needs a unet (a {config.model.name}'s "
            "weights depend on its grid); set pipeline.student_init=scratch or pipeline.student_image_size=0"
        )
    for name in ("drop_least_confident", "drop_most_changed"):
        if not 0 <= getattr(config.pseudolabel, name) < 1:
            raise ConfigError(f"pseudolabel.{name} must be in [0, 1)")
    rate = config.pseudolabel.companion_rate
    if not 0 <= rate <= 1:
        raise ConfigError(f"pseudolabel.companion_rate must be in [0, 1] (0 = off), got {rate}")


def load_config(
    preset: str = "paper", yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Build a Config: defaults, then the preset, then the YAML file, then `overrides`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = apply_overrides(Config(), PRESETS[preset])
    if yaml_path is not None:
        config = apply_overrides(config, read_yaml(yaml_path))
    return apply_overrides(config, overrides or {})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of `config_to_dict`."""
    return apply_overrides(Config(), data)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
