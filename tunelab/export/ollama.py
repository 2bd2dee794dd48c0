"""An Ollama Modelfile for an exported GGUF: FROM the file, the chat template in Ollama's
template syntax, the system prompt and the sampling settings.

Ollama's templates are Go templates, not Jinja, so a model's Jinja chat template cannot be
carried over as it is. What is carried over is its format: `chat_format` renders the Jinja
template on probe conversations and recognises ChatML (`<|im_start|>role\\n…<|im_end|>\\n`),
the format of SmolLM2, Qwen and many instruct models, including a default system prompt
the template inserts when a conversation has none (SmolLM2's does). `render` is what the
Go template written here produces for a conversation, so a test can hold it against the
Jinja template. A template in another format gets no TEMPLATE line: Ollama then matches the
GGUF file's own chat template against the templates it knows.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<|im_start|>", "<|im_end|>"
GO_CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")
_PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]


def render(messages: list[dict], system: str | None = None) -> str:
    """What GO_CHATML gives for `messages` with Ollama's SYSTEM `system`: Ollama puts the
    SYSTEM text first in .Messages when the conversation has no system message."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + list(messages)
    return "".join(f"{OPEN}{m['role']}\n{m['content']}{CLOSE}\n" for m in messages) + f"{OPEN}assistant\n"


def chat_format(tokenizer) -> dict | None:
    """{"format": "chatml", "default_system": text or None} when the tokenizer's chat
    template is ChatML on the probe conversations; None otherwise (or with no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        full = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        bare = tokenizer.apply_chat_template(_PROBE[1:2], tokenize=False, add_generation_prompt=True)
    except Exception:   # a template that needs tools, dates or other arguments: not one we know
        return None
    if full != render(_PROBE):
        return None
    if bare == render(_PROBE[1:2]):
        return {"format": "chatml", "default_system": None}
    found = re.fullmatch(re.escape(f"{OPEN}system\n") + "(.*?)" + re.escape(f"{CLOSE}\n") + "(.*)", bare, re.S)
    if found and found.group(2) == render(_PROBE[1:2]):
        return {"format": "chatml", "default_system": found.group(1)}
    return None




def modelfile(gguf_file: str, tokenizer, settings: dict, origin: str, adapter_file: str | None = None) -> str:
    """The Modelfile text. `settings`: temperature, top_p, max_new_tokens and system (None:
    the chat template's default); `origin` says in a comment where they came from."""
    fmt = chat_format(tokenizer)
    lines = ["# Ollama Modelfile written by TuneLab.", "#   ollama create NAME -f Modelfile && ollama run NAME",
             f"# Sampling and system prompt: {origin}.", f"FROM ./{gguf_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    system = settings.get("system") or (fmt or {}).get("default_system")
    if fmt:
        lines.append(f'TEMPLATE """{GO_CHATML}"""')
    else:
        lines.append("# No TEMPLATE: the chat template is not ChatML; Ollama matches the GGUF file's own.")
    if system and '"""' in system:   # a Modelfile has no way to quote it
        lines.append('# SYSTEM left out: the system prompt contains """, which a Modelfile cannot quote.')
    elif system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER temperature {float(settings['temperature']):g}",
              f"PARAMETER top_p {float(settings['top_p']):g}",
              f"PARAMETER num_predict {int(settings['max_new_tokens'])}"]
    stops = [OPEN, CLOSE] if fmt else []
    eos = getattr(tokenizer, "eos_token", None)
    stops += [eos] if eos and eos not in stops else []
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
