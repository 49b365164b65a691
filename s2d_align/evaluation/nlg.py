"""NLG metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr (SPICE excluded).

The numbers are pycocoevalcap's own: its scorer classes compute every corpus value. This module
only changes how the two Java tools are launched, never what they compute:

- **PTB tokenizer**: pycocoevalcap's ``PTBTokenizer`` writes its temporary file into its own
  package folder, which fails when site-packages is read-only (system installs, containers).
  :func:`ptb_tokenize` runs the same jar with the same options on a temporary file in a writable
  temp dir, then drops the same punctuation tokens. References and hypotheses go through one Java
  call (the tokenizer works line by line, so batching changes nothing).
- **Locale**: both Java processes get ``LC_ALL=C`` plus ``-Duser.language=en -Duser.country=US``
  and UTF-8 I/O, so a machine with a decimal-comma locale cannot break METEOR's number parsing
  and a Turkish locale cannot change ``-lowerCase``.
- **METEOR** starts once per :class:`NLGScorer` (it loads its paraphrase table: ~10-15 s of CPU)
  and runs in a background thread while BLEU, ROUGE-L and CIDEr are computed in Python.

Line breaks inside a text (``\\n``, ``\\r``, ``\\u2028``...) become spaces before tokenization;
pycocoevalcap replaces only ``\\n`` and would misalign its output lines on the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb_module
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from s2d_align.errors import S2DError

__all__ = [
    "BLEU_STAT_COLUMNS",
    "BLEU_STAT_PREFIX",
    "NLG_METRICS",
    "NLG_STEPS",
    "JavaError",
    "NLGResult",
    "NLGScorer",
    "bleu_from_stats",
    "nlg_versions",
    "ptb_tokenize",
    "score_nlg",
]

#: Metric names, as pycocoevalcap's COCOEvalCap names them.
NLG_METRICS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
#: Columns of :attr:`NLGResult.bleu_stats`: BLEU's per-sample sufficient statistics.
BLEU_STAT_COLUMNS = (
    "testlen", "reflen", "guess_1", "guess_2", "guess_3", "guess_4",
    "correct_1", "correct_2", "correct_3", "correct_4",
)  # fmt: skip
#: Per-sample keys of BLEU's sufficient statistics (``bleu_stat/testlen`` ...): stored with the
#: per-sample scores so that corpus BLEU can be resampled and tested from the results store.
BLEU_STAT_PREFIX = "bleu_stat/"
#: The steps :meth:`NLGScorer.score` reports per hypothesis set (``on_step``), in order.
NLG_STEPS = ("BLEU", "ROUGE_L", "CIDEr", "METEOR")

PTB_JAR = Path(_ptb_module.__file__).resolve().parent / _ptb_module.STANFORD_CORENLP_3_4_1_JAR
METEOR_JAR = Path(_meteor_module.__file__).resolve().parent / _meteor_module.METEOR_JAR
#: JVM options that pin number formatting, case mapping and text encoding.
JAVA_LOCALE_FLAGS = (
    "-Duser.language=en",
    "-Duser.country=US",
    "-Dfile.encoding=UTF-8",
    "-Dsun.stdout.encoding=UTF-8",
    "-Dsun.stderr.encoding=UTF-8",
)
# Characters that Java or Python may treat as a line end; a text must stay on one line.
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class JavaError(S2DError):
    """Java is missing, or one of pycocoevalcap's Java tools failed."""


def nlg_versions() -> dict[str, str]:
    """Implementation versions recorded in the protocol signature."""
    return {
        "pycocoevalcap": metadata.version("pycocoevalcap"),
        "meteor": "1.5",
        "ptb": "corenlp-3.4.1",
    }


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaError(
            "java not found on PATH: METEOR and the PTB tokenizer (pycocoevalcap) need a Java "
            "runtime (8 or newer), e.g. `apt-get install default-jre-headless`"
        )
    return java


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenize like pycocoevalcap's ``PTBTokenizer`` (lowercased, punctuation tokens dropped)."""
    if not texts:
        return []
    lines = [t.translate(_LINE_BREAKS) for t in texts]
    with tempfile.TemporaryDirectory(prefix="s2d-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_bytes("\n".join(lines).encode("utf-8"))
        cmd = [
            _java(),
            *JAVA_LOCALE_FLAGS,
            "-cp",
            str(PTB_JAR),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            str(src),
        ]
        proc = subprocess.run(cmd, cwd=tmp, env=_java_env(), capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace")[-2000:]
        raise JavaError(f"PTB tokenizer failed (exit {proc.returncode}): {tail}")
    out = proc.stdout.decode("utf-8").split("\n")
    if len(out) < len(lines) or any(line.strip() for line in out[len(lines) :]):
        raise JavaError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} texts")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
        for line in out[: len(lines)]
    ]


class _Meteor(Meteor):
    """pycocoevalcap's METEOR wrapper with a pinned locale, an absolute jar path and a real close.

    ``compute_score`` and the METEOR protocol are inherited unchanged.
    """

    def __init__(self) -> None:  # do not call Meteor.__init__: it launches java its own way
        self._closed = True  # until the process exists (``__del__`` may run after a failure)
        self.meteor_cmd = [
            _java(),
            "-Xmx2G",
            *JAVA_LOCALE_FLAGS,
            "-jar",
            str(METEOR_JAR),
            "-",
            "-",
            "-stdio",
            "-l",
            "en",
            "-norm",
        ]
        # lives as long as the METEOR process; closed in close()
        self._stderr = tempfile.TemporaryFile(prefix="s2d-meteor-")  # noqa: SIM115
        try:
            self.meteor_p = subprocess.Popen(
                self.meteor_cmd,
                cwd=METEOR_JAR.parent,  # METEOR reads its paraphrase data beside the jar
                env=_java_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        except OSError as exc:
            self._stderr.close()
            raise JavaError(
                f"could not start METEOR ({' '.join(self.meteor_cmd)}): {exc}"
            ) from None
        self.lock = threading.Lock()
        self._closed = False

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        try:
            return super().compute_score(gts, res)
        except (ValueError, BrokenPipeError, OSError) as exc:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace")[-2000:]
            raise JavaError(f"METEOR failed ({exc}); java said: {tail or '(nothing)'}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        proc = self.meteor_p
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._stderr.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@dataclass
class NLGResult:
    """Corpus values, per-sample values (aligned with ``ids``) and BLEU's per-sample statistics."""

    ids: list[str]
    corpus: dict[str, float]
    per_sample: dict[str, np.ndarray]
    bleu_stats: np.ndarray  # (n, 10): BLEU_STAT_COLUMNS
    tokenized_references: list[str] = field(repr=False, default_factory=list)
    tokenized_hypotheses: list[str] = field(repr=False, default_factory=list)


def bleu_from_stats(sums: np.ndarray, n: int = 4) -> np.ndarray:
    """Corpus BLEU-1..n from summed sufficient statistics, rows = resamples: ``(B, 10) -> (B, n)``.

    The same formula as pycocoevalcap's ``BleuScorer.compute_score`` (including its smoothing
    constants), so a resample's BLEU is exact without re-running the scorer.
    """
    small, tiny = 1e-9, 1e-15
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    testlen, reflen = sums[:, 0], sums[:, 1]
    guess, correct = sums[:, 2 : 2 + n], sums[:, 6 : 6 + n]
    log_prec = np.cumsum(np.log((correct + tiny) / (guess + small)), axis=1)
    bleus = np.exp(log_prec / np.arange(1, n + 1))
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * brevity[:, None]


def _bleu(gts: dict, res: dict) -> tuple[list[float], list[list[float]], np.ndarray]:
    """pycocoevalcap's ``Bleu(4).compute_score`` (option ``closest``), keeping the statistics."""
    scorer = BleuScorer(n=4)
    for key in gts:
        scorer += (res[key][0], gts[key])
    corpus, per_sample = scorer.compute_score(option="closest", verbose=0)
    stats = np.zeros((len(scorer.ctest), len(BLEU_STAT_COLUMNS)))
    for i, comps in enumerate(scorer.ctest):
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        stats[i] = [comps["testlen"], reflen, *comps["guess"], *comps["correct"]]
    return list(corpus), per_sample, stats


class NLGScorer:
    """Scores hypotheses against references; owns one METEOR process for its lifetime.

    Use as a context manager. ``tokenize=False`` (here or per :meth:`score` call) scores the
    given strings as they are, whitespace-normalised, which the ``r2gen-legacy`` profile needs:
    R2Gen never PTB-tokenized.
    """

    def __init__(self, *, tokenize: bool = True) -> None:
        self.tokenize = tokenize
        self._meteor: _Meteor | None = None

    def __enter__(self) -> NLGScorer:
        self._meteor = _Meteor()  # starts loading now, while the caller tokenizes and labels
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def score(
        self,
        references: Mapping[str, str],
        hypothesis_sets: Sequence[Mapping[str, str]],
        *,
        tokenize: bool | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> list[NLGResult]:
        """Score each hypothesis set (same ids as ``references``) against ``references``."""
        if self._meteor is None:
            raise RuntimeError("NLGScorer.score called outside its `with` block")
        step = on_step or (lambda _name: None)
        ids = list(references)
        for hyps in hypothesis_sets:
            if set(hyps) != set(ids):
                raise ValueError("every hypothesis set needs exactly the reference ids")
        texts = [references[i] for i in ids] + [h[i] for h in hypothesis_sets for i in ids]
        tokenize = self.tokenize if tokenize is None else tokenize
        texts = ptb_tokenize(texts) if tokenize else [" ".join(t.split()) for t in texts]
        step("tokenize")
        n = len(ids)
        refs = texts[:n]
        gts = {key: [ref] for key, ref in zip(ids, refs, strict=True)}
        results = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for k in range(len(hypothesis_sets)):
                hyps = texts[n * (k + 1) : n * (k + 2)]
                res = {key: [hyp] for key, hyp in zip(ids, hyps, strict=True)}
                meteor: Future[Any] = pool.submit(self._meteor.compute_score, gts, res)
                results.append(self._score_python(ids, gts, res, refs, hyps, meteor, step))
        return results

    @staticmethod
    def _score_python(
        ids: list[str],
        gts: dict,
        res: dict,
        refs: list[str],
        hyps: list[str],
        meteor: Future[Any],
        step: Callable[[str], None],
    ) -> NLGResult:
        corpus: dict[str, float] = {}
        per_sample: dict[str, np.ndarray] = {}
        bleu, bleu_samples, stats = _bleu(gts, res)
        for k in range(4):
            corpus[f"BLEU_{k + 1}"] = float(bleu[k])
            per_sample[f"BLEU_{k + 1}"] = np.asarray(bleu_samples[k], dtype=np.float64)
        step("BLEU")
        rouge, rouge_samples = Rouge().compute_score(gts, res)
        corpus["ROUGE_L"], per_sample["ROUGE_L"] = float(rouge), np.asarray(rouge_samples, float)
        step("ROUGE_L")
        cider, cider_samples = Cider().compute_score(gts, res)
        corpus["CIDEr"], per_sample["CIDEr"] = float(cider), np.asarray(cider_samples, float)
        step("CIDEr")
        meteor_value, meteor_samples = meteor.result()
        corpus["METEOR"], per_sample["METEOR"] = (
            float(meteor_value),
            np.asarray(meteor_samples, float),
        )
        step("METEOR")
        ordered = {name: corpus[name] for name in NLG_METRICS}
        return NLGResult(ids, ordered, per_sample, stats, refs, hyps)


def score_nlg(
    references: Mapping[str, str], hypotheses: Mapping[str, str], *, tokenize: bool = True
) -> NLGResult:
    """One-shot convenience: all NLG metrics of one system (starts and stops METEOR)."""
    with NLGScorer(tokenize=tokenize) as scorer:
        return scorer.score(references, [hypotheses])[0]
