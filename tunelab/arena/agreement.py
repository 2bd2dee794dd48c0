"""Who labelled what, and how far annotators agree when they labelled the same pair.

    report = annotators(store.labels("workshop"))
    report["annotators"]   # [{"annotator", "labels", "a_or_b", "ties", "both_bad", "shared"}, ...]
    report["agreement"]    # {"pairs": shared pairs, "comparisons", "agreement", "kappa", "by_pair": [...]}

Two labels are of the same pair when they have the same prompt and the same two answers,
whichever side each answer was shown on (blind mode shuffles the sides for each
annotator). An outcome is named by the answer's text, not its side: "first" and
"second" are the two answers in a fixed (sorted) order, plus "tie" and "both_bad". When
an annotator labelled a pair more than once, their latest label counts.

Agreement is the share of annotator pairs, over every shared pair, that chose the same
outcome. Fleiss' kappa (Fleiss, 1971) corrects it for the agreement that chance alone
would give with each outcome's overall frequency; its per-item agreement is computed for
any number of raters per item, so pairs labelled by two or by five people both count.
1 is perfect agreement, 0 what chance gives, below 0 systematic disagreement.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from itertools import combinations

from .prefs import judged_vote

OUTCOMES = ("first", "second", "tie", "both_bad")


def pair_key(label: dict) -> str:
    first, second = sorted((label["answer_a"], label["answer_b"]))
    blob = json.dumps([label["prompt"], first, second], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def outcome(label: dict) -> str:
    """The vote, named by answer text rather than by side (a win between identical answers
    is a tie: there was nothing to prefer)."""
    vote = judged_vote(label)
    if vote in ("tie", "both_bad"):
        return vote
    preferred = label["answer_a"] if vote == "a" else label["answer_b"]
    return "first" if preferred == min(label["answer_a"], label["answer_b"]) else "second"


def annotators(labels: list[dict]) -> dict:
    latest: dict[tuple[str, str], dict] = {}
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in sorted(labels, key=lambda r: r.get("id", 0)):
        who = row["annotator"]
        counts[who]["labels"] += 1
        counts[who]["a_or_b" if row["vote"] in ("a", "b") else "ties" if row["vote"] == "tie" else "both_bad"] += 1
        latest[(pair_key(row), who)] = row
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for (key, who), row in latest.items():
        by_pair[key][who] = outcome(row)
    shared = {k: v for k, v in by_pair.items() if len(v) >= 2}
    shared_by = Counter(who for votes in shared.values() for who in votes)
    people = [{"annotator": who, "labels": c["labels"], "a_or_b": c["a_or_b"], "ties": c["ties"],
               "both_bad": c["both_bad"], "shared": shared_by.get(who, 0)} for who, c in counts.items()]
    people.sort(key=lambda r: (-r["labels"], r["annotator"]))
    return {"annotators": people, "agreement": agreement(shared), "between": between(shared)}


def agreement(shared: dict[str, dict[str, str]]) -> dict:
    """Raw agreement and Fleiss' kappa over pairs rated by two or more annotators."""
    agree = comparisons = 0
    per_item, totals = [], Counter()
    for votes in shared.values():
        outcomes = list(votes.values())
        n = len(outcomes)
        tally = Counter(outcomes)
        totals.update(tally)
        same = sum(c * (c - 1) for c in tally.values())          # ordered rater pairs that agree
        per_item.append(same / (n * (n - 1)))
        agree += same // 2
        comparisons += n * (n - 1) // 2
    if not per_item:
        return {"pairs": 0, "comparisons": 0, "agreement": None, "kappa": None}
    p_bar = sum(per_item) / len(per_item)
    total = sum(totals.values())
    p_chance = sum((c / total) ** 2 for c in totals.values())
    kappa = (p_bar - p_chance) / (1 - p_chance) if p_chance < 1 else None   # everyone always chose one outcome
    return {"pairs": len(shared), "comparisons": comparisons, "agreement": agree / comparisons, "kappa": kappa}


def between(shared: dict[str, dict[str, str]]) -> list[dict]:
    """For each two annotators with pairs in common: how many, and how often they agreed."""
    rec: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for votes in shared.values():
        for x, y in combinations(sorted(votes), 2):
            rec[(x, y)][0] += 1
            rec[(x, y)][1] += votes[x] == votes[y]
    return [{"annotator": x, "other": y, "shared": n, "agreed": k, "agreement": k / n}
            for (x, y), (n, k) in sorted(rec.items())]
