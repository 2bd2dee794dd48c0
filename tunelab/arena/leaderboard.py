"""Who wins: per-model records and Bradley-Terry ratings from the arena's votes.

    board = standings(store.labels("concise"))
    board["models"]        # [{"model", "votes", "wins", "losses", "ties", "both_bad", "win_rate", "rating"}, ...]
    board["head_to_head"]  # [{"model", "opponent", "wins", "losses", "ties"}, ...]

A model is whatever produced a side, named by its source's `name` (e.g. "base",
"20261128-lora-pirate", or "base @ T=1.2" when one model was sampled at two
temperatures). Bradley-Terry (Bradley & Terry, 1952) gives each model a strength p
with P(i beats j) = p_i / (p_i + p_j); it is fitted by Hunter's (2004) MM updates,
counting a tie as half a win for each side and adding one virtual tie per pair played
so a model that never lost still gets a finite rating. Ratings are shown on the Elo
scale, 1000 + 400·log10(p) with the geometric mean of p at 1000: 400 points apart means
10:1 odds. "Both bad" says nothing about which is better; it is counted, not rated.
"""

from __future__ import annotations

import math
from collections import defaultdict

from .prefs import judged_vote


def side_name(source: dict) -> str:
    return str(source.get("name") or source.get("model") or "unknown")


def standings(labels: list[dict], iterations: int = 500) -> dict:
    records: dict[str, dict] = defaultdict(lambda: {"votes": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
    h2h: dict[tuple[str, str], dict] = defaultdict(lambda: {"wins": 0, "losses": 0, "ties": 0})
    for row in labels:
        a, b = side_name(row["source_a"]), side_name(row["source_b"])
        if a == b:
            continue  # a model against itself (e.g. an imported file) ranks nothing
        vote = judged_vote(row)   # a win between identical answers counts as a tie
        for m, outcome in ((a, {"a": "wins", "b": "losses"}.get(vote)), (b, {"a": "losses", "b": "wins"}.get(vote))):
            rec = records[m]
            rec["votes"] += 1
            rec[outcome or ("ties" if vote == "tie" else "both_bad")] += 1
        if vote == "both_bad":
            continue
        for m, o, won in ((a, b, vote == "a"), (b, a, vote == "b")):
            h2h[(m, o)]["ties" if vote == "tie" else "wins" if won else "losses"] += 1
    ratings = bradley_terry(h2h, list(records), iterations)
    models = []
    for m, rec in records.items():
        decided = rec["wins"] + rec["losses"] + rec["ties"]
        models.append({"model": m, **rec, "win_rate": (rec["wins"] + 0.5 * rec["ties"]) / decided if decided else None,
                       "rating": ratings.get(m)})
    models.sort(key=lambda r: (r["rating"] is None, -(r["rating"] or 0), -r["votes"]))
    pairs = [{"model": m, "opponent": o, **rec} for (m, o), rec in sorted(h2h.items())]
    return {"models": models, "head_to_head": pairs}


def bradley_terry(h2h: dict[tuple[str, str], dict], names: list[str], iterations: int = 500) -> dict[str, float]:
    """Elo-scale ratings from head-to-head records {(i, j): {"wins", "losses", "ties"}}."""
    score: dict[str, float] = defaultdict(float)      # wins + half the ties, plus the virtual ties
    games: dict[tuple[str, str], float] = defaultdict(float)
    for (i, j), rec in h2h.items():
        score[i] += rec["wins"] + 0.5 * rec["ties"]
        games[(i, j)] += rec["wins"] + rec["losses"] + rec["ties"]
    for (i, j) in list(games):
        score[i] += 0.5   # one virtual tie for each ordered pair that met (so both sides get +0.5)
        games[(i, j)] += 1.0
    rated = sorted({i for i, _ in games})
    if not rated:
        return {}
    p = {m: 1.0 for m in rated}
    for _ in range(iterations):
        new = {}
        for i in rated:
            denom = sum(n / (p[i] + p[j]) for (a, j), n in games.items() if a == i)
            new[i] = score[i] / denom if denom else p[i]
        mean = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        new = {m: v / mean for m, v in new.items()}
        done = max(abs(new[m] - p[m]) for m in rated) < 1e-10
        p = new
        if done:
            break
    return {m: 1000.0 + 400.0 * math.log10(v) for m, v in p.items()}


def win_probability(rating_a: float, rating_b: float) -> float:
    """P(A beats B) under the fitted model, from two Elo-scale ratings."""
    return 1.0 / (1.0 + 10 ** ((rating_b - rating_a) / 400.0))
