"""Scores in [0, 1] for one prediction: the synthetic tasks', LongBench's and ZeroSCROLLS'.

Synthetic tasks: ``contains_score`` (passkey, needle, multikey: the expected value appears in
the answer as a whole word) and ``recall_score`` (vartrack: the fraction of expected variable
names that appear).

LongBench (Bai et al. 2024) and ZeroSCROLLS (Shaham et al. 2023): the official definitions
(``THUDM/LongBench`` ``metrics.py``/``eval.py``; ZeroSCROLLS' metric script) ported as they are,
English tasks only. ROUGE comes from ``rouge-score`` (LongBench's own code uses the ``rouge``
package, whose tokenisation differs slightly, so its ROUGE-L can differ in the second decimal),
the code similarity from ``rapidfuzz`` (the maintained successor of the ``fuzzywuzzy`` ratio
LongBench calls). Both are imported lazily: ``pip install 'streaming_llm[tasks]'``.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

_EXTRA = "pip install 'streaming_llm[tasks]'"
_PUNCTUATION = frozenset(string.punctuation)


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this metric needs {package}: {_EXTRA}") from None


# -- synthetic tasks -------------------------------------------------------------------------------

def _found(answer: str, prediction: str) -> bool:
    # Whole-word, case-insensitive: "12345" is not found in "123456", "ABCDE" not in "ABCDEF".
    pattern = r"(?<![0-9A-Za-z])" + re.escape(answer.strip().lower()) + r"(?![0-9A-Za-z])"
    return re.search(pattern, " ".join(prediction.lower().split())) is not None


def contains_score(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any expected answer appears in ``prediction`` as a whole word, else 0.0."""
    return float(any(_found(a, prediction) for a in answers))


def recall_score(prediction: str, answers: Sequence[str]) -> float:
    """Fraction of the expected answers that appear in ``prediction`` (RULER's ``string_match_all``)."""
    return sum(_found(a, prediction) for a in answers) / len(answers) if answers else 0.0


SYNTHETIC_SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "passkey": contains_score,
    "needle": contains_score,
    "multikey": contains_score,
    "vartrack": recall_score,
}


# -- LongBench -------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], truth_tokens: Sequence[str]) -> float:
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, truth: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(truth).split())


def rouge_l_score(prediction: str, truth: str, **_) -> float:
    """ROUGE-L F1 (``rouge-score``, no stemming, as LongBench's default ``Rouge()``)."""
    scorer = _require("rouge_score.rouge_scorer", "rouge-score").RougeScorer(["rougeL"], use_stemmer=False)
    return scorer.score(truth, prediction)["rougeL"].fmeasure


def classification_score(prediction: str, truth: str, all_classes: Sequence[str] = (), **_) -> float:
    """LongBench's: the classes named in the prediction, minus those that are only substrings of
    the true class; 1/len if the true class is among them."""
    matches = [c for c in all_classes if c in prediction]
    # LongBench removes from the list while iterating over it, so a removal skips the next
    # element; the port keeps that behaviour so scores agree with the official ones.
    for term in matches:
        if term in truth and term != truth:
            matches.remove(term)
    return 1.0 / len(matches) if truth in matches else 0.0


def _fraction_equal(numbers: Sequence[str], target: str) -> float:
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, truth: str, **_) -> float:
    """Share of the numbers in the prediction equal to the paragraph number in ``Paragraph N``."""
    target = re.findall(r"Paragraph (\d+)", truth)[0]
    return _fraction_equal(re.findall(r"\d+", prediction), target)


def count_score(prediction: str, truth: str, **_) -> float:
    return _fraction_equal(re.findall(r"\d+", prediction), str(truth))


def code_sim_score(prediction: str, truth: str, **_) -> float:
    """Similarity of the first line that is not a comment or a fence, as LongBench's."""
    line = next((l for l in prediction.lstrip("\n").split("\n") if "`" not in l and "#" not in l and "//" not in l), "")
    fuzz = _require("rapidfuzz.fuzz", "rapidfuzz")
    # fuzzywuzzy's ratio is the rounded integer of this Indel similarity.
    return round(fuzz.ratio(line, truth)) / 100


LONGBENCH_METRICS: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "gov_report": rouge_l_score,
    "qmsum": rouge_l_score,
    "multi_news": rouge_l_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_l_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}

#: LongBench scores only the first line of the prediction on these (few-shot) tasks.
_FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum")


def longbench_score(task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] = ()) -> float:
    """One LongBench prediction's score in [0, 1]: the best over the reference answers."""
    if task not in LONGBENCH_METRICS:
        raise ValueError(f"LongBench task must be one of {', '.join(LONGBENCH_METRICS)}; got {task!r}")
    if task in _FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = LONGBENCH_METRICS[task]
    return max((metric(prediction, truth, all_classes=all_classes) for truth in answers), default=0.0)


# -- ZeroSCROLLS -----------------------------------------------------------------------------------

def _zs_normalize(text: str) -> str:
    # ZeroSCROLLS applies unidecode after the SQuAD normalisation; NFKD + ASCII folds accents the
    # same way for Latin text without another dependency.
    folded = unicodedata.normalize("NFKD", normalize_answer(text)).encode("ascii", "ignore").decode()
    return " ".join(folded.split())


def zs_f1_score(prediction: str, truth: str) -> float:
    return token_f1(_zs_normalize(prediction).split(), _zs_normalize(truth).split())


def zs_rouge_score(prediction: str, truth: str) -> float:
    """Geometric mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 (stemmed), ZeroSCROLLS' summary score."""
    scorer = _require("rouge_score.rouge_scorer", "rouge-score").RougeScorer(
        ["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score(truth, prediction)
    values = [scores[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")]
    return math.prod(values) ** (1 / 3)


def _letter(text: str) -> str | None:
    match = re.search(r"\b[A-D]\b", text)
    return match.group() if match else None


def zs_accuracy_score(prediction: str, truth: str) -> float:
    """QuALITY: the first standalone letter A-D of the prediction equals the reference's."""
    return float(_letter(prediction) is not None and _letter(prediction) == _letter(truth))


def _percentage(text: str) -> float | None:
    match = re.search(r"\d+\.?\d*%", text)
    return float(match.group().rstrip("%")) if match else None


def zs_exp_similarity_score(prediction: str, truth: str) -> float:
    """SpaceDigest: ``0.5 ** (|p - t| / 10)`` on the first percentages of each."""
    predicted, expected = _percentage(prediction), _percentage(truth)
    if predicted is None:
        return 0.0
    return 0.5 ** (abs((expected or 0.0) - predicted) / 10)


def _ids(text: str) -> list[int]:
    cleaned = re.sub(r"[^0-9\s,]", "", text).replace(",", " ").strip(string.punctuation).split()
    return [int(x) for x in cleaned]


def concordance_index(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """Harrell's C without censoring: concordant pairs (ties in the prediction count 1/2) over
    pairs with different true values."""
    concordant, pairs = 0.0, 0
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            if truth[i] == truth[j]:
                continue
            pairs += 1
            product = (truth[i] - truth[j]) * (predicted[i] - predicted[j])
            concordant += 1.0 if product > 0 else 0.5 if product == 0 else 0.0
    if pairs == 0:
        raise ValueError("concordance index needs at least two different true values")
    return concordant / pairs


def zs_concordance_score(prediction: str, truth: str) -> float:
    """BookSumSort: the concordance index of the predicted order of summary ids with the true
    one; 0 unless the prediction is a permutation of the reference ids."""
    predicted, expected = _ids(prediction), _ids(truth)
    if sorted(predicted) != sorted(expected) or sorted(expected) != list(range(1, len(expected) + 1)):
        return 0.0
    if len(expected) < 2:
        return 1.0  # one summary has one order

    def position_of_id(order: list[int]) -> list[int]:
        positions = [-1] * len(order)
        for place, summary_id in enumerate(order, 1):
            positions[summary_id - 1] = place
        return positions

    return concordance_index(position_of_id(expected), position_of_id(predicted))


ZEROSCROLLS_METRICS: dict[str, Callable[[str, str], float]] = {
    "gov_report": zs_rouge_score,
    "summ_screen_fd": zs_rouge_score,
    "qmsum": zs_rouge_score,
    "squality": zs_rouge_score,
    "qasper": zs_f1_score,
    "narrative_qa": zs_f1_score,
    "musique": zs_f1_score,
    "quality": zs_accuracy_score,
    "space_digest": zs_exp_similarity_score,
    "book_sum_sort": zs_concordance_score,
}


def zeroscrolls_score(task: str, prediction: str, answers: Sequence[str]) -> float:
    """One ZeroSCROLLS prediction's score in [0, 1]: the best over the reference answers."""
    if task not in ZEROSCROLLS_METRICS:
        raise ValueError(f"ZeroSCROLLS task must be one of {', '.join(ZEROSCROLLS_METRICS)}; got {task!r}")
    metric = ZEROSCROLLS_METRICS[task]
    return max((metric(prediction, truth) for truth in answers), default=0.0)
