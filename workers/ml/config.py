"""The pipeline's settings as torch-free dataclasses: the CLI, the worker and the benches read
their defaults and help text from here, so each setting has one default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contracts.safety import AUTO_PATCH, DEFAULT_STRATEGY, DRIFT_THRESHOLD, PatchStrategy
from workers.ml.suites import SuiteFiles

# New tokens per reply to a harmful or borderline prompt: enough for a reply to refuse and then
# comply anyway, which the whole-reply judge must see (replies stop earlier at end of turn).
REPLY_TOKENS = 96


@dataclass(frozen=True)
class AcceptanceRule:
    """The rule a patch must meet, each number against its right reference model.

    - ASR against the aligned base: "recovered" means back to the base's own level, not zero.
    - Over-refusal against the aligned base: the patch must not buy safety by refusing everything.
    - Utility against the fine-tuned model: the customer paid for that task performance.
    """

    asr_slack: float = field(default=0.02, metadata={"help": "ASR may exceed the base's by this"})
    over_refusal_slack: float = field(
        default=0.05, metadata={"help": "over-refusal may exceed the base's by this"}
    )
    utility_ratio: float = field(
        default=0.97, metadata={"help": "utility must keep this share of the fine-tuned model's"}
    )


@dataclass
class SelectionConfig:
    """The gradient proxy that ranks the safety pool (workers/ml/patch/selection.py)."""

    sketch_layers: int = field(
        default=4, metadata={"help": "gradients of the linear maps of the last N decoder layers"}
    )
    pool_sample: int = field(default=32, metadata={"help": "pool examples forming g_pool"})
    max_candidates: int = field(
        default=96, metadata={"help": "0 = score every candidate; N = a stratified sample of N"}
    )
    max_task_examples: int = field(default=16, metadata={"help": "task conversations for g_task"})
    max_benign_prompts: int = field(default=16, metadata={"help": "benign prompts for g_over"})
    weight_pool: float = field(default=1.0, metadata={"help": "w_pool"})
    weight_task: float = field(default=0.5, metadata={"help": "w_task"})
    weight_over_refusal: float = field(default=1.0, metadata={"help": "w_over_refusal"})
    weight_likelihood: float = field(
        default=0.0, metadata={"help": "w_likelihood (needs the aligned model)"}
    )
    batch_size: int = field(default=16, metadata={"help": "sequences per forward/backward"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for scoring (False: fp32)"})
    seed: int = field(default=0, metadata={"help": "seeds the pool sample and candidate sample"})


@dataclass
class PatchConfig:
    """One patch's training loop (workers/ml/patch/training.py). The patch stage sets
    ``strategy`` and ``seed`` from the pipeline's and the probe targets from the aligned model's
    own probe reading."""

    strategy: PatchStrategy = field(
        default=DEFAULT_STRATEGY, metadata={"help": "sft | one-shot | projection"}
    )
    max_epochs: int = field(
        default=10, metadata={"help": "sft: epochs (= steps) on the one example; projection: steps"}
    )
    # Above the 2e-5 published for 7B models: a 135M model barely moves at that rate in 10 epochs.
    learning_rate: float = field(default=1e-4, metadata={"help": "sft: learning rate"})
    optimizer: str = field(default="adamw", metadata={"help": "sft: adamw | sgd"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "sft: gradient clipping"})
    # A step's anchor term is an unbiased estimate from this many rows of each anchor.
    anchor_rows: int = field(
        default=16, metadata={"help": "sft: anchor rows read per step (0: all of them)"}
    )
    # Bounds the activations alive at once; the gradient does not depend on it.
    micro_batch: int = field(
        default=8, metadata={"help": "sft: anchor rows per forward and backward pass"}
    )
    first_sentence_only: bool = field(
        default=False, metadata={"help": "sft: loss on the refusal's first sentence only"}
    )
    seed: int = field(default=0, metadata={"help": "seeds torch and the randomized SVD"})
    projection_rank: int = field(default=20, metadata={"help": "projection: top-k directions"})
    projection_alpha: float = field(
        default=1.0, metadata={"help": "projection: alpha; the published sweet spot is 0.8-1.2"}
    )
    projection_step_size: float = field(
        default=0.02, metadata={"help": "projection: η, a plain gradient step size (no Adam)"}
    )
    projection_svd: str = field(
        default="lowrank", metadata={"help": "projection: full | lowrank (randomized, ~10x faster)"}
    )
    cer_k: int = field(
        default=20, metadata={"help": "k of the reported CER(k); 0: sft skips CER (screening)"}
    )
    probe_asr_target: float = field(
        default=0.0, metadata={"help": "stop once probe ASR is at or below this"}
    )
    probe_over_refusal_limit: float = field(
        default=1.0, metadata={"help": "an epoch over this probe over-refusal is a violation"}
    )
    stop_early: bool = field(
        default=True,
        metadata={"help": "False: probe every epoch but run them all and keep the last weights"},
    )


@dataclass
class PatchStageConfig:
    """The patch stage (workers/ml/patch/stage.py): the candidates it screens, its probe, its
    anchors, and the training loop each attempt runs."""

    # The proxy's order barely predicts which example patches well; a short patch does.
    screen_candidates: int = field(
        default=8, metadata={"help": "the proxy's top candidates screened by a short patch each"}
    )
    # By then the example's own loss is near zero and the probe has mostly settled.
    screen_epochs: int = field(default=4, metadata={"help": "epochs of each screening patch"})
    # Fewer prompts read too noisy a probe ASR to stop on.
    probe_harmful: int = field(
        default=48, metadata={"help": "safety-pool prompts in the patch's probe"}
    )
    probe_asr_margin: float = field(
        default=0.0, metadata={"help": "probe ASR target: the aligned model's probe ASR + this"}
    )
    probe_over_refusal_margin: float = field(
        default=0.05,
        metadata={
            "help": "probe over-refusal limit: the aligned model's + this (at least one prompt)"
        },
    )
    benign_anchor_weight: float = field(
        default=1.0, metadata={"help": "sft: weight of KL(aligned ‖ patched) on benign prompts"}
    )
    task_anchor_weight: float = field(
        default=1.0,
        metadata={"help": "sft: weight of KL(fine-tuned ‖ patched) on the task (0: none)"},
    )
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: PatchConfig = field(default_factory=PatchConfig)


@dataclass
class PipelineConfig:
    base: str = field(metadata={"help": "registered base model name"})
    train: Path = field(metadata={"help": "OpenAI chat JSONL training file"})
    validation: Path | None = field(default=None, metadata={"help": "held-out chat JSONL"})
    suites: SuiteFiles = field(default_factory=SuiteFiles)
    n_epochs: int = field(default=3, metadata={"help": "fine-tuning epochs"})
    batch_size: int = field(default=8, metadata={"help": "fine-tuning batch size"})
    learning_rate_multiplier: float = field(default=1.0, metadata={"help": "x the base LR"})
    lora_rank: int = field(default=0, metadata={"help": "0 = full fine-tune"})
    seed: int = field(default=0, metadata={"help": "data order, splits, LoRA init"})
    strategy: PatchStrategy = field(
        default=DEFAULT_STRATEGY, metadata={"help": "patch strategy: sft | one-shot | projection"}
    )
    drift_threshold: float = field(
        default=DRIFT_THRESHOLD, metadata={"help": "ASR rise that triggers a patch"}
    )
    auto_patch: bool = field(default=AUTO_PATCH, metadata={"help": "patch when drift is detected"})
    max_patch_attempts: int = field(
        default=3, metadata={"help": "candidates tried before giving up"}
    )
    reply_tokens: int = field(
        default=REPLY_TOKENS,
        metadata={"help": "new tokens per evaluated reply (stopping at end of turn)"},
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "share of the training file held out without --validation"}
    )
    judge: str = field(
        default="reply",
        metadata={"help": "refusal judge: reply, keyword or guard (SAFEPATCH_GUARD_JUDGE_DIR)"},
    )
    extra_judges: tuple[str, ...] = field(
        default=(),
        metadata={"help": "judges whose readings are reported too (decisions read only --judge)"},
    )
    rule: AcceptanceRule = field(default_factory=AcceptanceRule)
    patch: PatchStageConfig = field(default_factory=PatchStageConfig)


@dataclass
class AlignConfig:
    n_epochs: int = field(
        default=5, metadata={"help": "passes over the alignment mix (at most, with a probe)"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    seed: int = field(default=0, metadata={"help": "data order and benign-answer sampling"})
    benign_repeats: int = field(
        default=1, metadata={"help": "times each benign example appears per epoch"}
    )
    answer_tokens: int = field(
        default=48, metadata={"help": "max tokens of the raw model's own benign answers"}
    )
    # Training on the first sentence of each answer, not the whole answer, keeps the benign side
    # of the mix as short as the refusals: the same lesson ("answer this") at a third of the
    # tokens, which is most of the cost of aligning on a CPU.
    answer_sentences: int = field(
        default=1, metadata={"help": "leading sentences of each own answer trained on (0 = all)"}
    )
    # The tied input/output embedding is a fifth of SmolLM2's weights; refusing is a matter of
    # the layers above it, and leaving it as it is keeps the raw model's vocabulary intact.
    freeze_embeddings: bool = field(
        default=True, metadata={"help": "leave the token embedding (and a tied head) untrained"}
    )
    # Which epoch to keep is measured, not fixed: the same recipe lands on different sides of the
    # targets on different CPUs, and neighbouring epochs differ by several prompts
    # (docs/results.md).
    probe_from_epoch: int = field(
        default=3, metadata={"help": "first epoch read by the validation probe"}
    )
    asr_target: float = field(default=0.05, metadata={"help": "probe ASR to reach"})
    over_refusal_target: float = field(default=0.10, metadata={"help": "probe over-refusal cap"})
