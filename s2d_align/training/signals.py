"""Auxiliary signals: the text put beside the image in a prompt (a reference report, key phrases).

Each signal is one :class:`Signal` entry of :data:`SIGNALS`: how its per-study values are built,
how one value renders into the prompt, and whether it can be an alignment target. The config
names signals in ``stages.N.context`` and ``stages.N.align_with``; prompts, batches, the
inference contexts and ``s2d-align generate --context`` all read this table. Registry order is
prompt order: instruction, then each signal present, then the answer prefix.

Adding a signal is one entry plus its builder (``tests/test_signals.py`` adds a toy one)::

    register(Signal("prior", render=lambda text, b: f"Prior report: {text}", build=my_builder))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2d_align.config.schema import Config, StageConfig
from s2d_align.errors import ConfigError, DataError
from s2d_align.training.prompts import KEYPHRASE_SEPARATOR, PromptBuilder, truncate_text

if TYPE_CHECKING:
    from s2d_align.data.r2gen import Study

#: ``Signal.missing`` default: a study without a value is an error, never an empty part.
REQUIRED: Any = object()


@dataclass(frozen=True)
class SignalInputs:
    """What a builder may read: the config, the studies to build values for, and the run."""

    cfg: Config
    studies: Sequence[Study]  # the studies whose values are wanted, in split order
    split: str = "train"  # their split ("input" for new images)
    run_dir: Path | None = None  # the run folder (retrieval index, key-phrase vocabulary)
    vocab: Sequence[str] = ()  # the run's key-phrase vocabulary
    keyphrase_source: str | None = None  # the vocabulary's source; None: the config's

    @property
    def reports(self) -> dict[str, str]:
        return {s.id: s.report for s in self.studies}


@dataclass(frozen=True)
class Signal:
    """One auxiliary signal: its config name, prompt rendering, builder and alignment text."""

    name: str  # as written in stages.N.context / align_with
    # A study's value -> its prompt part; "" or None leaves the part out.
    render: Callable[[Any, PromptBuilder], str | None]
    # {study id: value} from data: the values a stage trains with, and the "oracle" ones at
    # inference (from the study's own report; an analysis upper bound, never a headline number).
    build: Callable[[SignalInputs], Mapping[str, Any]]
    # A study's alignment value -> the text the alignment loss pairs with the image; None: the
    # signal cannot be ``align_with``. The alignment value is the prompt value unless the store
    # holds a separate one (key phrases align with every analyser phrase, not the vocabulary's).
    align: Callable[[Any], str] | None = None
    missing: Any = REQUIRED  # the value of a study the store has none for
    # Probability, per training stage, that a study's part is left out of its prompt.
    dropout: Callable[[StageConfig], float] | None = None
    # Label in the inference context names ("image+reference+..."), where the values come from
    # the trained run (retrieval, the key-phrase head); None: a signal only training sees.
    inference: str | None = None
    oracle_context: str | None = None  # name of the inference context with built values
    # Whether a run of these stages can produce the values at inference (None: always).
    produced_by: Callable[[Sequence[StageConfig]], bool] | None = None


#: The registered signals, in prompt order.
SIGNALS: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    """Add ``signal`` after the registered ones (its part follows theirs in prompts)."""
    if signal.name in SIGNALS or signal.name in ("none", "auto", "image"):
        raise ValueError(f"signal name {signal.name!r} is taken")
    SIGNALS[signal.name] = signal
    return signal


def get_signal(name: str, where: str = "signal") -> Signal:
    if name not in SIGNALS:
        raise ConfigError(f"{where}: unknown signal {name!r}; known: {', '.join(SIGNALS)}")
    return SIGNALS[name]


def in_prompt_order(names: Iterable[str], where: str = "context") -> tuple[str, ...]:
    """``names`` checked against the registry and put in prompt order."""
    wanted = {get_signal(n, where).name for n in names}
    return tuple(n for n in SIGNALS if n in wanted)


def render_parts(values: Mapping[str, Any], builder: PromptBuilder) -> list[str]:
    """The prompt parts of the signals in ``values`` (``{name: a study's value}``), in order."""
    parts = []
    for name, sig in SIGNALS.items():
        if name in values:
            part = sig.render(values[name], builder)
            if part:
                parts.append(part)
    return parts


# ----------------------------------------------------------------------------- reference
def _render_reference(text: str, builder: PromptBuilder) -> str | None:
    if not text:
        return None
    ref = truncate_text(builder.tokenizer, text.strip(), builder.budget.reference)
    return builder.prompt.reference.format(text=ref)


def _build_reference(inputs: SignalInputs) -> Mapping[str, str]:
    """The references retrieved for ``inputs.split`` when the run was trained."""
    from s2d_align.training.retrieval import RETRIEVAL_DIR, load_references

    if inputs.run_dir is None:
        raise DataError("reference reports are read from a run folder; none was given")
    return load_references(inputs.run_dir / RETRIEVAL_DIR, inputs.split)


# ----------------------------------------------------------------------------- key phrases
def _render_keyphrases(phrases: Sequence[str], builder: PromptBuilder) -> str | None:
    if phrases:
        text = truncate_text(
            builder.tokenizer, KEYPHRASE_SEPARATOR.join(phrases), builder.budget.keyphrases
        )
        return builder.prompt.keyphrases.format(text=text)
    # An empty list is a study with no key phrase: the prompt says so unless the filler is "".
    filler = builder.prompt.no_keyphrases.strip()
    return builder.prompt.keyphrases.format(text=filler) if filler else None


def _build_keyphrases(inputs: SignalInputs) -> Mapping[str, list[str]]:
    """Oracle key phrases: each report's phrases in the vocabulary, in vocabulary order."""
    from s2d_align.training.keyphrases import load_vocab_source, oracle_keyphrases

    source = inputs.keyphrase_source
    if source is None:
        source = (
            load_vocab_source(inputs.run_dir)
            if inputs.run_dir
            else inputs.cfg.model.keyphrase_source
        )
    return oracle_keyphrases(inputs.reports, inputs.vocab, source)


register(
    Signal(
        "reference",
        render=_render_reference,
        build=_build_reference,
        align=lambda text: text,
        inference="reference",
    )
)
register(
    Signal(
        "keyphrases",
        render=_render_keyphrases,
        build=_build_keyphrases,
        align=KEYPHRASE_SEPARATOR.join,
        missing=(),
        dropout=lambda stage: stage.keyphrase_dropout,
        inference="predicted_keyphrases",
        oracle_context="oracle_keyphrases",
        produced_by=lambda stages: any(s.lambda_kp > 0 for s in stages),  # the key-phrase head
    )
)


# ----------------------------------------------------------------------------- contexts
@dataclass(frozen=True)
class InferenceContext:
    """What prompts hold at inference: the signals, and those built from the study's own report
    (``oracle``) rather than by the trained run."""

    name: str
    signals: tuple[str, ...] = ()
    oracle: tuple[str, ...] = ()

    def source(self, name: str) -> str:
        """ "none", "oracle" or "run" (retrieved, predicted by the head) for signal ``name``."""
        if name not in self.signals:
            return "none"
        return "oracle" if name in self.oracle else "run"


def inference_contexts() -> dict[str, InferenceContext]:
    """Every inference context: "image", then each signal with an inference label added to the
    previous context ("image+reference", ...), then the oracle contexts (analysis only)."""
    out = {"image": InferenceContext("image")}
    oracles: dict[str, InferenceContext] = {}
    chain: tuple[str, ...] = ()
    name = "image"
    for sig in SIGNALS.values():
        if sig.oracle_context:
            ctx = InferenceContext(sig.oracle_context, (*chain, sig.name), (sig.name,))
            oracles[sig.oracle_context] = ctx
        if sig.inference:
            chain, name = (*chain, sig.name), f"{name}+{sig.inference}"
            out[name] = InferenceContext(name, chain)
    return {**out, **oracles}


def auto_context(trained: Iterable[str], stages: Sequence[StageConfig]) -> InferenceContext:
    """The inference context a run's final weights were trained for: the longest one whose
    newest signal is in ``trained`` (the final stages' context) and which ``stages`` can produce
    (key phrases need a trained head). Its older signals are included even if not trained with."""
    have = set(trained)
    chain = [c for c in inference_contexts().values() if c.signals and not c.oracle]
    for ctx in reversed(chain):
        newest = SIGNALS[ctx.signals[-1]]
        if newest.name in have and (newest.produced_by is None or newest.produced_by(stages)):
            return ctx
    return InferenceContext("image")
