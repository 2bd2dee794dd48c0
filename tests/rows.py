"""Small datasets the tests write, shared by test modules (which never import each other):
SFT chats, DPO pairs, and `write_jsonl` to put rows in a file."""

import json

SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"Arr, {a} plus {b} be {a + b}, matey!"}]}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]
]
DPO_ROWS = [
    {"prompt": f"Name a colour number {i}.", "chosen": "Blue.",
     "rejected": "Well, there are many colours one might name, and it depends on many things."}
    for i in range(4)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
