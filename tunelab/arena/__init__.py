"""The arena: base and tuned models answering side by side, the votes on their answers, and who wins.

    chat.py          Arena: several panes (the base, finished runs) answering one prompt, streamed, batched
    chatdevice.py    the arena's device, dtype and generation threads
    decoding.py      what chat hands to `generate`: per-row sampling, streaming, cancel, per-row adapters
    endpoints.py     models served elsewhere (any OpenAI-compatible endpoint) as contestants: the store, the stream
    prefs.py         the label store: LabelStore (labels.db: A/B votes and thumbs), import, export to
                     DPO pairs or KTO's labelled answers
    labelruns.py     runs trained on a label set: the set frozen into a data file, a DPO/ORPO/KTO config
    leaderboard.py   who wins: records and Bradley-Terry ratings from the votes
    agreement.py     who labelled what, and how far annotators agree (Fleiss' kappa)

Import the module you need: `from tunelab.arena.prefs import LabelStore`.
"""
